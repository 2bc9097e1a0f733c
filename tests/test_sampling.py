"""The subsample that a large sample's UMAP and candidate markers are computed on."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cellassign_nf.sampling import stratified_cells


def _labels() -> pd.Series:
    # 100,000 cells: a common type, two middling ones, a rare one of 40 cells and one of 3
    sizes = {"T": 70_000, "B": 20_000, "NK": 9_957, "DC": 40, "pDC": 3}
    return pd.Series(np.random.default_rng(0).permutation(np.repeat(list(sizes), list(sizes.values()))))


def test_keeps_every_type_and_its_share():
    labels = _labels()
    cells = stratified_cells(labels, 20_000)
    picked = labels.iloc[cells].value_counts()
    assert 19_900 <= len(cells) <= 20_100 and np.all(np.diff(cells) > 0)
    assert picked["pDC"] == 3 and picked["DC"] == 40  # rare types whole: fewer than 20,000 / (2 x 5) cells
    assert abs(picked["T"] - 14_000) <= 10 and abs(picked["B"] - 4_000) <= 10  # the others by their share
    assert picked["NK"] == 2_000  # its share (1,991) is below the floor of 2,000


def test_all_cells_below_the_cap_and_the_same_cells_each_time():
    labels = _labels()
    assert np.array_equal(stratified_cells(labels.iloc[:500], 20_000), np.arange(500))
    assert np.array_equal(stratified_cells(labels, 0), np.arange(len(labels)))
    assert np.array_equal(stratified_cells(labels, 5_000), stratified_cells(labels, 5_000))
    assert not np.array_equal(stratified_cells(labels, 5_000), stratified_cells(labels, 5_000, seed=1))
