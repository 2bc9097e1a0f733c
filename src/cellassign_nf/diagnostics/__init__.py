"""Marker diagnostics: can this panel separate these cell types in these data? (docs/markers.md)

* :func:`check_markers`, before training (counts and panel): markers missing from the data,
  detected in almost no cells or in almost all, types with too few usable markers, pairs of
  types whose usable markers overlap heavily;
* :func:`diagnose`, after annotation (plus the assigned labels): also the type x group
  marker-specificity table, flags for a type merged into another, a type whose markers are no
  higher in its own cells, a large unassigned share, and candidate markers from the data.

Every finding is a :class:`Flag` (severity ``warning``, or ``info`` for candidates and absent
types). Nothing here stops a run: flags are warnings.
"""
from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..keys import CELLTYPE_KEY, UNASSIGNED
from ..markers import MarkerMatch
from ..sampling import stratified_cells
from ..settings import DiagnosticThresholds
from .base import (
    FLAG_COLUMNS, INFO, WARNING, Diagnostics, Flag, display_names, group_expression, read_diagnostics,
    read_specificity, type_markers, write_diagnostics,
)
from .candidates import LabelMoments, rank_candidates, split_in_two
from .postfit import GroupStats, assignment_flags, specificity_table
from .preflight import as_match, check_markers, checked_markers

log = logging.getLogger(__name__)

MAX_LOGGED = 10  # warnings logged one by one; the rest are in the TSV and the report
MIN_SPLIT_SHARE = 0.1  # a merged group is split for candidates only when each half has this share of its cells

__all__ = [
    "FLAG_COLUMNS", "INFO", "WARNING", "Diagnostics", "DiagnosticThresholds", "Flag", "candidate_cells", "check_markers",
    "diagnose",
    "log_findings", "read_diagnostics", "read_specificity", "write_diagnostics",
]


def diagnose(adata: ad.AnnData, panel: pd.DataFrame | MarkerMatch, thresholds: DiagnosticThresholds | None = None,
             markers_path: str | Path | None = None, data_path: str | Path | None = None,
             candidates: bool = True, candidate_data: ad.AnnData | None = None) -> Diagnostics:
    """The pre-flight checks and, when ``adata.obs[CELLTYPE_KEY]`` holds the assigned labels,
    the post-fit checks, the specificity table and candidate markers. ``panel``: a marker matrix,
    or the :class:`MarkerMatch` a step already made of it.

    The checks need only the marker genes of ``adata``. The candidates are ranked over all genes
    of the cells :func:`candidate_cells` picks, ``candidate_data`` (default: those cells of
    ``adata``, which then must hold all genes)."""
    t = thresholds or DiagnosticThresholds()
    match = as_match(adata, panel, markers_path, data_path)
    result, values = checked_markers(adata, match, t)
    rho = match.rho
    if CELLTYPE_KEY not in adata.obs:
        return result
    stats = group_stats(adata, rho, values)
    post = assignment_flags(rho, stats, t)
    if candidates:
        if candidate_data is None:
            candidate_data = adata[candidate_cells(adata.obs[CELLTYPE_KEY], t)].copy()
        if candidate_data.n_obs < adata.n_obs:
            log.info("candidate markers from %d of the %d cells (--candidate-max-cells), every type kept",
                     candidate_data.n_obs, adata.n_obs)
        post += add_candidates(candidate_data, rho, stats, post, t)
    result.flags += post
    result.specificity = specificity_table(rho, stats)
    return result


def candidate_cells(labels: pd.Series, t: DiagnosticThresholds) -> np.ndarray:
    """Positions of the cells the candidate markers are ranked over: all, or at most
    ``candidate_max_cells`` drawn within each assigned type (:func:`~cellassign_nf.sampling.stratified_cells`)."""
    return stratified_cells(labels, t.candidate_max_cells)


def group_stats(adata: ad.AnnData, rho: pd.DataFrame, values: sp.csr_matrix) -> GroupStats:
    """Marker detection and mean expression per assigned group (types in panel order first), from
    the markers' log-normalised expression ``values`` (cells x ``rho``'s genes)."""
    labels = adata.obs[CELLTYPE_KEY].astype(str)
    order = [str(c) for c in rho.columns] + sorted(set(labels) - set(map(str, rho.columns)) - {UNASSIGNED})
    labels = pd.Series(pd.Categorical(labels, categories=order + [UNASSIGNED]), index=adata.obs_names)
    genes = [str(g) for g in rho.index]
    detection, mean, sizes = group_expression(values, labels, genes)
    return GroupStats(detection, mean, sizes, display_names(adata))


