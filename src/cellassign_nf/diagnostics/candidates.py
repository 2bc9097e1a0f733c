"""Candidate markers from the data: the genes that best separate groups of cells in *this* data
set (scanpy's ``rank_genes_groups``, t-test on log-normalised counts), leaving out the panel's
genes, so that a user can refine the panel and run again."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

GROUP_KEY = "_diagnostics_group"
MIN_LOG2FC = 1.0  # at least twice as high ...
MAX_PVAL_ADJ = 1e-3  # ... clearly (Benjamini-Hochberg) ...
MIN_DETECTION = 0.25  # ... and detected in a quarter of the group's cells


def rank_candidates(norm: ad.AnnData, labels: pd.Series, groups: Sequence[str], exclude: Collection[str],
                    n: int, reference: str = "rest") -> dict[str, list[str]]:
    """``{group: [top genes]}`` up in each of ``groups`` against ``reference`` (the other cells, or
    one group), not in ``exclude``; names as in ``norm.var_names``."""
    import scanpy as sc

    groups = [g for g in groups if (labels == g).sum() >= 2]
    if not groups or (reference == "rest" and (~labels.isin(groups[:1])).sum() < 2) or n <= 0:
        return {g: [] for g in groups}
    norm.obs[GROUP_KEY] = pd.Categorical(labels.astype(str).to_numpy())
    try:
        # pts=False: scanpy would also count each gene's detection among the rest of the cells,
        # a copy of nearly the whole matrix per group, for a column not used here
        sc.tl.rank_genes_groups(norm, GROUP_KEY, groups=list(groups), reference=reference, method="t-test",
                                pts=False, use_raw=False, key_added="_diagnostics")
        out = {}
        for g in groups:
            df = sc.get.rank_genes_groups_df(norm, group=g, key="_diagnostics")
            detected = detection(norm, (labels == g).to_numpy())[norm.var_names.get_indexer(df["names"])]
            keep = ((df["logfoldchanges"] >= MIN_LOG2FC) & (df["pvals_adj"] < MAX_PVAL_ADJ)
                    & (detected >= MIN_DETECTION) & ~df["names"].isin(set(exclude)))
            out[g] = df.loc[keep].sort_values("scores", ascending=False)["names"].astype(str).head(n).tolist()
        return out
    finally:
        del norm.obs[GROUP_KEY]
        norm.uns.pop("_diagnostics", None)


def detection(norm: ad.AnnData, cells: np.ndarray) -> np.ndarray:
    """Per gene, the share of the ``cells`` (a mask) in which it is stored (scanpy's ``pts``)."""
    x = norm.X[cells]
    counted = x.getnnz(axis=0) if sp.issparse(x) else np.count_nonzero(x, axis=0)
    return np.asarray(counted, dtype=np.float64) / max(x.shape[0], 1)


def split_in_two(score: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two clusters of cells by a marker score (k-means in one dimension: the natural break);
    True marks the cluster with the higher score. Splitting on the panel's markers, which are
    left out of the candidates, keeps the candidates' test honest."""
    from sklearn.cluster import KMeans

    cluster = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(score.reshape(-1, 1))
    means = [score[cluster == k].mean() if (cluster == k).any() else -np.inf for k in (0, 1)]
    return cluster == int(np.argmax(means))
