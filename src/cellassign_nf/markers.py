"""Marker gene matrices (rho): reading, building from gene lists, matching to the data's genes."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)

OTHER = "other"


def marker_list_to_matrix(markers: Mapping[str, Sequence[str]], include_other: bool = False) -> pd.DataFrame:
    """Binary genes x cell types matrix from ``{cell type: [marker genes]}``.

    With ``include_other`` an extra column ``other`` with no markers is added: cells that express
    none of the known types' markers can go there.
    """
    genes: list[str] = []
    for type_genes in markers.values():
        for g in type_genes:
            if g not in genes:
                genes.append(str(g))
    rho = pd.DataFrame(0, index=pd.Index(genes, name="gene"), columns=[str(t) for t in markers], dtype=int)
    for cell_type, type_genes in markers.items():
        rho.loc[[str(g) for g in type_genes], str(cell_type)] = 1
    if include_other:
        rho[OTHER] = 0
    return rho


def read_markers(path: str | Path) -> pd.DataFrame:
    """Read markers from a CSV/TSV binary matrix (genes x types), YAML/JSON ``{type: [genes]}``,
    or a text file with one ``type:gene,gene,...`` line per type."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "marker file not found", "Check the --markers path.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml", ".json"):
            import yaml

            text = path.read_text()
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
            if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                raise InputError(path, "is not a mapping of cell type to a list of marker genes",
                                 "Write it as {type: [gene, gene, ...], ...}.")
            rho = marker_list_to_matrix(data)
        elif suffix == ".txt":
            lists: dict[str, list[str]] = {}
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                if ":" not in line:
                    raise InputError(path, f"line {n} is not 'type:gene,gene,...'", "Use one line per cell type.")
                cell_type, genes = line.split(":", 1)
                lists[cell_type.strip()] = [g.strip() for g in genes.split(",") if g.strip()]
            rho = marker_list_to_matrix(lists)
        elif suffix in (".csv", ".tsv"):
            rho = pd.read_csv(path, sep="," if suffix == ".csv" else "\t", index_col=0)
        else:
            raise InputError(path, f"unsupported marker file type '{suffix}'",
                             "Give a CSV/TSV binary matrix (genes x types), a YAML/JSON {type: [genes]} file, "
                             "or a .txt file with 'type:gene,gene' lines.")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot be read as a marker file ({type(exc).__name__}: {exc})",
                         "Check its format.") from exc
    return validate_markers(rho, path)


def validate_markers(rho: pd.DataFrame, path: str | Path | None = None) -> pd.DataFrame:
    """Check a marker matrix: binary, unique genes and types, every type (but ``other``) has a marker."""
    if rho.shape[0] == 0 or rho.shape[1] == 0:
        raise InputError(path, "marker matrix is empty", "Give at least one gene and one cell type.")
    rho = rho.copy()
    rho.index = rho.index.astype(str)
    rho.columns = rho.columns.astype(str)
    if rho.index.has_duplicates:
        dups = rho.index[rho.index.duplicated()].unique()[:5]
        raise InputError(path, f"marker matrix lists genes more than once ({', '.join(dups)})", "List each gene once.")
    if rho.columns.has_duplicates:
        raise InputError(path, "marker matrix has duplicate cell types", "Name each cell type once.")
    try:
        values = rho.apply(pd.to_numeric)
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"marker matrix has non-numeric entries ({exc})", "Use 1 for a marker, 0 otherwise.") from exc
    if not values.isin([0, 1]).all().all():
        raise InputError(path, "marker matrix has entries other than 0 and 1", "Use 1 for a marker, 0 otherwise.")
    empty = [c for c in values.columns if values[c].sum() == 0 and c != OTHER]
    if empty:
        raise InputError(path, f"cell type(s) with no marker gene: {', '.join(empty)}",
                         f"Add markers for them, or name a type without markers '{OTHER}'.")
    return values.astype(int)


def match_markers(rho: pd.DataFrame, var_names: Sequence[str], markers_path: str | Path | None = None,
                  data_path: str | Path | None = None) -> pd.DataFrame:
    """Restrict ``rho`` to genes present in the data, in the data's order of appearance in ``rho``.

    Missing genes are dropped with a warning; no overlap or a type left with no marker is an error.
    """
    present = pd.Index(var_names)
    found = [g for g in rho.index if g in present]
    missing = [g for g in rho.index if g not in present]
    if not found:
        raise InputError(markers_path, "none of the marker genes is in the data "
                         f"(markers: {', '.join(rho.index[:5])}; data genes: {', '.join(map(str, present[:5]))})",
                         "Use the same gene naming in both (symbols vs. Ensembl IDs, case), "
                         f"checking against {data_path or 'the counts file'}.")
    if missing:
        log.warning("%d of %d marker genes are not in the data and are ignored: %s%s", len(missing), len(rho),
                    ", ".join(missing[:20]), " ..." if len(missing) > 20 else "")
    sub = rho.loc[found]
    empty = [c for c in sub.columns if sub[c].sum() == 0 and rho[c].sum() > 0]
    if empty:
        raise InputError(markers_path, f"cell type(s) with no marker gene in the data: {', '.join(empty)}",
                         "Add markers for them that the data measure, or remove these types.")
    return sub