def add_candidates(adata: ad.AnnData, rho: pd.DataFrame, stats: GroupStats, flags: list[Flag],
                   t: DiagnosticThresholds) -> list[Flag]:
    """Fill the candidates of the flags that need them; return one ``candidates`` row per assigned
    type. ``adata``: the cells to rank genes over, with all genes and their labels."""
    from ..size_factors import normalise

    norm = normalise(adata)
    labels = adata.obs[CELLTYPE_KEY].astype(str)
    exclude = {str(g) for g in rho.index}
    names = display_names(adata)  # of all genes: candidates are not markers
    show = lambda genes: [names.get(g, g) for g in genes]  # noqa: E731
    groups = [g for g in stats.sizes.index if stats.size(g) >= stats.min_cells(t)]
    tested = len(groups) > 1 or any(flag.flag == "not_specific" for flag in flags)
    moments = LabelMoments.of(norm, labels) if tested else None  # one pass over the matrix for every test
    per_group = rank_candidates(norm, labels, groups, exclude, t.n_candidates, moments=moments) \
        if len(groups) > 1 else {}
    for flag in flags:
        if flag.flag == "unassigned":
            flag.candidates = show(per_group.get(UNASSIGNED, []))
            where = "the unassigned cells"
        elif flag.flag == "not_specific":
            found = rank_candidates(norm, labels, [flag.name], exclude, t.n_candidates, reference=flag.against,
                                    moments=moments)
            flag.candidates = show(found.get(flag.name, []))
            where = f"{flag.name}'s cells against {flag.against}'s"
        elif flag.flag == "merged":
            flag.candidates = show(split_candidates(norm, labels, flag, rho, exclude, t))
            where = f"the half of {flag.against}'s cells where {flag.name}'s markers are higher"
        else:
            continue
        if flag.candidates:
            flag.message += f" Candidate markers (genes that mark {where} in these data): {', '.join(flag.candidates)}."
    return [Flag("type", g, "candidates", f"Genes that best mark the {stats.size(g):,} cells assigned to {g} in these "
                 f"data, not in the panel: {', '.join(show(genes))}.", candidates=show(genes), severity=INFO)
            for g, genes in per_group.items() if genes and g != UNASSIGNED]


def split_candidates(norm: ad.AnnData, labels: pd.Series, flag: Flag, rho: pd.DataFrame, exclude: set[str],
                     t: DiagnosticThresholds) -> list[str]:
    """For a type merged into a group: split the group's cells in two by the type's own markers
    (those the group's type lacks) and rank the half where they are higher against the other."""
    markers = type_markers(rho)
    own = [g for g in markers[flag.name] if g not in markers.get(flag.against, [])] or markers[flag.name]
    sub = norm[(labels == flag.against).to_numpy()].copy()
    score = np.asarray(sub[:, own].X.mean(axis=1)).ravel()
    like = split_in_two(score)
    if min(like.sum(), (~like).sum()) < max(t.min_group_cells, MIN_SPLIT_SHARE * len(like)):
        return []  # no second population: a few cells without the markers (dropouts) are not one
    halves = pd.Series(np.where(like, "like", "rest"), index=sub.obs_names)
    return rank_candidates(sub, halves, ["like"], exclude, t.n_candidates).get("like", [])


def log_findings(diagnostics: Diagnostics, label: str | None = "marker diagnostics") -> None:
    """The warnings, one line each (at most ``MAX_LOGGED``; missing markers are already in the
    log of the panel's matching), then a summary line starting with ``label`` (None: none; the
    commands print their own, unwrapped)."""
    shown = [f for f in diagnostics.warnings if f.flag != "missing"]
    for flag in shown[:MAX_LOGGED]:
        log.warning("%s", flag.message)
    if len(shown) > MAX_LOGGED:
        log.warning("... and %d more warnings", len(shown) - MAX_LOGGED)
    if label is not None:
        (log.warning if diagnostics.warnings else log.info)("%s", diagnostics.summary(label))
