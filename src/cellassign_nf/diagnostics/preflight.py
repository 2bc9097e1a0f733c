"""Pre-flight: before training, from the counts and the panel alone. Which markers the data
lack, detect in almost no cells or in almost all, which types are left with too few usable
markers, and which pairs of types share most of their usable markers."""
from __future__ import annotations

import itertools
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..keys import OTHER
from ..markers import MarkerMatch, markers_by_type, match_panel, validate_markers
from ..settings import DiagnosticThresholds
from ..size_factors import log_normalised
from .base import Diagnostics, Flag, display_names, listing, pct, type_markers

OK, LOW, UBIQUITOUS = "ok", "low_detection", "ubiquitous"


def check_markers(adata: ad.AnnData, panel: pd.DataFrame | MarkerMatch, thresholds: DiagnosticThresholds | None = None,
                  markers_path: str | Path | None = None, data_path: str | Path | None = None,
                  quiet: bool = False) -> Diagnostics:
    """Check a marker panel against counts (cells x genes, raw counts in X) before training.
    ``panel``: a marker matrix, or the :class:`MarkerMatch` a step already made of it.
    ``quiet``: do not log how the panel matched the data (the caller does)."""
    match = as_match(adata, panel, markers_path, data_path, quiet)
    return checked_markers(adata, match, thresholds or DiagnosticThresholds())[0]


def as_match(adata: ad.AnnData, panel: pd.DataFrame | MarkerMatch, markers_path: str | Path | None = None,
             data_path: str | Path | None = None, quiet: bool = False) -> MarkerMatch:
    """``panel`` checked and matched to the data's genes, unless it already is."""
    if isinstance(panel, MarkerMatch):
        return panel
    return match_panel(validate_markers(panel, markers_path), adata, markers_path, data_path, quiet=quiet)


def checked_markers(adata: ad.AnnData, match: MarkerMatch, t: DiagnosticThresholds
                    ) -> tuple[Diagnostics, sp.csr_matrix]:
    """The pre-flight findings and the log-normalised expression of the matched marker genes
    (cells x genes), which the post-fit checks reuse."""
    values = log_normalised(adata, [str(g) for g in match.rho.index])
    table = marker_table(adata, match.rho, values, t)
    flags = missing_flags(match.missing, match.panel) + detection_flags(table, t)
    flags += few_marker_flags(match.rho, table, match.panel, match.missing, t) + overlap_flags(match.rho, table, t)
    return Diagnostics(flags, table), values


def marker_table(adata: ad.AnnData, rho: pd.DataFrame, values: sp.csr_matrix, t: DiagnosticThresholds) -> pd.DataFrame:
    """Per marker gene of the data (``values``: their log-normalised expression, cells x genes):
    the name shown, the types it marks, the share of cells that detect it, its mean expression,
    its :func:`spread` (markers detected in more than ``max_detection`` of cells only) and whether
    it is usable."""
    genes = [str(g) for g in rho.index]
    n = max(adata.n_obs, 1)
    detection = np.asarray((values > 0).sum(axis=0)).ravel() / n
    top = t.smallest_type(adata.n_obs)
    fold = np.full(len(genes), np.nan)
    for j in np.flatnonzero(detection > t.max_detection):  # only markers detected (almost) everywhere
        fold[j] = spread(np.expm1(values[:, j].toarray().ravel()), top)
    status = np.where(detection < t.min_detection, LOW, np.where(fold < t.min_fold, UBIQUITOUS, OK))
    names = display_names(adata)
    return pd.DataFrame({
        "gene": [names.get(g, g) for g in genes],
        "types": [", ".join(map(str, rho.columns[rho.loc[g].to_numpy() > 0])) for g in genes],
        "detection": detection,
        "mean_expression": np.asarray(values.mean(axis=0)).ravel(),
        "fold_spread": fold,
        "status": status,
    }, index=pd.Index(genes, name="marker"))


def spread(normalised: np.ndarray, top: int) -> float:
    """How much more some cells express a gene than others (normalised counts, one per cell): the
    larger of the mean of the ``top`` most expressing cells / the median, and the median / the
    5th percentile.

    ``top`` is the smallest group that counts as a type (:meth:`DiagnosticThresholds.smallest_type`):
    when a type of at least that many cells over-expresses the gene, the top cells are its cells,
    so a type down to ``min_type_fraction`` of the cells is seen (a 95th percentile sees only
    types above 5%).
    A mean over that group, not a single high quantile, keeps a few noisy cells of a small
    sample from making a gene at one level everywhere look specific. The lower ratio sees a
    gene that most cells over-express."""
    x = np.asarray(normalised, dtype=np.float64)
    top = min(max(int(top), 1), x.size)
    q05, q50 = np.quantile(x, [0.05, 0.5])
    high = np.partition(x, x.size - top)[x.size - top:].mean()
    return float(max(high / q50 if q50 > 0 else np.inf, q50 / q05 if q05 > 0 else np.inf))


