"""QC defaults (median +- k MADs outliers), `--layer X`, and design columns the model cannot estimate."""
import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellassign_nf import CellAssign, marker_list_to_matrix
from cellassign_nf.cli import main
from cellassign_nf.design import drop_redundant_columns, make_design
from cellassign_nf.qc import filter_cells, mad_outliers
from cellassign_nf.settings import QCThresholds
from cellassign_nf.simulate import simulate

from conftest import DEMO

DAMAGED = [f"sample2_cell{i:06d}" for i in range(10)]  # assets/demo/make_demo.py: +200 counts per mito gene


@pytest.fixture()
def warnings_text():
    """Warnings of cellassign_nf.design (the CLI replaces the handlers of 'cellassign_nf' and stops its
    propagation, so neither caplog nor a handler there sees them reliably)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("cellassign_nf.design")
    logger.addHandler(handler)
    yield lambda: "\n".join(records)
    logger.removeHandler(handler)


def invoke(*args):
    return CliRunner().invoke(main, ["--quiet", *map(str, args)])


# --- QC: data-driven outliers ------------------------------------------------------------------------
def test_mad_outliers_hand_computed():
    values = pd.Series([1.0, 2.0, 3.0, 4.0, 100.0, -20.0], name="m")
    # median 2.5; |x - 2.5| = 1.5, .5, .5, 1.5, 97.5, 22.5 -> MAD 1.5; 5 MADs: -5 .. 10
    flagged, rule = mad_outliers(values, 5, log1p=False)
    assert flagged.tolist() == [False, False, False, False, True, True]
    assert rule == "m outside 0..10 (median 2.5 ± 5 MADs of 1.5)"  # lower bound shown clipped at 0
    upper, rule = mad_outliers(values, 5, log1p=False, upper_only=True)
    assert upper.tolist() == [False, False, False, False, True, False] and rule.startswith("m > 10 ")
    # log1p scale: log1p values 5, 5.1, 4.9, 5, 2 -> median 5, MAD 0.1, bounds 4.5 .. 5.5
    counts = pd.Series(np.expm1([5.0, 5.1, 4.9, 5.0, 2.0]), name="total_counts")
    flagged, rule = mad_outliers(counts, 5, log1p=True)
    assert flagged.tolist() == [False, False, False, False, True]
    assert f"{np.expm1(4.5):.4g}..{np.expm1(5.5):.4g}" in rule
    # reference cells only define the median and MAD
    flagged, _ = mad_outliers(values, 5, log1p=False, reference=np.array([True, True, True, True, False, False]))
    assert flagged.tolist() == [False, False, False, False, True, True]


def test_mad_outliers_off_and_zero_mad():
    values = pd.Series([0.0, 0.0, 0.0, 5.0], name="pct")
    flagged, rule = mad_outliers(values, 0, log1p=False)
    assert not flagged.any() and rule == "off"
    flagged, rule = mad_outliers(values, 5, log1p=False, upper_only=True)  # MAD 0: every non-zero cell would go
    assert not flagged.any() and "MAD is 0" in rule


@pytest.fixture(scope="module")
def demo2():
    return ad.read_h5ad(DEMO / "sample2.h5ad")


def test_default_qc_removes_the_demo_damaged_cells(demo2):
    filtered, summary = filter_cells(demo2.copy(), QCThresholds())
    assert not set(DAMAGED) & set(filtered.obs_names)
    # 10 damaged cells + 4 outliers among the 590 healthy ones (0.7%)
    assert summary["cells_after"] == filtered.n_obs == 586 and summary["cells_removed"] == 14
    assert summary["removed"] == {"low_counts": 0, "low_genes": 0, "high_mito": 0,
                                  "outlier_counts": 10, "outlier_genes": 2, "outlier_mito": 12}
    assert summary["rules"]["outlier_mito"].startswith("pct_counts_mito > 8.2")
    assert "5 MADs" in summary["rules"]["outlier_counts"]


def test_fixed_thresholds_remain_available(demo2):
    fixed = QCThresholds(nmads=0, nmads_mito=0, max_mito_pct=20)
    filtered, summary = filter_cells(demo2.copy(), fixed)
    assert summary["removed"]["high_mito"] == 10 and summary["cells_after"] == 590
    assert sorted(set(demo2.obs_names) - set(filtered.obs_names)) == DAMAGED
    # everything off: the damaged cells stay (the old default)
    _, summary = filter_cells(demo2.copy(), QCThresholds(nmads=0, nmads_mito=0))
    assert summary["cells_after"] == 600 and summary["rules"]["outlier_mito"] == "off"


def test_no_mito_genes_no_mito_rule():
    adata = simulate({"A": ["a1"], "B": ["b1"]}, n_cells=50, n_other_genes=5, seed=3)
    _, summary = filter_cells(adata, QCThresholds())
    assert summary["removed"]["outlier_mito"] == 0 and "no gene starts with 'MT-'" in summary["rules"]["outlier_mito"]
    assert summary["median_pct_counts_mito"] is None and summary["warnings"] == []  # nothing to measure


# --- QC warnings: a library whose majority is damaged ---------------------------------------------
MEDIAN_MITO = "The median cell has 85.6% mitochondrial counts (median of the 15 cells before QC), above " \
              "--warn-median-mito-pct 20%: most of this library looks damaged."
REMOVED = "QC removed 10 of 15 cells (66.7%), more than --warn-removed-pct 50%: most of this library fails QC."


@pytest.fixture()
def damaged15(demo2):
    """15 cells: the demo's 10 damaged ones (79-93% mitochondrial counts), then 5 healthy ones."""
    return demo2[:15].copy()


