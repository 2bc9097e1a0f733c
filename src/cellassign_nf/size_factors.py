"""Size factors (total counts over all genes of a cell divided by the mean over cells) and the
log-normalised expression that the report and the marker diagnostics show."""
from __future__ import annotations

import logging

import anndata as ad
import numpy as np

log = logging.getLogger(__name__)

SIZE_FACTOR_KEY = "size_factor"
TARGET_SUM = 1e4  # normalised expression: counts per 10,000, then log1p


def compute_size_factors(adata: ad.AnnData) -> np.ndarray:
    """Per-cell total counts over *all* genes, divided by their mean (so they average 1)."""
    totals = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    mean = totals.mean() if totals.size else 1.0
    return totals / (mean if mean > 0 else 1.0)


def add_size_factors(adata: ad.AnnData, key: str = SIZE_FACTOR_KEY) -> ad.AnnData:
    """Store size factors in ``adata.obs[key]`` (in place) and return ``adata``."""
    adata.obs[key] = compute_size_factors(adata)
    n_zero = int((adata.obs[key] <= 0).sum())
    if n_zero:
        log.warning("%d cells have zero total counts (size factor 0); they will be left out of the fit", n_zero)
    return adata


def normalise(adata: ad.AnnData) -> ad.AnnData:
    """A copy with counts normalised to 10,000 per cell and log1p-transformed (scanpy)."""
    import scanpy as sc

    norm = adata.copy()
    norm.X = norm.X.astype(np.float32)
    sc.pp.normalize_total(norm, target_sum=TARGET_SUM)
    sc.pp.log1p(norm)
    return norm
