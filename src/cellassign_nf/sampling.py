"""Subsamples of cells that keep every group: what the UMAP and the candidate markers of a large
sample are computed on (docs/report.md, docs/markers.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def stratified_cells(labels: pd.Series | np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """Positions (ascending) of at most about ``max_cells`` cells, all of them when there are no
    more, drawn at random within each label: every label keeps its share of ``max_cells``, and at
    least ``max_cells / (2 x labels)`` cells (all of its cells when it has fewer), so that a rare
    type is never left out. The same labels and seed give the same cells."""
    labels = np.asarray(pd.Series(labels).astype(str))
    n = len(labels)
    if max_cells <= 0 or n <= max_cells:
        return np.arange(n)
    groups, codes = np.unique(labels, return_inverse=True)
    sizes = np.bincount(codes, minlength=len(groups))
    floor = max(1, max_cells // (2 * len(groups)))
    quota = np.minimum(sizes, np.maximum(np.floor(max_cells * sizes / n).astype(int), floor))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(codes == g), size=int(quota[g]), replace=False) for g in range(len(groups))]
    return np.sort(np.concatenate(chosen))
