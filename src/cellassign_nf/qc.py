"""Quality control: per-cell metrics (as scanpy defines them), data-driven outlier rules and
fixed thresholds.

By default a cell is removed when it is an outlier of its own sample: log total counts or log
detected genes more than ``nmads`` median absolute deviations (MADs) from the median, or %
mitochondrial counts more than ``nmads_mito`` MADs above it (the approach of the single-cell
best-practices book, https://www.sc-best-practices.org, chapter "Quality control"). Fixed
thresholds (``min_counts``, ``min_genes``, ``max_mito_pct``) apply as well. The summary names
every rule, its bounds in counts / genes / % and how many cells it removed.

A MAD rule measures each cell against its own sample, so it cannot see a sample whose majority is
damaged (it takes the damaged cells for normal). ``qc_warnings`` therefore judges the library as
a whole: it warns when QC removes more than ``warn_removed_pct`` % of the cells, or when the
median % mitochondrial counts of the cells before QC is above ``warn_median_mito_pct``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputError
from .keys import QC_WARNINGS_KEY
from .settings import QCThresholds

log = logging.getLogger(__name__)


def add_qc_metrics(adata: ad.AnnData, mito_prefix: str = "MT-",
                   blocks: Iterable[tuple[int, Any]] | None = None) -> None:
    """Per-cell QC metrics in ``obs`` (in place), named and defined as scanpy's
    ``calculate_qc_metrics(adata, qc_vars=["mito"])`` defines them: ``total_counts``,
    ``n_genes_by_counts``, ``total_counts_mito``, ``pct_counts_mito``; and ``var["mito"]``.

    Computed here rather than by that function because it also computes per-gene metrics, which
    the pipeline never uses and which cost a second copy of the matrix (tests check the values
    against scanpy's). Explicit zeros are dropped from a sparse ``X`` first, as scanpy does.
    ``blocks`` ((first row, block) pairs over all cells in order, explicit zeros dropped, as
    ``io.Counts.blocks`` gives) stand in for ``X`` when the matrix is not in memory."""
    from .io import gene_symbols  # symbols, also when genes are indexed by ID (10x files)

    mito = np.asarray(gene_symbols(adata).str.upper().str.startswith(mito_prefix.upper()), dtype=bool)
    adata.var["mito"] = mito
    if blocks is None:
        if sp.issparse(adata.X):
            adata.X.eliminate_zeros()  # in place
        blocks = [(0, adata.X)]
    parts = [_cell_metrics(block, mito) for _, block in blocks]
    n_genes, total, total_mito = (np.concatenate(p) for p in zip(*parts))
    adata.obs["n_genes_by_counts"] = n_genes
    adata.obs["total_counts"] = total
    adata.obs["total_counts_mito"] = total_mito
    with np.errstate(divide="ignore", invalid="ignore"):  # a cell without counts has no %
        adata.obs["pct_counts_mito"] = total_mito / total * 100


def _cell_metrics(X, mito: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detected genes, total counts and mitochondrial counts of each cell (row) of ``X``."""
    n_genes = X.getnnz(axis=1) if sp.issparse(X) else np.count_nonzero(X, axis=1)
    return n_genes, np.ravel(X.sum(axis=1)), np.ravel(X[:, mito].sum(axis=1))


def genes_detected(blocks: Iterable[tuple[int, Any]], n_genes: int, rows: np.ndarray) -> np.ndarray:
    """The number of ``rows`` (a boolean mask of cells) in which each gene is detected (count > 0),
    over a matrix given block by block (as ``add_qc_metrics`` takes it)."""
    out = np.zeros(n_genes, dtype=np.int64)
    for start, block in blocks:
        keep = rows[start:start + block.shape[0]]
        if sp.issparse(block):
            out += np.bincount(sp.csr_matrix(block)[keep].indices, minlength=n_genes)
        else:
            out += np.count_nonzero(np.asarray(block)[keep], axis=0)
    return out


def mad_outliers(values: pd.Series, nmads: float, log1p: bool, upper_only: bool = False,
                 reference: np.ndarray | None = None) -> tuple[pd.Series, str]:
    """Cells more than ``nmads`` MADs from the median (on ``log1p`` scale when asked), and the rule in words.

    The median and the MAD (unscaled, as ``scipy.stats.median_abs_deviation``) come from the
    ``reference`` cells (default: all). With ``nmads`` 0 or a MAD of 0 no cell is flagged.
    """
    name = str(values.name)
    x = np.log1p(values.to_numpy(dtype=np.float64)) if log1p else values.to_numpy(dtype=np.float64)
    ref = x if reference is None else x[reference]
    none = pd.Series(False, index=values.index)
    if nmads <= 0:
        return none, "off"
    if ref.size == 0:
        return none, "not applied (no cell with counts)"
    median = float(np.median(ref))
    mad = float(np.median(np.abs(ref - median)))
    if mad == 0:
        return none, f"not applied ({name}: MAD is 0)"
    lo, hi = median - nmads * mad, median + nmads * mad
    flagged = (x > hi) if upper_only else (x < lo) | (x > hi)
    back = np.expm1 if log1p else (lambda v: v)
    scale = "log1p " if log1p else ""
    stats = f"{scale}median {median:.3g} {'+' if upper_only else '±'} {nmads:g} MADs of {mad:.3g}"
    if upper_only:
        rule = f"{name} > {back(hi):.4g} ({stats})"
    else:
        rule = f"{name} outside {max(back(lo), 0):.4g}..{back(hi):.4g} ({stats})"
    return pd.Series(flagged, index=values.index), rule


def qc_warnings(n_before: int, n_removed: int, median_mito_pct: float | None, n_measured: int,
                thresholds: QCThresholds) -> list[str]:
    """Sample-level warnings of QC, one sentence each (empty when the library looks fine).

    ``median_mito_pct`` is the median % mitochondrial counts of the ``n_measured`` cells with
    counts before QC (the library as a whole, not the cells QC kept); ``None`` when the data
    have no mitochondrial genes. A threshold of 100 turns its warning off."""
    t = thresholds
    out = []
    pct_removed = 100.0 * n_removed / n_before if n_before else 0.0
    if pct_removed > t.warn_removed_pct:
        out.append(f"QC removed {n_removed:,} of {n_before:,} cells ({pct_removed:.1f}%), more than "
                   f"--warn-removed-pct {t.warn_removed_pct:g}%: most of this library fails QC. Check the cells "
                   "removed per rule; the library may be damaged (set it aside), or a fixed threshold "
                   "(--min-counts, --min-genes, --max-mito-pct) may be too strict for these data.")
    if median_mito_pct is not None and median_mito_pct > t.warn_median_mito_pct:
        out.append(f"The median cell has {median_mito_pct:.1f}% mitochondrial counts (median of the "
                   f"{n_measured:,} cells before QC), above --warn-median-mito-pct {t.warn_median_mito_pct:g}%: "
                   "most of this library looks damaged. The MAD rules (--nmads, --nmads-mito) measure each cell "
                   "against this damaged majority, so they cannot remove it and may remove the healthy cells "
                   "instead; use fixed thresholds, e.g. --max-mito-pct 20 --nmads 0 --nmads-mito 0 (with "
                   "--min-counts / --min-genes as needed), or set the library aside.")
    return out


def filter_cells(adata: ad.AnnData, thresholds: QCThresholds | None = None,
                 source: str | None = None) -> tuple[ad.AnnData, dict]:
    """Compute metrics, keep passing cells (and genes), and return the filtered data and a summary.

    ``thresholds`` default to those of ``cellassign-nf qc``; metrics are added to ``adata`` in place.
    The summary's ``warnings`` (``qc_warnings``) say when the library as a whole looks damaged.
    """
    passed, genes, summary = select(adata, thresholds or QCThresholds(), source)
    filtered = adata[passed].copy() if genes is None else adata[passed, genes].copy()
    del filtered.obs["qc_failed"]  # empty for every kept cell; the metrics table keeps it
    return filtered, summary


def select(adata: ad.AnnData, thresholds: QCThresholds, source: str | None = None,
           blocks: Callable[[], Iterable[tuple[int, Any]]] | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """QC's decisions: the metrics (``add_qc_metrics``), the cells that pass (``judge_cells``) and
    the genes kept over them (``gene_filter``; ``None``: all), with the summary. ``blocks`` gives
    a fresh pass over the matrix block by block each call (``io.Counts.blocks``); default: ``X``."""
    if adata.n_obs == 0:
        raise InputError(source, "the sample has no cells", "Check that the right (non-empty) file was given.")
    add_qc_metrics(adata, thresholds.mito_prefix, None if blocks is None else blocks())
    passed, summary = judge_cells(adata, thresholds, source)
    genes = gene_filter(adata.var, [(0, adata.X)] if blocks is None else blocks(), passed, thresholds.min_cells)
    summary["genes_after"] = int(adata.n_vars if genes is None else genes.sum())
    log.info("QC: %d of %d cells pass, %d of %d genes kept", int(passed.sum()), adata.n_obs, summary["genes_after"],
             adata.n_vars)
    return passed, genes, summary


def gene_filter(var: pd.DataFrame, blocks: Iterable[tuple[int, Any]], rows: np.ndarray,
                min_cells: int) -> np.ndarray | None:
    """The genes detected in at least ``min_cells`` of the ``rows`` kept (a boolean mask), with their
    count in ``var["n_cells"]`` (in place, as scanpy's ``filter_genes``); ``None`` when
    ``min_cells`` is 0 (every gene kept, nothing counted)."""
    if min_cells <= 0:
        return None
    n_cells = genes_detected(blocks, len(var), rows)
    var["n_cells"] = n_cells
    return n_cells >= min_cells


def judge_cells(adata: ad.AnnData, thresholds: QCThresholds, source: str | None = None) -> tuple[np.ndarray, dict]:
    """Which cells pass QC (a boolean mask), from the metrics of ``add_qc_metrics`` in
    ``adata.obs``, and the summary: cells before and after, removed by each rule, the rules in
    words, the sample-level ``warnings``. Adds ``obs["qc_passed"]`` and ``obs["qc_failed"]`` (the
    rules a cell failed); raises InputError when no cell passes."""
    obs = adata.obs
    has_counts = obs["total_counts"].to_numpy() > 0
    n_mito = int(adata.var["mito"].sum())
    fails = failing_rules(obs, thresholds, has_counts, n_mito)
    failed = np.column_stack([f.to_numpy(dtype=bool) for f, _ in fails.values()])
    passed = ~failed.any(axis=1)
    adata.obs["qc_passed"] = passed
    names = np.array(list(fails))
    adata.obs["qc_failed"] = [",".join(names[row]) for row in failed]
    n_zero = int((~has_counts).sum())
    # the library as a whole: all cells with counts, before QC (a cell without counts has no %)
    median_mito = float(np.median(obs["pct_counts_mito"].to_numpy()[has_counts])) \
        if n_mito and has_counts.any() else None
    n_removed = int((~passed).sum())
    summary = {
        "cells_before": int(adata.n_obs), "genes_before": int(adata.n_vars),
        "cells_after": int(passed.sum()),
        "cells_removed": n_removed,
        "pct_removed": round(100.0 * n_removed / adata.n_obs, 2),
        "removed": {k: int(f.sum()) for k, (f, _) in fails.items()},
        "rules": {k: rule for k, (_, rule) in fails.items()},
        "zero_count_cells": n_zero,
        "thresholds": asdict(thresholds),
        "n_mito_genes": n_mito,
        "median_pct_counts_mito": None if median_mito is None else round(median_mito, 2),
        QC_WARNINGS_KEY: qc_warnings(int(adata.n_obs), n_removed, median_mito, int(has_counts.sum()), thresholds),
    }
    if n_zero:
        log.info("removing %d cells with zero total counts", n_zero)
    for key, (flags, rule) in fails.items():
        if flags.any():
            log.info("QC %s: %d cells (%s)", key, int(flags.sum()), rule)
    if not passed.any():  # the summary is not returned: say here what the library looks like
        for warning in summary[QC_WARNINGS_KEY]:
            log.warning("%s", warning)
        raise InputError(source, f"no cell passes QC ({adata.n_obs} cells; removed: "
                         + ", ".join(f"{k} {v}" for k, v in summary["removed"].items()) + ")",
                         "Relax --min-counts, --min-genes or --max-mito-pct, or raise --nmads / --nmads-mito.")
    return passed, summary


def failing_rules(obs: pd.DataFrame, t: QCThresholds, has_counts: np.ndarray,
                  n_mito: int) -> dict[str, tuple[pd.Series, str]]:
    """Per QC rule: which cells it removes and the rule in words. The MAD rules measure cells
    against those with counts (``has_counts``); the mitochondrial one needs mitochondrial genes."""
    out_counts, rule_counts = mad_outliers(obs["total_counts"], t.nmads, log1p=True, reference=has_counts)
    out_genes, rule_genes = mad_outliers(obs["n_genes_by_counts"], t.nmads, log1p=True, reference=has_counts)
    if n_mito:
        out_mito, rule_mito = mad_outliers(obs["pct_counts_mito"], t.nmads_mito, log1p=False, upper_only=True,
                                           reference=has_counts)
    else:
        out_mito, rule_mito = pd.Series(False, index=obs.index), f"not applied (no gene starts with '{t.mito_prefix}')"
    return {
        "low_counts": (obs["total_counts"] < t.min_counts, f"total_counts < {t.min_counts}"),
        "low_genes": (obs["n_genes_by_counts"] < t.min_genes, f"n_genes_by_counts < {t.min_genes}"),
        "high_mito": (obs["pct_counts_mito"] > t.max_mito_pct, f"pct_counts_mito > {t.max_mito_pct:g}"),
        "outlier_counts": (out_counts, rule_counts),
        "outlier_genes": (out_genes, rule_genes),
        "outlier_mito": (out_mito, rule_mito),
    }


def metrics_table(adata: ad.AnnData) -> pd.DataFrame:
    """The per-cell QC table: metrics, whether the cell passed, and the rules it failed."""
    cols = ["total_counts", "n_genes_by_counts", "pct_counts_mito", "qc_passed", "qc_failed"]
    return adata.obs[cols].rename(columns={"qc_passed": "passed", "qc_failed": "failed"})
