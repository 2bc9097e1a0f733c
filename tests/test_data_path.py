"""What each step reads and writes: parts of an h5ad block by block, the filtered counts built in
the input's own arrays, the annotated h5ad as a copy with new annotations, the merge on disk."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellassign_nf import diagnostics, io, steps
from cellassign_nf.errors import InputError
from cellassign_nf.keys import CELLTYPE_KEY, SAMPLE_KEY, TOTALS_KEY
from cellassign_nf.markers import load_panel
from cellassign_nf.settings import QCThresholds
from cellassign_nf.simulate import simulate

from conftest import DEMO

MARKERS = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "C": ["c1", "c2"]}


@pytest.fixture()
def small_blocks(monkeypatch):
    """Blocks of 50 values: every reader and check goes through many blocks."""
    monkeypatch.setattr(io, "BLOCK_VALUES", 50)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    adata = simulate(MARKERS, n_cells=300, n_other_genes=60, seed=3)
    adata.obs[SAMPLE_KEY] = pd.Categorical(["s1"] * adata.n_obs)
    path = tmp_path_factory.mktemp("data") / "s1.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_reading_some_genes_or_cells_equals_cutting_the_whole(sample, small_blocks):
    adata, path = sample
    genes = ["c2", "a1", "GENE0007"]
    part = io.read_h5ad(path, genes=genes)
    assert list(part.var_names) == genes and list(part.obs_names) == list(adata.obs_names)
    assert (part.X != adata[:, genes].X).nnz == 0
    np.testing.assert_allclose(part.obs[TOTALS_KEY], np.asarray(adata.X.sum(axis=1)).ravel())
    cells = np.array([250, 3, 4, 120])
    rows = io.read_h5ad(path, cells=cells)
    assert list(rows.obs_names) == list(adata.obs_names[np.sort(cells)]) and TOTALS_KEY not in rows.obs
    assert (rows.X != adata[np.sort(cells)].X).nnz == 0 and rows.n_vars == adata.n_vars
    none = io.read_h5ad(path, genes=[])
    assert none.n_vars == 0 and none.n_obs == adata.n_obs
    with pytest.raises(InputError, match=r"lacks 1 of the genes asked for \(e.g. nope\)"):
        io.read_h5ad(path, genes=["a1", "nope"])


@pytest.mark.parametrize("matrix", ["csc", "dense"])
def test_parts_of_a_matrix_stored_otherwise_than_csr_equal_cutting_the_whole(sample, tmp_path, small_blocks, matrix):
    adata, _ = sample
    other = adata.copy()
    other.X = sp.csc_matrix(adata.X) if matrix == "csc" else adata.X.toarray()
    path = tmp_path / f"{matrix}.h5ad"
    other.write_h5ad(path)
    genes, cells = ["b3", "a2"], np.array([7, 299, 0])
    part, rows = io.read_h5ad_parts(path, genes, cells)
    assert (part.X != adata[:, genes].X).nnz == 0 and (rows.X != adata[np.sort(cells)].X).nnz == 0
    np.testing.assert_allclose(part.obs[TOTALS_KEY], np.asarray(adata.X.sum(axis=1)).ravel())


def test_rows_and_columns_written_block_by_block_equal_a_copy(tmp_path, small_blocks):
    """write_h5ad_rows writes the runs of kept rows of each block (and the kept columns): any
    masks must give the file X[rows][:, columns], and a wrong count of values is an error."""
    rng = np.random.default_rng(0)
    path = tmp_path / "rows.h5ad"
    for trial in range(40):
        n = int(rng.integers(1, 40))
        X = sp.random(n, 9, density=rng.random(), format="csr", dtype=np.float32, random_state=trial)
        rows = rng.random(n) < rng.random()
        columns = None if trial % 2 else rng.random(9) < 0.6
        expected = X[rows] if columns is None else X[rows][:, columns]
        obs = pd.DataFrame(index=[f"c{i}" for i in np.flatnonzero(rows)])
        var = pd.DataFrame(index=[f"g{j}" for j in range(9) if columns is None or columns[j]])
        io.write_h5ad_rows(path, obs, var, {}, io._blocks(X, n, X.nnz), rows, columns, expected.nnz)
        out = ad.read_h5ad(path)
        assert out.shape == expected.shape and np.array_equal(out.X.toarray(), expected.toarray()), trial
    with pytest.raises(RuntimeError, match="expected"):
        io.write_h5ad_rows(path, obs, var, {}, io._blocks(X, n, X.nnz), rows, columns, expected.nnz + 1)


@pytest.mark.parametrize("stored", ["csr", "csc", "integers"])
def test_qc_from_disk_equals_qc_in_memory(tmp_path, small_blocks, stored):
    """steps.qc reads an h5ad whose X is stored as CSR block by block (other inputs whole) and
    writes the kept cells block by block: its file must equal filter_cells on the counts read
    whole, with explicit zeros, a non-gene feature and the min_cells gene filter (scanpy's)."""
    import json

    import scanpy as sc

    from cellassign_nf.qc import filter_cells

    adata = simulate(MARKERS, n_cells=300, n_other_genes=60, n_mito_genes=5, seed=5)
    X = adata.X.tocsr()
    X[:20] = X[:20].multiply(0.0)  # cells without counts
    X.data[::7] = 0.0  # explicit zeros, kept in the file
    adata.X = {"csr": X, "csc": X.tocsc(), "integers": X.astype(np.int32)}[stored]
    adata.var["feature_types"] = ["Gene Expression"] * (adata.n_vars - 1) + ["Antibody Capture"]
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    t = QCThresholds(min_cells=120)
    info = steps.qc(path, tmp_path / "qc.h5ad", tmp_path / "m.tsv", tmp_path / "s.json", sample="s1", thresholds=t)
    expected, summary = filter_cells(io.read_counts(path), t, str(path))
    out = ad.read_h5ad(tmp_path / "qc.h5ad")
    assert out.X.format == "csr" and out.X.dtype == np.float32 and (out.X.data != 0).all()
    assert out.shape == expected.shape and (out.X != expected.X).nnz == 0
    pd.testing.assert_frame_equal(out.obs.drop(columns=SAMPLE_KEY), expected.obs)
    pd.testing.assert_frame_equal(out.var, expected.var)
    assert {k: v for k, v in info.items() if k in summary} == summary == \
        {k: v for k, v in json.loads((tmp_path / "s.json").read_text()).items() if k in summary}
    reference = filter_cells(io.read_counts(path), QCThresholds(), str(path))[0]
    sc.pp.filter_genes(reference, min_cells=t.min_cells)
    assert 20 < out.n_vars < adata.n_vars - 1
    assert list(out.var_names) == list(reference.var_names) and out.var["n_cells"].equals(reference.var["n_cells"])


def test_qc_output_equals_the_passing_cells_of_the_input(tmp_path, small_blocks):
    adata = simulate(MARKERS, n_cells=400, n_other_genes=60, n_mito_genes=5, seed=4)
    adata.X[:40] = adata.X[:40].multiply(0.0)  # 40 cells without counts
    adata.X.eliminate_zeros()
    adata.write_h5ad(tmp_path / "in.h5ad")
    steps.qc(tmp_path / "in.h5ad", tmp_path / "qc.h5ad", tmp_path / "m.tsv", tmp_path / "s.json", sample="s1",
             thresholds=QCThresholds())
    metrics = pd.read_csv(tmp_path / "m.tsv", sep="\t", index_col=0)
    out = ad.read_h5ad(tmp_path / "qc.h5ad")
    passed = metrics["passed"].to_numpy()
    assert 0 < out.n_obs == passed.sum() <= 360
    assert list(out.obs_names) == list(adata.obs_names[passed])
    assert (out.X != adata.X[passed]).nnz == 0


def test_annotate_copies_the_counts_and_adds_the_annotations(sample, tmp_path):
    adata, path = sample
    types = ["A", "B", "C"]
    probs = pd.DataFrame(np.tile([0.7, 0.2, 0.1], (adata.n_obs, 1)), index=adata.obs_names, columns=types)
    probs.iloc[:5] = [0.1, 0.3, 0.6]
    probs.to_csv(tmp_path / "p.tsv", sep="\t")
    pd.DataFrame({"size_factor": np.linspace(0.5, 1.5, adata.n_obs)}, index=adata.obs_names).to_csv(
        tmp_path / "sf.tsv", sep="\t")
    steps.annotate(path, tmp_path / "p.tsv", tmp_path / "a.h5ad", tmp_path / "pred.tsv",
                   size_factors_path=tmp_path / "sf.tsv")
    out = ad.read_h5ad(tmp_path / "a.h5ad")
    assert (out.X != adata.X).nnz == 0 and list(out.var_names) == list(adata.var_names)
    assert list(out.obs[CELLTYPE_KEY][:6]) == ["C"] * 5 + ["A"]
    np.testing.assert_allclose(out.obs["size_factor"], np.linspace(0.5, 1.5, adata.n_obs), rtol=1e-6)
    assert out.obs["true_celltype"].equals(adata.obs["true_celltype"])  # the input's own columns kept
    np.testing.assert_allclose(out.obsm["cellassign_probabilities"].to_numpy(), probs.to_numpy())
    assert "simulation" in out.uns and list(out.uns["cellassign"]["cell_types"]) == types  # uns kept and added to


def test_merge_on_disk_equals_concatenating_in_memory(tmp_path, small_blocks):
    parts = []
    for i, name in enumerate(["s1", "s2", "s3"]):
        a = simulate(MARKERS, n_cells=50 + 10 * i, n_other_genes=20, seed=i, gene_seed=0)
        a.obs[SAMPLE_KEY] = pd.Categorical([name] * a.n_obs)
        if i == 1:
            a = a[:, [g for g in a.var_names if g != "GENE0003"]].copy()  # a gene the others have
        a.write_h5ad(tmp_path / f"{name}.h5ad")
        parts.append(a)
    n_obs, n_vars = steps.merge([tmp_path / f"{s}.h5ad" for s in ["s1", "s2", "s3"]], tmp_path / "cohort.h5ad")
    merged = ad.read_h5ad(tmp_path / "cohort.h5ad")
    expected = ad.concat(parts, join="inner")
    assert (n_obs, n_vars) == merged.shape == (50 + 60 + 70, len(parts[0].var_names) - 1)
    assert "GENE0003" not in merged.var_names
    assert list(merged.obs_names[:2]) == ["s1:cell000000", "s1:cell000001"] and merged.obs_names.is_unique
    assert list(merged.obs[SAMPLE_KEY].cat.categories) == ["s1", "s2", "s3"]
    assert (merged[:, expected.var_names].X != expected.X).nnz == 0
    with pytest.raises(InputError, match=r"the same sample is given more than once \(s1, s2, s1\)"):
        steps.merge([tmp_path / "s1.h5ad", tmp_path / "s2.h5ad", tmp_path / "s1.h5ad"], tmp_path / "bad.h5ad")


def test_diagnose_from_the_file_equals_diagnose_in_memory(tmp_path, small_blocks):
    """The step reads the marker genes of all cells and all genes of the candidates' cells only;
    its findings must be those of the whole data in memory (wrong totals would change the
    normalised expression, hence the table; names from the marker genes only would lose the
    candidates' symbols)."""
    adata = simulate(MARKERS, n_cells=500, n_other_genes=40, seed=5)
    adata.obs[CELLTYPE_KEY] = adata.obs["true_celltype"].astype(str)
    adata.obs.loc[adata.obs_names[:150], CELLTYPE_KEY] = "unassigned"
    markers = {g for v in MARKERS.values() for g in v}
    adata.var["gene_symbols"] = [g if g in markers else f"SYM{i}" for i, g in enumerate(adata.var_names)]
    adata.write_h5ad(tmp_path / "a.h5ad")
    pd.DataFrame({t: [int(g in gs) for g in [g for v in MARKERS.values() for g in v]] for t, gs in MARKERS.items()},
                 index=[g for v in MARKERS.values() for g in v]).to_csv(tmp_path / "markers.csv")
    from_file = steps.diagnose(tmp_path / "a.h5ad", tmp_path / "markers.csv", tmp_path / "d.tsv", tmp_path / "s.tsv")
    in_memory = diagnostics.diagnose(adata, load_panel(tmp_path / "markers.csv", adata))
    assert [vars(f) for f in from_file.flags] == [vars(f) for f in in_memory.flags]
    assert any(f.candidates for f in from_file.flags)
    pd.testing.assert_frame_equal(from_file.specificity, in_memory.specificity)
    pd.testing.assert_frame_equal(from_file.markers, in_memory.markers)


def test_candidates_of_a_large_sample_come_from_a_subsample_with_every_type(monkeypatch):
    from cellassign_nf.diagnostics import candidates as cand_module
    from cellassign_nf.settings import DiagnosticThresholds

    adata = simulate(MARKERS, n_cells=900, n_other_genes=30, proportions=[0.8, 0.18, 0.02], seed=6)
    adata.obs[CELLTYPE_KEY] = adata.obs["true_celltype"].astype(str)
    ranked = []
    real = cand_module.rank_candidates
    monkeypatch.setattr(diagnostics, "rank_candidates", lambda norm, labels, *a, **k: ranked.append(labels.copy()) or real(norm, labels, *a, **k))
    diagnostics.diagnose(adata, pd.DataFrame({t: [int(g in gs) for g in sum(MARKERS.values(), [])] for t, gs in MARKERS.items()},
                                             index=sum(MARKERS.values(), [])),
                         DiagnosticThresholds(candidate_max_cells=300))
    labels = ranked[0]
    assert 290 <= len(labels) <= 310 and set(labels) == {"A", "B", "C"}
    assert (labels == "C").sum() == (adata.obs[CELLTYPE_KEY] == "C").sum()  # the rare type whole


def test_qc_metrics_are_scanpys():
    """add_qc_metrics computes scanpy's per-cell metrics itself (scanpy's function also computes
    per-gene ones, at the cost of a second copy of the matrix): the values must be scanpy's."""
    import scanpy as sc

    from cellassign_nf.qc import add_qc_metrics

    adata = ad.read_h5ad(DEMO / "sample1.h5ad")
    adata.var_names = [f"MT-{g}" if i % 40 == 0 else g for i, g in enumerate(adata.var_names)]
    X = adata.X.tolil()
    X[:3] = 0  # cells without counts: no % mitochondrial
    adata.X = X.tocsr()
    ours, theirs = adata.copy(), adata.copy()
    add_qc_metrics(ours)
    theirs.var["mito"] = theirs.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(theirs, qc_vars=["mito"], percent_top=None, log1p=False, inplace=True)
    columns = ["n_genes_by_counts", "total_counts", "total_counts_mito", "pct_counts_mito"]
    pd.testing.assert_frame_equal(ours.obs[columns], theirs.obs[columns], check_dtype=False)
    assert ours.obs["pct_counts_mito"].isna().sum() == 3
    assert ours.var["mito"].tolist() == theirs.var["mito"].tolist() and ours.var["mito"].sum() > 9


def test_a_size_factor_table_that_does_not_fit_is_refused_by_its_message(sample, tmp_path):
    adata, path = sample
    pd.DataFrame({"size_factor": np.ones(10)}, index=adata.obs_names[:10]).to_csv(tmp_path / "few.tsv", sep="\t")
    pd.DataFrame({"a": np.ones(adata.n_obs), "b": 1.0}, index=adata.obs_names).to_csv(tmp_path / "two.tsv", sep="\t")
    with pytest.raises(InputError, match=rf"few.tsv: has no size factors of {adata.n_obs - 10} of the "
                                         rf"{adata.n_obs} cells \(e.g. cell000010"):
        steps.read_size_factors(tmp_path / "few.tsv", adata.obs_names)
    with pytest.raises(InputError, match=r"two.tsv: has 2 columns and none is 'size_factor'"):
        steps.read_size_factors(tmp_path / "two.tsv", adata.obs_names)
    with pytest.raises(InputError, match=r"has no size factors of sample 's2' \(rows named 's2:BARCODE'\)"):
        steps.read_size_factors(tmp_path / "few.tsv", adata.obs_names, sample="s2")


def test_tables_are_written_as_pandas_float_format_writes_them(tmp_path):
    """write_table formats float columns itself (faster than to_csv's float_format): the text
    must be pandas' own, NaN and infinities, float32 and repeated column names included, and
    ``exact`` tables must read back to the same float64."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"wide": rng.normal(size=400) * 10.0 ** rng.integers(-40, 40, 400),
                       "single": rng.random(400).astype(np.float32), "text": ["x y"] * 400, "n": np.arange(400),
                       "odd": [1.5, np.nan, np.inf, -np.inf] * 100, "flag": [True, False] * 200},
                      index=[f"c{i}" for i in range(400)])
    df.insert(2, "wide", df["wide"] * 3, allow_duplicates=True)
    for exact, fmt in ((False, "%.6g"), (True, "%.17g")):
        io.write_table(df, tmp_path / "t.tsv", exact=exact)
        assert (tmp_path / "t.tsv").read_text() == df.to_csv(sep="\t", index_label="cell", float_format=fmt)
    back = io.read_table(tmp_path / "t.tsv")
    assert np.array_equal(back.iloc[:, 0].to_numpy(), df.iloc[:, 0].to_numpy())
