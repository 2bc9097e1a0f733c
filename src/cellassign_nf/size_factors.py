"""Size factors (total counts over all genes of a cell divided by the mean over cells) and the
log-normalised expression that the report and the marker diagnostics show."""
from __future__ import annotations

import logging

from collections.abc import Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .keys import SIZE_FACTOR_KEY, TOTALS_KEY

log = logging.getLogger(__name__)

TARGET_SUM = 1e4  # normalised expression: counts per 10,000, then log1p


def cell_totals(adata: ad.AnnData, counts=None) -> np.ndarray:
    """Per-cell total counts over *all* genes: the row sums of ``counts`` (a layer) when given;
    else ``obs[TOTALS_KEY]`` when only some genes were read (``io.read_h5ad(path, genes=...)``);
    else the row sums of ``X``."""
    if counts is None and TOTALS_KEY in adata.obs:
        return adata.obs[TOTALS_KEY].to_numpy(dtype=np.float64)
    return np.asarray((adata.X if counts is None else counts).sum(axis=1), dtype=np.float64).ravel()


def size_factors_of(totals: np.ndarray) -> np.ndarray:
    """Total counts divided by their mean (so that the size factors average 1)."""
    mean = totals.mean() if totals.size else 1.0
    return totals / (mean if mean > 0 else 1.0)


def compute_size_factors(adata: ad.AnnData, counts=None) -> np.ndarray:
    """Per-cell total counts over *all* genes (:func:`cell_totals`), divided by their mean (so
    they average 1)."""
    return size_factors_of(cell_totals(adata, counts))


def add_size_factors(adata: ad.AnnData, key: str = SIZE_FACTOR_KEY) -> ad.AnnData:
    """Store size factors in ``adata.obs[key]`` (in place) and return ``adata``."""
    adata.obs[key] = compute_size_factors(adata)
    warn_zero(adata.obs[key].to_numpy())
    return adata


def warn_zero(size_factors: np.ndarray) -> None:
    """One warning when some cells have no counts (size factor 0): the fit leaves them out."""
    n_zero = int((size_factors <= 0).sum())
    if n_zero:
        log.warning("%d cells have zero total counts (size factor 0); they will be left out of the fit", n_zero)


def log_normalised(adata: ad.AnnData, genes: Sequence[str] | None = None) -> sp.csr_matrix:
    """log1p of counts normalised to ``TARGET_SUM`` per cell (totals over *all* genes), for
    ``genes`` only (all by default): cells x genes, a new sparse float32 matrix (the input is
    left as it is), never dense."""
    X = adata.X
    totals = cell_totals(adata)
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
    sub = X if genes is None else X[:, adata.var_names.get_indexer(list(genes))]
    sub = sp.csr_matrix(sub, dtype=np.float32, copy=sub is X)  # never scale the caller's matrix
    sub.prune()  # arrays no longer than the stored values
    sub.data *= np.repeat(scale, np.diff(sub.indptr))  # each row by its scale, in place
    np.log1p(sub.data, out=sub.data)
    sub.eliminate_zeros()  # stored zeros, and the rows of cells without counts
    return sub


def normalise(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with :func:`log_normalised` expression of all genes in ``X`` (obs, var, obsm and
    uns are kept)."""
    return ad.AnnData(log_normalised(adata), obs=adata.obs.copy(), var=adata.var.copy(),
                      obsm=dict(adata.obsm), uns=dict(adata.uns))
