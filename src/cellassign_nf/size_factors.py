"""Size factors (total counts over all genes of a cell divided by the mean over cells) and the
log-normalised expression that the report and the marker diagnostics show."""
from __future__ import annotations

import logging

from collections.abc import Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .keys import SIZE_FACTOR_KEY

log = logging.getLogger(__name__)

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


def log_normalised(adata: ad.AnnData, genes: Sequence[str] | None = None) -> sp.csr_matrix:
    """log1p of counts normalised to ``TARGET_SUM`` per cell (totals over *all* genes), for
    ``genes`` only (all by default): cells x genes, sparse float32, without copying the matrix."""
    X = adata.X
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    sub = X if genes is None else X[:, adata.var_names.get_indexer(list(genes))]
    sub = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ sp.csr_matrix(sub, dtype=np.float32))
    sub.data = np.log1p(sub.data)
    return sub


def normalise(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with :func:`log_normalised` expression of all genes in ``X`` (obs, var, obsm and
    uns are kept)."""
    return ad.AnnData(log_normalised(adata), obs=adata.obs.copy(), var=adata.var.copy(),
                      obsm=dict(adata.obsm), uns=dict(adata.uns))