def _warning(summary, start):
    hits = [w for w in summary["warnings"] if w.startswith(start)]
    assert len(hits) == 1, summary["warnings"]
    return hits[0]


def test_a_damaged_majority_passes_the_mad_rules_but_warns(damaged15):
    filtered, summary = filter_cells(damaged15, QCThresholds())
    # the blind spot: the MAD rules take the damaged majority for normal and remove the healthy cells
    assert list(filtered.obs_names) == DAMAGED and summary["removed"]["outlier_counts"] == 5
    assert summary["median_pct_counts_mito"] == pytest.approx(85.6, abs=0.05)
    assert len(summary["warnings"]) == 1  # 5 of 15 removed: not more than half
    text = _warning(summary, MEDIAN_MITO)
    assert "MAD rules (--nmads, --nmads-mito)" in text and "cannot remove it" in text
    assert "--max-mito-pct 20 --nmads 0 --nmads-mito 0" in text and "\n" not in text


def test_removing_most_cells_warns_and_the_median_is_of_the_cells_before_qc(damaged15):
    # the fix the warning suggests: fixed thresholds only keep the 5 healthy cells ...
    filtered, summary = filter_cells(damaged15, QCThresholds(max_mito_pct=20, nmads=0, nmads_mito=0))
    assert sorted(set(damaged15.obs_names) - set(filtered.obs_names)) == DAMAGED
    assert summary["pct_removed"] == pytest.approx(66.67)
    text = _warning(summary, REMOVED)
    assert "--min-counts, --min-genes, --max-mito-pct" in text
    # ... and the median % mitochondrial counts is still that of the library before QC, not of the kept cells
    _warning(summary, MEDIAN_MITO)
    assert filtered.obs["pct_counts_mito"].median() < 5


def test_a_healthy_library_has_no_qc_warning():
    filtered, summary = filter_cells(ad.read_h5ad(DEMO / "sample1.h5ad"), QCThresholds())
    assert summary["warnings"] == [] and summary["median_pct_counts_mito"] < 5
    assert summary["cells_removed"] == 14 and summary["pct_removed"] == pytest.approx(100 * 14 / 600, abs=0.01)


def test_warning_thresholds_change_the_outcome(damaged15, demo2):
    _, summary = filter_cells(damaged15.copy(), QCThresholds(warn_median_mito_pct=90))
    assert summary["warnings"] == []  # 85.6% is below 90%
    fixed = dict(max_mito_pct=20, nmads=0, nmads_mito=0)
    _, summary = filter_cells(damaged15.copy(), QCThresholds(**fixed, warn_removed_pct=70))
    assert [w[:40] for w in summary["warnings"]] == [MEDIAN_MITO[:40]]  # 66.7% removed is not more than 70%
    _, summary = filter_cells(damaged15.copy(), QCThresholds(**fixed, warn_removed_pct=100, warn_median_mito_pct=100))
    assert summary["warnings"] == []  # 100 turns a warning off
    _, summary = filter_cells(demo2.copy(), QCThresholds(warn_removed_pct=2, warn_median_mito_pct=3))
    assert [w.split(":")[0] for w in summary["warnings"]] == [
        "QC removed 14 of 600 cells (2.3%), more than --warn-removed-pct 2%",
        "The median cell has 3.7% mitochondrial counts (median of the 600 cells before QC), above "
        "--warn-median-mito-pct 3%"]


