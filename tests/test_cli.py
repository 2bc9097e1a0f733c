"""CLI steps end to end, and one test per kind of bad input (message, exit code, no partial output)."""
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from cellassign_nf.cli import main
from cellassign_nf.keys import OTHER
from cellassign_nf.markers import left_out_warning
from cellassign_nf.simulate import simulate

from conftest import CONSOLE_SCRIPT, DEMO

MARKERS = {"A": ["a1", "a2"], "B": ["b1", "b2"]}
FAST = ["--max-epochs", "15", "--n-restarts", "1"]


def invoke(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result


@pytest.fixture()
def counts(tmp_path):
    adata = simulate(MARKERS, n_cells=60, n_other_genes=10, n_mito_genes=2, batches=("x", "y"), seed=1)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    return adata, path


@pytest.fixture()
def markers(tmp_path):
    path = tmp_path / "markers.csv"
    pd.DataFrame({"A": [1, 1, 0, 0], "B": [0, 0, 1, 1]}, index=["a1", "a2", "b1", "b2"]).to_csv(path)
    return path


def assert_error(result, *fragments, path=None):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    if path is not None:
        assert str(path) in lines[0]


def assert_no_outputs(folder, *names):
    for n in names:
        assert not (folder / n).exists()
    assert not list(folder.glob(".*.tmp*")), "temporary file left behind"


def test_run_demo_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(DEMO / "sample1.h5ad"), "--markers", str(DEMO / "markers.csv"),
                                       "--outdir", str(out), "--covariates", "batch",
                                       "--n-restarts", "2", "--no-umap"])
    assert result.exit_code == 0, result.output
    # the pipeline's per-sample layout: outputs in OUTDIR, the report in OUTDIR/report/
    for name in ["annotated.h5ad", "predictions.tsv", "model.pt", "history.tsv", "probabilities.tsv",
                 "design.tsv", "qc_metrics.tsv", "qc_summary.json"]:
        assert (out / f"sample1.{name}").stat().st_size > 0, name
    assert (out / "report" / "sample1.report.html").stat().st_size > 0
    assert list((out / "report").glob("sample1_*_mqc.*"))
    assert not list(out.glob("*.qc.h5ad")) and not list(out.glob("*.size_factors.tsv"))  # intermediates, as in the pipeline
    annotated = ad.read_h5ad(out / "sample1.annotated.h5ad")
    summary = json.loads((out / "sample1.qc_summary.json").read_text())
    # default QC (5 MADs) removes the 10 mostly-mitochondrial cells the demo holds (cells 0-9) and 4
    # more outliers (high/low counts or genes, 8-9% mito); the old default (max_mito_pct 100) kept all
    assert summary["cells_before"] == 600 and summary["cells_after"] == 586
    assert summary["removed"]["outlier_mito"] == 12 and summary["removed"]["high_mito"] == 0
    damaged = {f"sample1_cell{i:06d}" for i in range(10)}
    assert not damaged & set(annotated.obs_names)
    assert annotated.n_obs == summary["cells_after"] == 586
    truth = annotated.obs["true_celltype"].astype(str)
    assert (annotated.obs["cellassign_celltype"].astype(str) == truth).mean() >= 0.95
    probs = annotated.obsm["cellassign_probabilities"]
    # 'other' (no markers) is a type by default: the demo holds only the panel's types, so it stays small
    assert list(probs.columns) == ["T cell", "B cell", "Monocyte", "NK cell", "other"]
    assert (annotated.obs["cellassign_celltype"].astype(str) == "other").mean() < 0.03
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    predictions = pd.read_csv(out / "sample1.predictions.tsv", sep="\t", index_col=0)
    assert (predictions["cellassign_celltype"] == annotated.obs["cellassign_celltype"].astype(str)).all()
    history = pd.read_csv(out / "sample1.history.tsv", sep="\t")
    assert set(history["restart"]) == {0, 1} and history["selected"].any()
    assert "cells annotated" in result.stderr and "T cell" in result.stderr


