"""Candidate markers from the data: the genes that best separate groups of cells in *this* data
set (Welch's t-test on log-normalised counts, as scanpy's ``rank_genes_groups(method="t-test")``
computes it), leaving out the panel's genes, so that a user can refine the panel and run again.

The test's statistics come from one pass over the matrix (each group's cell count, sums, sums of
squares and stored values, by sparse products, block by block), the rest of the cells' by
difference from the totals; scanpy copies the cells of each group, and of the rest, once per group.
The t-test and the Benjamini-Hochberg adjustment are scipy's; tests/test_diagnostics.py checks the
scores, adjusted p-values and fold changes against scanpy's."""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .base import group_moments

MIN_LOG2FC = 1.0  # at least twice as high ...
MAX_PVAL_ADJ = 1e-3  # ... clearly (Benjamini-Hochberg) ...
MIN_DETECTION = 0.25  # ... and detected in a quarter of the group's cells
FOLD_CHANGE_PSEUDOCOUNT = 1e-9  # added to both means before their ratio, as scanpy does


@dataclass(frozen=True)
class LabelMoments:
    """The :func:`group_moments` of a matrix's cells grouped by their labels: what every t-test
    between those groups needs, computed once."""

    at: dict[str, int]  # label -> its row of sizes and moments
    sizes: np.ndarray
    moments: np.ndarray

    @classmethod
    def of(cls, norm: ad.AnnData, labels: pd.Series) -> LabelMoments:
        names, codes = np.unique(labels.astype(str).to_numpy(), return_inverse=True)
        sizes, moments = group_moments(norm.X, codes, len(names))
        return cls({str(name): i for i, name in enumerate(names)}, sizes, moments)


def rank_candidates(norm: ad.AnnData, labels: pd.Series, groups: Sequence[str], exclude: Collection[str],
                    n: int, reference: str = "rest", moments: LabelMoments | None = None) -> dict[str, list[str]]:
    """``{group: [top genes]}`` up in each of ``groups`` against ``reference`` (the other cells, or
    one group), not in ``exclude``; names as in ``norm.var_names``. ``moments``: those of ``norm``
    by ``labels``, when already computed."""
    groups = [g for g in groups if (labels == g).sum() >= 2]
    if not groups or (reference == "rest" and (~labels.isin(groups[:1])).sum() < 2) or n <= 0:
        return {g: [] for g in groups}
    tests = t_tests(norm, labels, groups, reference, moments)
    excluded = norm.var_names.isin(list(exclude))
    out = {}
    for g in groups:
        df = tests[g]
        keep = ((df["logfoldchanges"] >= MIN_LOG2FC) & (df["pvals_adj"] < MAX_PVAL_ADJ)
                & (df["detection"] >= MIN_DETECTION) & ~excluded)
        out[g] = df.loc[keep].sort_values("scores", ascending=False, kind="stable").index.astype(str)[:n].tolist()
    return out


def t_tests(norm: ad.AnnData, labels: pd.Series, groups: Sequence[str], reference: str = "rest",
            moments: LabelMoments | None = None) -> dict[str, pd.DataFrame]:
    """Per group of ``groups`` (each of at least two cells): a table over ``norm.var_names`` of
    Welch's t statistic (``scores``) against ``reference`` (``"rest"``: all other cells; or a
    group), its p-value, the Benjamini-Hochberg adjusted p-value over all genes, the log2 fold
    change of the means (``expm1`` of the log-normalised means) and the share of the group's cells
    in which the gene is stored (``detection``): the numbers of scanpy's ``rank_genes_groups``
    with ``method="t-test"`` and ``pts=True``."""
    from scipy import stats

    by_label = moments or LabelMoments.of(norm, labels)
    at, sizes, moments = by_label.at, by_label.sizes, by_label.moments
    total_size, total = sizes.sum(), moments.sum(axis=0)
    out = {}
    for g in groups:
        i = at[g]
        if reference == "rest":
            other_size, other = total_size - sizes[i], total - moments[i]
        else:
            other_size, other = sizes[at[reference]], moments[at[reference]]
        mean, var = _mean_var(sizes[i], moments[i])
        other_mean, other_var = _mean_var(other_size, other)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores, pvals = stats.ttest_ind_from_stats(mean, np.sqrt(var), sizes[i], other_mean, np.sqrt(other_var),
                                                       other_size, equal_var=False)
        scores[np.isnan(scores)] = 0  # equal means and no variance: nothing to tell apart
        pvals[np.isnan(pvals)] = 1
        fold = (np.expm1(mean) + FOLD_CHANGE_PSEUDOCOUNT) / (np.expm1(other_mean) + FOLD_CHANGE_PSEUDOCOUNT)
        out[g] = pd.DataFrame({"scores": scores, "logfoldchanges": np.log2(fold), "pvals": pvals,
                               "pvals_adj": stats.false_discovery_control(pvals, method="bh"),
                               "detection": moments[i, 2] / sizes[i]}, index=norm.var_names)
    return out


def _mean_var(size: float, moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of each gene over a group of ``size`` cells, from its sums and
    sums of squares (:func:`group_moments`)."""
    mean = moments[0] / size
    return mean, np.maximum(moments[1] - size * mean ** 2, 0) / max(size - 1, 1)


def split_in_two(score: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two clusters of cells by a marker score (k-means in one dimension: the natural break);
    True marks the cluster with the higher score. Splitting on the panel's markers, which are
    left out of the candidates, keeps the candidates' test honest."""
    from sklearn.cluster import KMeans

    cluster = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(score.reshape(-1, 1))
    means = [score[cluster == k].mean() if (cluster == k).any() else -np.inf for k in (0, 1)]
    return cluster == int(np.argmax(means))