def test_qc_cli_writes_and_logs_the_warnings(tmp_path, damaged15):
    path = tmp_path / "damaged.h5ad"
    damaged15.write_h5ad(path)
    out = ["-o", tmp_path / "q.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json"]
    r = invoke("qc", path, *out)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s.json").read_text())
    text = _warning(summary, MEDIAN_MITO)
    logged = " ".join(r.stderr.split())  # rich wraps long lines
    assert "QC of damaged: " + MEDIAN_MITO in logged and "WARNING" in logged
    assert text.split(": ")[-1][-60:] in logged  # the whole sentence, up to its end
    assert summary["thresholds"]["warn_removed_pct"] == 50 and summary["thresholds"]["warn_median_mito_pct"] == 20
    # the options reach the warnings
    r = invoke("qc", path, *out, "--warn-median-mito-pct", "95", "--warn-removed-pct", "30")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [w.split(":")[0] for w in summary["warnings"]] == ["QC removed 5 of 15 cells (33.3%), more than "
                                                              "--warn-removed-pct 30%"]
    # when no cell passes, the error is the one line and the warning still says why
    r = invoke("qc", path, *out[:-2], "--summary", tmp_path / "s2.json", "--max-mito-pct", "20")
    assert r.exit_code == 2 and "no cell passes QC" in r.stderr
    assert MEDIAN_MITO in " ".join(r.stderr.split()) and not (tmp_path / "s2.json").exists()


