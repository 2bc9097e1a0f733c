"""Quality control with scanpy: per-cell metrics and thresholds on counts, genes and mito %."""
from __future__ import annotations

import logging
from dataclasses import asdict

import anndata as ad
import numpy as np
import pandas as pd

from .errors import InputError
from .settings import QCThresholds

log = logging.getLogger(__name__)


def add_qc_metrics(adata: ad.AnnData, mito_prefix: str = "MT-") -> None:
    """scanpy's QC metrics in ``obs``/``var`` (in place): total counts, genes, % mitochondrial."""
    import scanpy as sc

    from .io import gene_symbols  # symbols, also when genes are indexed by ID (10x files)

    adata.var["mito"] = gene_symbols(adata).str.upper().str.startswith(mito_prefix.upper())
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mito"], percent_top=None, log1p=False, inplace=True)


def filter_cells(adata: ad.AnnData, thresholds: QCThresholds, source: str | None = None) -> tuple[ad.AnnData, dict]:
    """Compute metrics, keep passing cells (and genes), and return the filtered data and a summary."""
    if adata.n_obs == 0:
        raise InputError(source, "the sample has no cells", "Check that the right (non-empty) file was given.")
    add_qc_metrics(adata, thresholds.mito_prefix)
    obs = adata.obs
    fails = {
        "low_counts": obs["total_counts"] < thresholds.min_counts,
        "low_genes": obs["n_genes_by_counts"] < thresholds.min_genes,
        "high_mito": obs["pct_counts_mito"] > thresholds.max_mito_pct,
    }
    passed = ~np.logical_or.reduce([f.to_numpy() for f in fails.values()])
    adata.obs["qc_passed"] = passed
    n_zero = int((obs["total_counts"] == 0).sum())
    summary = {
        "cells_before": int(adata.n_obs), "genes_before": int(adata.n_vars),
        "cells_after": int(passed.sum()),
        "removed": {k: int(v.sum()) for k, v in fails.items()},
        "zero_count_cells": n_zero,
        "thresholds": asdict(thresholds),
        "n_mito_genes": int(adata.var["mito"].sum()),
    }
    if n_zero:
        log.info("removing %d cells with zero total counts", n_zero)
    if not passed.any():
        raise InputError(source, f"no cell passes QC ({adata.n_obs} cells; removed: "
                         + ", ".join(f"{k} {v}" for k, v in summary["removed"].items()) + ")",
                         "Relax --min-counts, --min-genes or --max-mito-pct.")
    filtered = adata[passed].copy()
    if thresholds.min_cells > 0:
        import scanpy as sc

        sc.pp.filter_genes(filtered, min_cells=thresholds.min_cells)
    summary["genes_after"] = int(filtered.n_vars)
    log.info("QC: %d of %d cells pass, %d of %d genes kept", filtered.n_obs, adata.n_obs, filtered.n_vars, adata.n_vars)
    return filtered, summary


def metrics_table(adata: ad.AnnData) -> pd.DataFrame:
    """The per-cell QC table: metrics and whether the cell passed."""
    cols = ["total_counts", "n_genes_by_counts", "pct_counts_mito", "qc_passed"]
    return adata.obs[cols].rename(columns={"qc_passed": "passed"})