def test_steps_one_by_one_with_formula(tmp_path, counts, markers):
    _, path = counts
    d = tmp_path
    assert invoke("qc", path, "-o", d / "q.h5ad", "--metrics", d / "m.tsv", "--summary", d / "s.json",
                  "--sample", "s1").exit_code == 0
    assert invoke("size-factors", d / "q.h5ad", "-o", d / "sf.tsv").exit_code == 0
    q = ad.read_h5ad(d / "q.h5ad")
    sf = pd.read_csv(d / "sf.tsv", sep="\t", index_col=0)
    totals = np.asarray(q.X.sum(axis=1)).ravel()
    assert list(sf.columns) == ["size_factor"] and list(sf.index) == list(q.obs_names)
    np.testing.assert_allclose(sf["size_factor"], totals / totals.mean(), rtol=1e-5)
    assert invoke("design", d / "q.h5ad", "-o", d / "design.tsv", "--formula", "~ batch").exit_code == 0
    design = pd.read_csv(d / "design.tsv", sep="\t", index_col=0)
    assert list(design.columns) == ["batch[T.y]"]
    r = invoke("train", d / "q.h5ad", "--markers", markers, "-o", d / "model.pt", "--history", d / "h.tsv",
               "--probabilities", d / "p.tsv", "--design", d / "design.tsv", "--size-factors", d / "sf.tsv", *FAST)
    assert r.exit_code == 0, r.output
    r = invoke("annotate", d / "q.h5ad", "-p", d / "p.tsv", "-o", d / "a.h5ad", "--predictions", d / "pred.tsv",
               "--size-factors", d / "sf.tsv", "--min-prob", "0.999999")
    assert r.exit_code == 0, r.output
    a = ad.read_h5ad(d / "a.h5ad")
    assert set(a.obs["cellassign_celltype"].astype(str)) <= {"A", "B", "unassigned"}
    assert a.uns["cellassign"]["min_prob"] == pytest.approx(0.999999)
    # the annotated h5ad is the QC'd counts, unchanged, with the annotations added
    assert (a.X != q.X).nnz == 0 and list(a.var_names) == list(q.var_names)
    np.testing.assert_allclose(a.obs["size_factor"], sf["size_factor"], rtol=1e-5)
    probs = pd.read_csv(d / "p.tsv", sep="\t", index_col=0)
    np.testing.assert_allclose(a.obsm["cellassign_probabilities"].to_numpy(), probs.reindex(a.obs_names).to_numpy(),
                               rtol=1e-5)


def test_help_shows_example():
    for cmd in ["qc", "size-factors", "design", "train", "annotate", "run", "merge"]:
        result = CliRunner().invoke(main, [cmd, "--help"])
        assert result.exit_code == 0 and "Example" in result.output and "cellassign-nf" in result.output