def test_qc_cli_writes_rules_and_reasons(tmp_path):
    r = invoke("qc", DEMO / "sample2.h5ad", "-o", tmp_path / "q.h5ad", "--metrics", tmp_path / "m.tsv",
               "--summary", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["thresholds"]["nmads"] == 5 and summary["thresholds"]["nmads_mito"] == 5
    metrics = pd.read_csv(tmp_path / "m.tsv", sep="\t", index_col=0, keep_default_na=False)
    assert metrics.loc[DAMAGED[0], "failed"] == "outlier_counts,outlier_mito"
    assert not metrics.loc[DAMAGED[0], "passed"]
    assert (metrics.loc[metrics["passed"], "failed"] == "").all()
    # options reach the rules
    r = invoke("qc", DEMO / "sample2.h5ad", "-o", tmp_path / "q2.h5ad", "--metrics", tmp_path / "m2.tsv",
               "--summary", tmp_path / "s2.json", "--nmads", "0", "--nmads-mito", "3")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s2.json").read_text())
    assert summary["rules"]["outlier_counts"] == "off" and "3 MADs" in summary["rules"]["outlier_mito"]
    assert summary["removed"]["outlier_mito"] == 32  # 3 MADs: 22 healthy cells too (why the default is 5)


# --- --layer X is the main matrix ------------------------------------------------------------------
def test_layer_x_means_the_main_matrix(tmp_path):
    adata = simulate({"A": ["a1", "a2"], "B": ["b1", "b2"]}, n_cells=40, n_other_genes=5, seed=2)
    adata.layers["counts"] = adata.X.copy()
    path = tmp_path / "c.h5ad"
    adata.write_h5ad(path)
    for layer in ["X", "counts"]:
        r = invoke("qc", path, "--layer", layer, "-o", tmp_path / f"{layer}.h5ad", "--metrics", tmp_path / "m.tsv",
                   "--summary", tmp_path / "s.json")
        assert r.exit_code == 0, r.output
    assert ad.read_h5ad(tmp_path / "X.h5ad").n_obs == ad.read_h5ad(tmp_path / "counts.h5ad").n_obs
    r = invoke("qc", path, "--layer", "spliced", "-o", tmp_path / "r.h5ad", "--metrics", tmp_path / "m.tsv",
               "--summary", tmp_path / "s.json")
    assert r.exit_code == 2 and "has no layer 'spliced' (layers: counts)" in r.stderr and "--layer X" in r.stderr
    markers = tmp_path / "m.yaml"
    markers.write_text("A: [a1, a2]\nB: [b1, b2]\n")
    r = invoke("train", path, "--markers", markers, "--layer", "X", "-o", tmp_path / "model.pt", "--history",
               tmp_path / "h.tsv", "--probabilities", tmp_path / "p.tsv", "--max-epochs", "3", "--n-restarts", "1",
               "--min-cells-fit", "10")  # 40 cells: below the default minimum of 50
    assert r.exit_code == 0, r.output
    rho = marker_list_to_matrix({"A": ["a1", "a2"], "B": ["b1", "b2"]})
    assert CellAssign(adata, rho, layer="X", min_cells_fit=10)._data.x.sum() == \
        CellAssign(adata, rho, layer="counts", min_cells_fit=10)._data.x.sum()


# --- design: columns the model cannot estimate ------------------------------------------------------
def _cohort_obs():
    return pd.DataFrame({
        "sample": ["s1"] * 4 + ["s2"] * 4,
        "sequencing_run": ["run1"] * 4 + ["run2"] * 4,   # the bundled samplesheet: the same as sample
        "batch": list("ABAB" * 2),
        "age": [40.0] * 8,                                # constant
    }, index=[f"c{i}" for i in range(8)])


def test_design_drops_collinear_and_constant_columns_with_a_warning(warnings_text):
    design, spec = make_design(_cohort_obs(), ["sample", "sequencing_run", "batch", "age"])
    assert list(design.columns) == ["sample[T.s2]", "batch[T.B]"]
    assert spec.columns == list(design.columns)
    assert spec.dropped == {"sequencing_run[T.run2]": "= sample[T.s2]", "age": "constant (0 for every cell)"}
    assert "sequencing_run[T.run2] = sample[T.s2]" in warnings_text() and "age constant" in warnings_text()


def test_design_keeps_independent_columns(warnings_text):
    obs = _cohort_obs()
    obs["x"] = np.arange(8.0)
    design, spec = make_design(obs, ["sample", "batch", "x"])
    assert list(design.columns) == ["sample[T.s2]", "batch[T.B]", "x"] and spec.dropped == {}
    assert warnings_text() == ""


def test_design_linear_combination_named():
    d = pd.DataFrame({"a": [0, 1, 0, 1.0], "b": [0, 0, 1, 1.0], "c": [1, 2, 2, 3.0], "d": [1, 0, 1, 0.0]})
    kept, dropped = drop_redundant_columns(d)
    assert list(kept.columns) == ["a", "b"]
    assert dropped == {"c": "= 1 + a + b", "d": "= 1 - a"}


def test_design_cli_and_api_drop_redundant_columns(tmp_path, warnings_text):
    adata = simulate({"A": ["a1", "a2"], "B": ["b1", "b2"]}, n_cells=40, n_other_genes=5, batches=("x", "y"), seed=4)
    adata.obs["lane"] = adata.obs["batch"].map({"x": "L1", "y": "L2"})
    path = tmp_path / "c.h5ad"
    adata.write_h5ad(path)
    r = CliRunner().invoke(main, ["design", str(path), "-o", str(tmp_path / "d.tsv"), "--covariates", "batch,lane"])
    assert r.exit_code == 0, r.output
    assert "lane[T.L2] = batch[T.y]" in " ".join(r.stderr.split())  # rich wraps long lines
    assert list(pd.read_csv(tmp_path / "d.tsv", sep="\t", index_col=0).columns) == ["batch[T.y]"]
    rho = marker_list_to_matrix({"A": ["a1", "a2"], "B": ["b1", "b2"]})
    model = CellAssign(adata, rho, categorical_covariate_keys=["batch", "lane"], min_cells_fit=10)  # 40 cells
    assert model.design_columns == ["batch[T.y]"] and "lane[T.L2] = batch[T.y]" in warnings_text()
    ready = pd.DataFrame({"b": (adata.obs["batch"] == "y").astype(float), "same": (adata.obs["batch"] == "y") * 2.0},
                         index=adata.obs_names)
    model = CellAssign(adata, rho, design=ready, min_cells_fit=10)
    assert model.design_columns == ["b"] and model.design_spec.dropped == {"same": "= 2*b"}
    assert "same = 2*b" in warnings_text()


@pytest.mark.parametrize("dense", [False, True])
def test_log_normalised_is_scanpys_normalize_total_and_log1p(dense):
    """The log-normalised expression the report and the diagnostics show: scanpy's
    ``normalize_total(target_sum=1e4)`` then ``log1p``, over all genes or some (totals still over
    all genes), with a cell without counts and stored zeros, and the caller's matrix untouched."""
    import scanpy as sc
    import scipy.sparse as sp

    from cellassign_nf.size_factors import log_normalised

    rng = np.random.default_rng(3)
    X = sp.csr_matrix(rng.negative_binomial(2, 0.6, size=(300, 40)).astype(np.float32)
                      * rng.integers(1, 5, size=(300, 1)).astype(np.float32))
    X.data[X.indptr[7]:X.indptr[8]] = 0  # a cell without counts
    X.data[::9] = 0  # stored zeros
    counts = X.toarray()
    adata = ad.AnnData(counts.copy() if dense else X.copy())
    expected = ad.AnnData(counts.copy())
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    whole = log_normalised(adata)
    genes = [str(g) for g in adata.var_names[[5, 0, 31]]]
    some = log_normalised(adata, genes)
    assert whole.dtype == np.float32 and some.shape == (300, 3)
    np.testing.assert_allclose(whole.toarray(), expected.X, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(some.toarray(), whole.toarray()[:, [5, 0, 31]])
    assert whole.nnz == np.count_nonzero(whole.toarray())  # no stored zeros left
    assert np.array_equal(adata.X if dense else adata.X.toarray(), counts)  # the caller's counts, unscaled