def missing_flags(missing: list[str], panel: pd.DataFrame) -> list[Flag]:
    """One flag per panel gene the data lack."""
    flags = []
    for gene in missing:
        types = ", ".join(map(str, panel.columns[panel.loc[gene].to_numpy() > 0]))
        flags.append(Flag("marker", gene, "missing",
                          f"{gene} (marker of {types}) is not in the data and was left out. Check its name "
                          "(symbol or Ensembl ID, species, an older alias) or replace it.", [gene]))
    return flags


def detection_flags(table: pd.DataFrame, t: DiagnosticThresholds) -> list[Flag]:
    """Markers detected in almost no cells (uninformative) or in almost all (not specific)."""
    flags = []
    for row in table.itertuples():
        if row.status == LOW:
            flags.append(Flag("marker", row.gene, LOW,
                              f"{row.gene} (marker of {row.types}) is detected in {pct(row.detection)} of cells "
                              f"(fewer than {pct(t.min_detection)}): it says almost nothing about any cell. Replace it "
                              "with a marker of the same type that these data detect.", [row.gene]))
        elif row.status == UBIQUITOUS:
            flags.append(Flag("marker", row.gene, UBIQUITOUS,
                              f"{row.gene} (marker of {row.types}) is detected in {pct(row.detection)} of cells "
                              f"(more than {pct(t.max_detection)}) and varies little: its most expressing cells (the "
                              f"top {pct(t.min_type_fraction)} of cells, at least {t.min_group_cells}) average less "
                              f"than {t.min_fold:g}x its median, and its median is less than {t.min_fold:g}x its 5th "
                              f"percentile (spread {row.fold_spread:.1f}x): it does not single out a type here. Drop "
                              "it, or replace it with a marker that is off in the other types.",
                              [row.gene]))
    return flags


def usable_markers(rho: pd.DataFrame, table: pd.DataFrame) -> dict[str, list[str]]:
    """``{type: [usable marker genes]}``: present in the data and neither rare nor ubiquitous."""
    usable = markers_by_type(rho, table.index[table["status"] == OK])
    return {str(c): usable.get(str(c), []) for c in rho.columns if c != OTHER}


def few_marker_flags(rho: pd.DataFrame, table: pd.DataFrame, panel: pd.DataFrame, missing: list[str],
                     t: DiagnosticThresholds) -> list[Flag]:
    """Types with fewer than ``min_markers`` usable markers, naming the unusable and missing ones."""
    flags = []
    for cell_type, genes in usable_markers(rho, table).items():
        if len(genes) >= t.min_markers:
            continue
        names = [table.at[g, "gene"] for g in genes]
        unusable = [g for g in type_markers(rho).get(cell_type, []) if g not in genes]
        lacking = [g for g in missing if panel.at[g, cell_type] > 0]
        why = [f"{table.at[g, 'gene']} ({table.at[g, 'status'].replace('_', ' ')})" for g in unusable]
        why += [f"{g} (not in the data)" for g in lacking]
        flags.append(Flag("type", cell_type, "few_markers",
                          f"{cell_type} has {len(genes)} usable marker{'s' if len(genes) != 1 else ''}"
                          f"{' (' + listing(names) + ')' if names else ''}; at least {t.min_markers} are needed to "
                          f"recognise it reliably.{' Not usable: ' + listing(why) + '.' if why else ''} "
                          f"Add markers of {cell_type} that these data detect.",
                          [table.at[g, "gene"] for g in unusable] + lacking))
    return flags


def overlap_flags(rho: pd.DataFrame, table: pd.DataFrame, t: DiagnosticThresholds) -> list[Flag]:
    """Pairs of types whose usable markers overlap by at least ``max_overlap`` (Jaccard index), or
    where one type has no usable marker that the other lacks."""
    flags = []
    usable = {c: set(g) for c, g in usable_markers(rho, table).items() if g}
    for a, b in itertools.combinations(usable, 2):
        shared, union = usable[a] & usable[b], usable[a] | usable[b]
        own = {a: usable[a] - usable[b], b: usable[b] - usable[a]}
        if not shared or (len(shared) / len(union) < t.max_overlap and own[a] and own[b]):
            continue
        name = lambda genes: listing(sorted(table.at[g, "gene"] for g in genes))  # noqa: E731
        apart = " and ".join(f"{name(own[c])} ({c})" for c in (a, b) if own[c])
        lacking = [c for c in (a, b) if not own[c]]
        flags.append(Flag("pair", f"{a} vs {b}", "overlap",
                          f"{a} and {b} share {len(shared)} of their {len(union)} usable markers ({name(shared)}); "
                          f"{'only ' + apart + (' tell' if len(own[a]) + len(own[b]) > 1 else ' tells') if apart else 'no usable marker tells'}"
                          " them apart"
                          + (f", and {lacking[0]} has no marker of its own: it is told from the other only by the "
                             "absence of markers" if len(lacking) == 1 else "")
                          + ". Add markers that differ between the two types, or merge them into one.",
                          sorted(table.at[g, "gene"] for g in shared)))
    return flags