# --- bad input ------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    missing = tmp_path / "nope.h5ad"
    r = invoke("qc", missing, "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert_error(r, "file not found", "Check the path", path=missing)
    assert_no_outputs(tmp_path, "o.h5ad", "m.tsv", "s.json")


def test_wrong_file_type(tmp_path):
    bad = tmp_path / "counts.txt"
    bad.write_text("hello")
    r = invoke("qc", bad, "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert_error(r, "unsupported file type '.txt'", ".h5ad, 10x .h5, or a 10x mtx folder", path=bad)


def test_corrupt_h5ad(tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"\x89HDF\r\n" + b"0" * 100)
    r = invoke("qc", bad, "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert_error(r, "cannot be read as .h5ad", path=bad)
    assert_no_outputs(tmp_path, "o.h5ad")


def test_log_normalised_counts_point_to_layer(tmp_path, counts):
    adata, _ = counts
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    r = invoke("qc", path, "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert_error(r, "not integers", "log-normalised", "--layer", "counts", path=path)
    assert invoke("qc", path, "--layer", "counts", "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv",
                  "--summary", tmp_path / "s.json").exit_code == 0


def test_negative_counts(tmp_path, counts):
    adata, _ = counts
    X = adata.X.toarray()
    X[0, 0] = -3
    adata.X = sp.csr_matrix(X)
    path = tmp_path / "neg.h5ad"
    adata.write_h5ad(path)
    r = invoke("qc", path, "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert_error(r, "negative values", "--layer", path=path)


# duplicated gene names are not an error (Cell Ranger references repeat a few symbols):
# tests/test_inputs.py::test_h5ad_with_duplicated_names_* and test_duplicated_symbol_*


def test_empty_sample(tmp_path, counts):
    adata, _ = counts
    path = tmp_path / "empty.h5ad"
    adata[:0].copy().write_h5ad(path)
    r = invoke("qc", path, "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert_error(r, "no cells", path=path)


def test_zero_cells_after_qc(tmp_path, counts):
    _, path = counts
    r = invoke("qc", path, "--min-counts", "10000000", "-o", tmp_path / "o.h5ad", "--metrics", tmp_path / "m.tsv",
               "--summary", tmp_path / "s.json")
    assert_error(r, "no cell passes QC", "Relax --min-counts", path=path)
    assert_no_outputs(tmp_path, "o.h5ad", "m.tsv", "s.json")


def test_zero_count_cells_removed_with_count(tmp_path, counts, markers, caplog):
    adata, _ = counts
    X = adata.X.toarray()
    X[:3] = 0
    adata.X = sp.csr_matrix(X)
    from cellassign_nf import CellAssign, read_markers

    with caplog.at_level("WARNING"):
        model = CellAssign(adata, read_markers(markers))
    assert "removed 3 cells with zero total counts" in caplog.text
    assert model.train(max_epochs=3, n_restarts=1, progress=False).predict().shape[0] == 57
    path = tmp_path / "zeros.h5ad"
    adata.write_h5ad(path)
    r = CliRunner().invoke(main, ["qc", str(path), "-o", str(tmp_path / "o.h5ad"), "--metrics", str(tmp_path / "m.tsv"),
                                  "--summary", str(tmp_path / "s.json")])
    assert r.exit_code == 0
    assert json.loads((tmp_path / "s.json").read_text())["zero_count_cells"] == 3
    assert "removing 3 cells with zero total counts" in r.stderr


def _train(tmp_path, data, markers, *extra):
    return invoke("train", data, "--markers", markers, "-o", tmp_path / "model.pt", "--history", tmp_path / "h.tsv",
                  "--probabilities", tmp_path / "p.tsv", *FAST, *extra)


def test_no_marker_gene_in_data(tmp_path, counts):
    _, path = counts
    markers = tmp_path / "m.yaml"
    markers.write_text("T: [CD3E, CD3D]\nB: [MS4A1]\n")
    r = _train(tmp_path, path, markers)
    assert_error(r, "none of the marker genes is in the data", "CD3E", "a1", "symbols vs. Ensembl")
    assert_no_outputs(tmp_path, "model.pt", "h.tsv", "p.tsv")


def test_some_marker_genes_missing_warns(tmp_path, counts):
    _, path = counts
    markers = tmp_path / "m.json"
    markers.write_text(json.dumps({"A": ["a1", "a2", "NOTAGENE"], "B": ["b1", "b2"]}))
    r = CliRunner().invoke(main, ["train", str(path), "--markers", str(markers), "-o", str(tmp_path / "model.pt"),
                                  "--history", str(tmp_path / "h.tsv"), "--probabilities", str(tmp_path / "p.tsv"),
                                  *FAST])
    assert r.exit_code == 0, r.output
    assert "1 of 5 marker genes are not in the data" in r.stderr and "NOTAGENE" in r.stderr


def test_cell_type_without_marker_in_data_is_left_out_with_one_warning(tmp_path, counts):
    _, path = counts
    markers = tmp_path / "m.txt"
    markers.write_text("A:a1,a2\nB:b1\nC:XYZ1,XYZ2\n")
    r = _train(tmp_path, path, markers, "--model-info", tmp_path / "info.json")
    assert r.exit_code == 0, r.output
    log = " ".join(r.stderr.split())  # the log's lines joined: a long message wraps
    warning = left_out_warning(["C"])
    assert log.count("left out of the fit") == 1 and warning in log, log
    fitted = ["A", "B", OTHER]  # C left out; 'other' added by default
    assert list(pd.read_csv(tmp_path / "p.tsv", sep="\t", index_col=0).columns) == fitted
    info = json.loads((tmp_path / "info.json").read_text())
    assert (info["left_out_types"], info["warnings"], info["cell_types"]) == (["C"], [warning], fitted)
    # the saved model reused: its own types stand (its panel, C included, is still the panel it was given),
    # and its description says what its fit left out
    p = invoke("predict", path, "--model", tmp_path / "model.pt", "--markers", markers, "-o", tmp_path / "m2.pt",
               "--history", tmp_path / "h2.tsv", "--probabilities", tmp_path / "p2.tsv",
               "--model-info", tmp_path / "info2.json", "--max-epochs", "15")
    assert p.exit_code == 0, p.output
    assert list(pd.read_csv(tmp_path / "p2.tsv", sep="\t", index_col=0).columns) == fitted
    reused = json.loads((tmp_path / "info2.json").read_text())
    assert (reused["refit"], reused["left_out_types"], reused["warnings"]) == ("batch", ["C"], [warning])


def test_cell_type_without_marker_in_data_is_refused_with_require_every_type(tmp_path, counts):
    _, path = counts
    markers = tmp_path / "m.txt"
    markers.write_text("A:a1,a2\nB:b1\nC:XYZ1,XYZ2\n")
    assert_error(_train(tmp_path, path, markers, "--require-every-type"),
                 "cell type(s) with no marker gene in the data: C", "without --require-every-type", path=markers)
    assert_no_outputs(tmp_path, "model.pt", "h.tsv", "p.tsv")


def test_marker_type_with_no_genes(tmp_path, counts):
    _, path = counts
    markers = tmp_path / "m.csv"
    pd.DataFrame({"A": [1, 0], "B": [0, 1], "C": [0, 0]}, index=["a1", "b1"]).to_csv(markers)
    assert_error(_train(tmp_path, path, markers), "cell type(s) with no marker gene: C", "other", path=markers)


def test_marker_matrix_not_binary(tmp_path, counts):
    _, path = counts
    markers = tmp_path / "m.csv"
    pd.DataFrame({"A": [1, 0.5], "B": [0, 1]}, index=["a1", "b1"]).to_csv(markers)
    assert_error(_train(tmp_path, path, markers), "entries other than 0 and 1", path=markers)


def test_unknown_covariate(tmp_path, counts):
    _, path = counts
    r = invoke("design", path, "-o", tmp_path / "d.tsv", "--covariates", "batch,donor")
    assert_error(r, "unknown covariate column(s) donor", "batch", path=path)
    assert_no_outputs(tmp_path, "d.tsv")


def test_nan_in_covariate(tmp_path, counts):
    adata, _ = counts
    adata.obs["age"] = np.where(np.arange(adata.n_obs) < 4, np.nan, 30.0)
    path = tmp_path / "nan.h5ad"
    adata.write_h5ad(path)
    r = invoke("design", path, "-o", tmp_path / "d.tsv", "--formula", "~ batch + age")
    assert_error(r, "covariate 'age' is missing (NaN) for 4 cells", path=path)


def test_bad_formula(tmp_path, counts):
    _, path = counts
    assert_error(invoke("design", path, "-o", tmp_path / "d.tsv", "--formula", "~ batch +"), "cannot parse")


def test_qc_sets_sample_level_obs(tmp_path, counts):
    _, path = counts
    r = invoke("qc", path, "--sample", "s9", "--obs", "donor=D1", "--obs", "site=Basel", "-o", tmp_path / "o.h5ad",
               "--metrics", tmp_path / "m.tsv", "--summary", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    obs = ad.read_h5ad(tmp_path / "o.h5ad").obs
    assert set(obs["donor"]) == {"D1"} and set(obs["site"]) == {"Basel"} and set(obs["sample"]) == {"s9"}
    bad = invoke("qc", path, "--obs", "novalue", "-o", tmp_path / "o2.h5ad", "--metrics", tmp_path / "m2.tsv",
                 "--summary", tmp_path / "s2.json")
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


# --- --device cuda where CUDA is not usable (a GPU node without a working GPU) -------------------------
def _cli_without_gpu(tmp_path, *args):
    """The real command (the console script's entry point) in a fresh process with every GPU hidden
    (CUDA_VISIBLE_DEVICES=''), so CUDA is unusable whether or not this machine has a GPU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, "--quiet", *map(str, args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["train", "run"])
def test_device_cuda_without_gpu_fails_in_one_line(tmp_path, counts, markers, command):
    _, path = counts
    if command == "train":
        args = ["train", path, "--markers", markers, "-o", tmp_path / "m.pt", "--history", tmp_path / "h.tsv",
                "--probabilities", tmp_path / "p.tsv", *FAST, "--device", "cuda"]
        outputs = ["m.pt", "h.tsv", "p.tsv"]
    else:
        args = ["run", path, "--markers", markers, "--outdir", tmp_path / "out", *FAST, "--device", "cuda"]
        outputs = ["out"]
    result = _cli_without_gpu(tmp_path, *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: a GPU was requested but CUDA is not usable"), \
        result.stderr
    assert "CUDA_VISIBLE_DEVICES=''" in lines[0] and "--gres=gpu:1" in lines[0] and "--device cpu" in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    for name in outputs:  # fails before any step: nothing written
        assert not (tmp_path / name).exists(), name


def test_device_cuda_without_gpu_is_a_value_error_for_the_api(monkeypatch):
    import torch

    from cellassign_nf.errors import InputError
    from cellassign_nf.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="a GPU was requested but CUDA is not usable") as info:
        resolve_device("cuda")
    assert isinstance(info.value, InputError)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_out_of_memory_exits_137_so_the_pipeline_retries_with_more(counts, tmp_path, monkeypatch):
    from cellassign_nf import steps

    def no_memory(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(steps, "size_factors", no_memory)
    result = invoke("size-factors", counts[1], "-o", tmp_path / "sf.tsv")
    assert result.exit_code == 137, (result.exit_code, result.output)
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == [
        "error: size-factors ran out of memory."]
    assert not (tmp_path / "sf.tsv").exists()


# --- output cut short by its reader --------------------------------------------------------------------
def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    """`cellassign-nf markers show pbmc_human | head -1`: the reader has gone when the command
    writes (here before its first line, so that it is certain however fast either side is); the
    command ends with 141 (128 + SIGPIPE), says nothing and writes no cellassign-nf.error.log."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone
    try:
        result = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, "--quiet", "markers", "show", "pbmc_human"],
                                cwd=tmp_path, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == "", (result.returncode, result.stderr)
    assert not (tmp_path / "cellassign-nf.error.log").exists()


def test_the_console_script_exits_with_the_commands_status_and_its_objects_frozen(tmp_path):
    """`cellassign-nf` (cli.console_script) ends with main's exit status and its output whole, with
    every object moved out of the collector's reach (gc.freeze) before the interpreter's last passes."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts")["cellassign-nf"].value == "cellassign_nf.cli:console_script"
    probe = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count(), "
             f"file=sys.stderr)); {CONSOLE_SCRIPT}")
    ok = subprocess.run([sys.executable, "-c", probe, "markers", "show", "pbmc_human"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("platelet [CL:0000233]:")  # the whole panel, flushed at exit
    assert int(ok.stderr.split("frozen ")[1].split()[0]) > 10_000, ok.stderr
    bad = subprocess.run([sys.executable, "-c", probe, "--quiet", "size-factors", "missing.h5ad", "-o", "sf.tsv"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: " in bad.stderr and "missing.h5ad" in bad.stderr, bad.stderr
    assert int(bad.stderr.split("frozen ")[1].split()[0]) > 10_000, bad.stderr
