"""The one simulator (cellassign_nf.simulate): its counts follow the model it documents."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cellassign_nf.simulate as simulate_module
from cellassign_nf.simulate import random_markers, simulate

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1", "c2"]}


def _log_mean_ratio(adata, gene, inside, outside):
    """log of (counts per unit size factor inside) / (the same outside): the log fold change."""
    x, s = np.asarray(adata[:, gene].X.todense()).ravel(), adata.obs["size_factor"].to_numpy()
    return np.log(x[inside].sum() / s[inside].sum()) - np.log(x[outside].sum() / s[outside].sum())


def test_markers_overexpressed_by_delta_in_their_type_only():
    adata = simulate(MARKERS, n_cells=20000, n_other_genes=5, phi=50.0, seed=1)
    delta = pd.DataFrame(adata.uns["simulation"]["delta"], index=adata.var_names[:7], columns=list("ABC"))
    truth = adata.obs["true_celltype"].to_numpy()
    for gene, row in delta.iterrows():
        own = row.idxmax()
        assert (row > 0).sum() == 1 and 2.0 <= row[own] <= 3.0  # one type, delta on delta_range
        measured = _log_mean_ratio(adata, gene, truth == own, truth != own)
        assert measured == pytest.approx(row[own], abs=0.1), gene
    # a non-marker gene has no type effect
    assert _log_mean_ratio(adata, "GENE0000", truth == "A", truth != "A") == pytest.approx(0.0, abs=0.1)


def test_batch_effect_per_gene():
    adata = simulate(MARKERS, n_cells=20000, n_other_genes=3, batches=("x", "y"), batch_effect=0.5, phi=50.0,
                     seed=2)
    beta = adata.uns["simulation"]["beta"]  # markers x batches
    y = (adata.obs["batch"] == "y").to_numpy()
    truth = adata.obs["true_celltype"].to_numpy()
    rho = adata.uns["simulation"]["delta"] > 0
    for g, gene in enumerate(adata.var_names[: len(beta)]):
        own = truth == np.array(list("ABC"))[rho[g]][0]  # cells of its type: delta cancels
        assert _log_mean_ratio(adata, gene, own & y, own & ~y) == pytest.approx(beta[g, 1], abs=0.1), gene
    assert np.abs(beta[:, 1]).max() > 0.3  # the check has something to see
    assert np.all(beta[:, 0] == 0)  # the first batch is the reference


def test_library_size_factors_dense_and_chunked_draws_are_the_same(monkeypatch):
    kwargs = dict(n_cells=300, n_other_genes=40, n_mito_genes=2, phi_sd=0.5, proportion_sd=0.5, seed=4)
    sparse = simulate(MARKERS, **kwargs)
    dense = simulate(MARKERS, sparse=False, size_factors="library", **kwargs)
    monkeypatch.setattr(simulate_module, "_CHUNK_VALUES", 100)  # 2 cells per chunk
    chunked = simulate(MARKERS, **kwargs)
    assert isinstance(dense.X, np.ndarray) and dense.X.dtype == np.float32
    np.testing.assert_array_equal(sparse.X.toarray(), dense.X)
    np.testing.assert_array_equal(sparse.X.toarray(), chunked.X.toarray())
    library = dense.X.sum(axis=1)
    np.testing.assert_allclose(dense.obs["size_factor"], library / library.mean(), rtol=1e-6)
    np.testing.assert_array_equal(dense.obs["size_factor_true"], sparse.obs["size_factor"])
    phi = dense.uns["simulation"]["phi"]
    assert phi.shape == (dense.n_vars,) and len(np.unique(phi)) == dense.n_vars


def test_fixed_proportions_minimum_per_type_and_gene_seed():
    adata = simulate(MARKERS, n_cells=3000, proportions=(6, 3, 1), seed=5)
    share = adata.obs["true_celltype"].value_counts(normalize=True)
    assert share["A"] == pytest.approx(0.6, abs=0.03) and share["C"] == pytest.approx(0.1, abs=0.03)
    few = simulate(MARKERS, n_cells=30, proportions=(1, 1, 1e-9), min_cells_per_type=4, seed=5)
    assert few.obs["true_celltype"].value_counts()["C"] >= 4
    s1, s2 = (simulate(MARKERS, n_cells=50, seed=s, gene_seed=9) for s in (1, 2))
    np.testing.assert_array_equal(s1.var["beta0"], s2.var["beta0"])  # shared genes, other cells
    assert not np.array_equal(s1.X.toarray(), s2.X.toarray())


def test_random_markers():
    rho = random_markers(200, 8, p_shared=0.25, seed=0)
    assert rho.shape == (200, 8) and set(np.unique(rho.to_numpy())) == {0, 1}
    per_gene = rho.sum(axis=1)
    assert per_gene.between(1, 2).all()
    assert (per_gene == 2).mean() == pytest.approx(0.25, abs=0.08)
    assert (rho.sum(axis=0) >= 25).all()  # balanced: 25 owned markers per type
    with pytest.raises(ValueError, match="at least one marker per type"):
        random_markers(3, 4)


def test_benchmark_cases_use_this_simulator(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("harness", None)
    from harness import simulate_case

    adata, rho = simulate_case(400, 20, 4, seed=0)
    assert list(adata.var_names) == list(rho.index) and adata.n_obs == 400
    assert adata.obs["true_celltype"].value_counts().min() >= 5
    assert isinstance(adata.X, np.ndarray)
    # size factors from all genes (markers and 300 others), not from the markers kept
    assert not np.allclose(adata.obs["size_factor"], adata.X.sum(axis=1) / adata.X.sum(axis=1).mean())
