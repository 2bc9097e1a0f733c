"""What the diagnostics share: the flag record, the result, the marker sets and the per-group
expression of the markers, and reading and writing the TSV files."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io import atomic_path, display_names, read_table, rows_per_block  # noqa: F401 - display_names: re-exported for the package
from ..keys import OTHER
from ..markers import markers_by_type

MOMENT_BLOCK_VALUES = 2**22  # stored values per block of group_moments (32 MB as float64)

WARNING, INFO = "warning", "info"
FLAG_COLUMNS = ("level", "name", "flag", "severity", "message", "markers", "candidates")


@dataclass
class Flag:
    """One finding: what it is about (``level``: marker, type or pair; ``name``), what was found
    (``flag``), a plain sentence, the markers to blame and candidate genes from the data."""

    level: str
    name: str
    flag: str
    message: str
    markers: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    severity: str = WARNING
    against: str = ""  # the other group of a merged or not-specific type (not written to the TSV)


@dataclass
class Diagnostics:
    """The findings, the per-marker numbers and (after the fit) the type x group specificity table."""

    flags: list[Flag]
    markers: pd.DataFrame  # one row per marker gene of the data: gene, types, detection, mean_expression, status
    specificity: pd.DataFrame | None = None  # types x assigned groups: mean expression of the type's markers

    @property
    def warnings(self) -> list[Flag]:
        return [f for f in self.flags if f.severity == WARNING]

    def table(self) -> pd.DataFrame:
        """The flags as the ``marker_diagnostics.tsv`` table, warnings first."""
        rows = [[f.level, f.name, f.flag, f.severity, f.message, ", ".join(f.markers), ", ".join(f.candidates)]
                for f in sorted(self.flags, key=lambda f: f.severity != WARNING)]
        return pd.DataFrame(rows, columns=list(FLAG_COLUMNS))

    def summary(self, label: str = "marker diagnostics") -> str:
        """One line for the terminal."""
        found = self.warnings
        if not found:
            return f"{label}: no warnings"
        named = "; ".join(f"{f.flag}: {f.name}" for f in found[:4]) + (" ..." if len(found) > 4 else "")
        return f"{label}: {len(found)} warning{'s' if len(found) != 1 else ''} ({named})"


def type_markers(rho: pd.DataFrame) -> dict[str, list[str]]:
    """``{type: [marker genes]}`` of the types the diagnostics judge (not ``other``)."""
    return {t: genes for t, genes in markers_by_type(rho).items() if t != OTHER}


def group_expression(values: sp.csr_matrix, labels: pd.Series, genes: Sequence[str]
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Per group of cells: detection rate and mean expression of each gene (genes x groups), and
    the group sizes. Groups are in order of appearance in a categorical's categories, if any."""
    groups = [g for g in (labels.cat.categories if hasattr(labels, "cat") else pd.unique(labels))
              if (labels == g).any()]
    sizes, moments = group_moments(values, pd.Categorical(labels, categories=groups).codes, len(groups))
    cols = [str(g) for g in groups]
    return (pd.DataFrame((moments[:, 2] / sizes[:, None]).T, index=list(genes), columns=cols),
            pd.DataFrame((moments[:, 0] / sizes[:, None]).T, index=list(genes), columns=cols),
            pd.Series(sizes.astype(int), index=cols))


def group_moments(X: sp.spmatrix | np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Each group's cell count (``n_groups``) and, per gene, its sum, sum of squares and number of
    stored (non-zero) values (``n_groups x 3 x genes``, float64), by sparse products over blocks
    of rows (the float64 copy of one block's values is all this allocates); ``codes``: each
    cell's group, 0 to ``n_groups - 1``."""
    X = sp.csr_matrix(X)
    n_cells, n_genes = X.shape
    moments = np.zeros((n_groups, 3, n_genes))
    step = rows_per_block(n_cells, X.nnz, MOMENT_BLOCK_VALUES)
    buffer = np.empty(min(X.nnz, MOMENT_BLOCK_VALUES * 2))
    for start in range(0, n_cells, step):
        stop = min(n_cells, start + step)
        lo, hi = int(X.indptr[start]), int(X.indptr[stop])
        if hi - lo > len(buffer):
            buffer = np.empty(hi - lo)
        block = sp.csr_matrix((buffer[:hi - lo], X.indices[lo:hi], X.indptr[start:stop + 1] - lo),
                              shape=(stop - start, n_genes))
        values = block.data  # filled in place, three times: the values, their squares, 1 where stored
        indicator = sp.csr_matrix((np.ones(stop - start), (codes[start:stop], np.arange(stop - start))),
                                  shape=(n_groups, stop - start))
        np.copyto(values, X.data[lo:hi])
        moments[:, 0] += (indicator @ block).toarray()
        np.square(values, out=values)
        moments[:, 1] += (indicator @ block).toarray()
        np.copyto(values, X.data[lo:hi] != 0)
        moments[:, 2] += (indicator @ block).toarray()
    return np.bincount(codes, minlength=n_groups).astype(np.float64), moments


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def listing(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- files --------------------------------------------------------------------------------------------
def write_diagnostics(diag: Diagnostics, path: str | Path, specificity_path: str | Path | None = None) -> None:
    """Write the flags TSV (and the specificity table, when there is one) atomically."""
    with atomic_path(path) as tmp:
        diag.table().to_csv(tmp, sep="\t", index=False)
    if specificity_path is not None:
        table = diag.specificity if diag.specificity is not None else pd.DataFrame()
        with atomic_path(specificity_path) as tmp:
            table.to_csv(tmp, sep="\t", index_label="cell_type", float_format="%.4g")


def read_diagnostics(path: str | Path) -> pd.DataFrame:
    """Read a ``marker_diagnostics.tsv`` and check its columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "marker diagnostics file not found", "Give the TSV written by 'cellassign-nf diagnose'.")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(path, f"cannot be read as a TSV table ({exc})",
                         "Give the TSV written by 'cellassign-nf diagnose'.") from exc
    missing = [c for c in FLAG_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"lacks column(s) {', '.join(missing)}", "Give the TSV written by 'cellassign-nf diagnose'.")
    return table


def read_specificity(path: str | Path) -> pd.DataFrame:
    """Read a ``marker_specificity.tsv`` (types x assigned groups)."""
    return read_table(path)
