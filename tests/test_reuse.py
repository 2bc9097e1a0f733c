"""A saved model annotates new batches (docs/model.md section 8; `cellassign-nf predict`; the
pipeline's --model): the same cell types from batch to batch, with what belongs to the batch refitted.

The data: one simulation of the model with a strong per-gene batch shift between a reference
batch and a query batch (the same types, the same delta; beta[g, query] ~ Normal(0, 3) on the log
scale). A model trained on the reference and applied as saved (--refit none) misassigns about a
quarter of the query's cells; the refit of beta0, beta and pi (delta and the dispersion fixed)
recovers them. A refit that also moved delta, or one that did nothing, or a frozen model
mistaken for a refit, fails these tests.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellassign_nf.api import CellAssign
from cellassign_nf.cli import main
from cellassign_nf.errors import InputError
from cellassign_nf.keys import MODEL_INFO_KEY, TRUE_CELLTYPE_KEY, UNS_KEY
from cellassign_nf.simulate import random_markers, simulate
from cellassign_nf import steps
from nextflow_helpers import accuracy, explain, nextflow, process_counts, run_pipeline, stopped_before_any_task, trace

BATCH_SHIFT = 3.0  # sd of the query's per-gene log shift: as saved, the model loses ~25% of the cells
MARGIN = 0.10  # the refit's accuracy must beat --refit none's by at least this much


def _accuracy(probabilities: pd.DataFrame, adata: ad.AnnData) -> float:
    truth = adata.obs.loc[probabilities.index, TRUE_CELLTYPE_KEY].astype(str).to_numpy()
    return float((probabilities.idxmax(axis=1).to_numpy() == truth).mean())


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict:
    """Reference and query h5ads (the query in two samples), the panel, and a model trained on the reference."""
    folder = tmp_path_factory.mktemp("reuse")
    rho = random_markers(60, 6, seed=1)
    markers = folder / "markers.csv"
    rho.astype(int).to_csv(markers)
    adata = simulate(rho, n_cells=4000, n_other_genes=300, batches=("reference", "query"), batch_effect=BATCH_SHIFT,
                     seed=3, size_factors="library")
    shift = pd.DataFrame(adata.uns["simulation"]["beta"], index=rho.index).iloc[:, 1]
    del adata.uns["simulation"]
    ref = adata[adata.obs["batch"] == "reference"].copy()
    query = adata[adata.obs["batch"] == "query"].copy()
    paths = {"reference": folder / "reference.h5ad", "q1": folder / "q1.h5ad", "q2": folder / "q2.h5ad"}
    ref.write_h5ad(paths["reference"])
    half = query.n_obs // 2
    query[:half].copy().write_h5ad(paths["q1"])
    query[half:].copy().write_h5ad(paths["q2"])
    model = folder / "reference.model.pt"
    steps.train(paths["reference"], markers, model, folder / "ref.history.tsv", folder / "ref.probabilities.tsv")
    return {"folder": folder, "markers": markers, "rho": rho, "paths": paths, "model": model, "query": query,
            "reference": ref, "shift": shift}


# --------------------------------------------------------------------------------------
# The API: CellAssign.load(...).refit(adata)
# --------------------------------------------------------------------------------------

def test_refit_holds_the_types_fixed_and_recovers_the_batch_shift(batches):
    saved = CellAssign.load(batches["model"])
    query = batches["query"]
    as_saved = _accuracy(saved.predict(query), query)
    refitted = saved.refit(query, progress=False)
    refit = _accuracy(refitted.predict(), query)
    assert refit >= 0.97 and refit - as_saved >= MARGIN, (refit, as_saved)
    # what defines the types is the saved model's, bit for bit; the baseline moved with the batch
    assert np.array_equal(refitted.delta.to_numpy(), saved.delta.to_numpy())
    assert np.array_equal(refitted.a, saved.a)
    moved = refitted.beta["beta0"] - saved.beta["beta0"]
    assert np.corrcoef(moved, batches["shift"].loc[moved.index])[0, 1] > 0.95
    assert refitted.reference["sha256"] == hashlib.sha256(batches["model"].read_bytes()).hexdigest()
    assert refitted.train_params["refit"] == "batch" and refitted.restarts.shape[0] == 1


def test_refit_matches_genes_by_symbol_when_the_new_data_are_indexed_by_id(batches):
    query = batches["query"].copy()
    query.var["gene_symbols"] = query.var_names
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    refitted = CellAssign.load(batches["model"]).refit(query, progress=False)
    ids = pd.Series(query.var_names, index=query.var["gene_symbols"].to_numpy())
    assert list(refitted.rho.index) == list(ids.loc[batches["rho"].index])
    assert _accuracy(refitted.predict(), query) >= 0.97


def test_a_covariate_level_the_model_never_saw(batches, tmp_path, caplog):
    """The refit estimates a new level; --refit none warns once, naming it."""
    ref = batches["reference"].copy()
    ref.obs["donor"] = np.where(np.arange(ref.n_obs) % 2, "d1", "d2")
    model = CellAssign(ref, batches["rho"], categorical_covariate_keys=["donor"]).train(max_epochs=50, progress=False)
    path = tmp_path / "donor.model.pt"
    model.save(path)
    query = batches["query"].copy()
    query.obs["donor"] = np.where(np.arange(query.n_obs) % 2, "d1", "d7")
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        as_saved = CellAssign.load(path).predict(query, unseen_levels="reference")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "covariate 'donor'" in warnings[0] and "d7" in warnings[0], warnings
    assert as_saved.shape == (query.n_obs, 6)
    with pytest.raises(InputError, match="levels not seen in training: d7"):
        CellAssign.load(path).predict(query)
    refitted = CellAssign.load(path).refit(query, progress=False)
    assert refitted.design_columns == ["donor[T.d7]"]


# --------------------------------------------------------------------------------------
# The step: cellassign-nf predict, check-model, annotate --model-info; its checks by message
# --------------------------------------------------------------------------------------

def _predict(batches, out: Path, *args: str):
    return CliRunner().invoke(main, ["--quiet", "predict", str(args[0]) if args else str(batches["paths"]["q1"]),
                                     "--model", str(batches["model"]), "-o", str(out / "m.pt"),
                                     "--history", str(out / "h.tsv"), "--probabilities", str(out / "p.tsv"),
                                     "--model-info", str(out / "info.json"), *args[1:]])


def test_predict_refuses_what_it_cannot_use_by_message(batches, tmp_path):
    q1 = batches["paths"]["q1"]
    lacking = ad.read_h5ad(q1)
    lacking = lacking[:, [g for g in lacking.var_names if g not in ("marker_0003", "marker_0007")]].copy()
    lacking.write_h5ad(tmp_path / "lacking.h5ad")
    result = _predict(batches, tmp_path, tmp_path / "lacking.h5ad")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {tmp_path / 'lacking.h5ad'}: lacks 2 of the 60 marker genes of the model "
                                     "reference.model.pt (e.g. marker_0003, marker_0007). Annotate data that measure "
                                     "every marker gene of the model (Ensembl IDs or symbols), or train a new model "
                                     "on these data.")

    not_a_model = tmp_path / "not_a_model.pt"
    not_a_model.write_bytes(b"\x00" * 64)
    result = CliRunner().invoke(main, ["--quiet", "check-model", str(not_a_model), "--panel", str(tmp_path / "p.tsv")])
    assert result.exit_code == 2 and "cannot be read as a cellassign-nf model" in result.output, result.output

    other = batches["rho"].copy()
    other.iloc[0] = 1 - other.iloc[0]
    other_path = tmp_path / "other.csv"
    other.astype(int).to_csv(other_path)
    result = _predict(batches, tmp_path, q1, "--markers", str(other_path))
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith(f"error: {other_path}: is not the panel of the model reference.model.pt (") and \
        "Leave --markers out to use the model's own panel" in line and "\n" not in line, line
    assert not (tmp_path / "p.tsv").exists()  # nothing written


def test_predict_writes_what_train_writes_and_annotate_keeps_the_model(batches, tmp_path):
    q1 = batches["paths"]["q1"]
    result = _predict(batches, tmp_path, q1, "--markers", str(batches["markers"]))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["file"] == "reference.model.pt" and info["refit"] == "batch" and info["panel"] == "markers.csv"
    assert info["sha256"] == hashlib.sha256(batches["model"].read_bytes()).hexdigest()
    assert info["cell_types"] == [*batches["rho"].columns, "other"]  # the saved model's types (train's default)
    assert CellAssign.load(tmp_path / "m.pt").reference["sha256"] == info["sha256"]
    result = CliRunner().invoke(main, ["--quiet", "annotate", str(q1), "-p", str(tmp_path / "p.tsv"),
                                       "--model-info", str(tmp_path / "info.json"), "-o", str(tmp_path / "a.h5ad"),
                                       "--predictions", str(tmp_path / "pred.tsv")])
    assert result.exit_code == 0, result.output
    kept = ad.read_h5ad(tmp_path / "a.h5ad").uns[UNS_KEY][MODEL_INFO_KEY]
    assert kept["sha256"] == info["sha256"] and kept["use"].startswith("saved model reused: baseline beta0")

    result = _predict(batches, tmp_path, q1, "--refit", "none")  # as saved: the model copied, naming its source
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "info.json").read_text())["refit"] == "none"
    copied = CellAssign.load(tmp_path / "m.pt")
    assert copied.reference["sha256"] == info["sha256"]
    assert np.array_equal(copied.beta.to_numpy(), CellAssign.load(batches["model"]).beta.to_numpy())


# --------------------------------------------------------------------------------------
# The pipeline: --model, per-sample mode, no TRAIN task
# --------------------------------------------------------------------------------------

def _sheet(path: Path, samples: dict[str, Path]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample", "counts"])
        writer.writerows([[name, counts] for name, counts in samples.items()])
    return path


RESOURCES = ["--max_cpus", "2", "--max_memory", "6.GB", "--skip_umap"]


@pytest.fixture(scope="module")
def reuse_run(batches, tmp_path_factory, nxf_home):
    launch = tmp_path_factory.mktemp("reuse_run")
    sheet = _sheet(launch / "query.csv", {s: batches["paths"][s] for s in ("q1", "q2")})
    args = ["--input", str(sheet), "--model", str(batches["model"]), *RESOURCES]
    run = run_pipeline(launch, nxf_home, args)
    # the same query with the model as saved: -resume reuses QC, size factors and design
    # (and --rollup false: the pipeline passes a flag that is on by default as --no-rollup)
    none = nextflow(["run", str(Path(__file__).resolve().parents[1]), *args, "--refit", "none", "--rollup", "false",
                     "-resume", "--outdir", "results_none", "-w", "work"], launch, nxf_home)
    assert none.returncode == 0, explain(none)
    return {**run, "none": launch / "results_none"}


def test_pipeline_annotates_new_batches_with_the_saved_model(reuse_run, batches):
    out = reuse_run["outdir"]
    counts = process_counts(trace(out))
    assert "TRAIN" not in counts and counts["PREDICT"] == 2 and counts["CHECK_MODEL"] == 1, counts
    for row in (r for r in trace(out) if r["process"].endswith(":PREDICT")):  # the refit leaves doublets out
        assert f"--doublet-table doublets/{row['tag']}.doublets.tsv" in (Path(row["workdir"]) / ".command.sh").read_text()
    sha = hashlib.sha256(batches["model"].read_bytes()).hexdigest()
    for s in ("q1", "q2"):
        refit, as_saved = accuracy(out / s / f"{s}.annotated.h5ad"), accuracy(reuse_run["none"] / s / f"{s}.annotated.h5ad")
        assert refit >= 0.97 and refit - as_saved >= MARGIN, (s, refit, as_saved)
        info = ad.read_h5ad(out / s / f"{s}.annotated.h5ad", backed="r").uns[UNS_KEY][MODEL_INFO_KEY]
        assert (info["file"], info["sha256"], info["refit"]) == ("reference.model.pt", sha, "batch")
        html = (out / s / "report" / f"{s}.report.html").read_text()
        assert sha in html and "reference.model.pt" in html and "saved model reused" in html
    assert (out / "multiqc" / "multiqc_report.html").is_file()
    assert process_counts(trace(reuse_run["none"]))["PREDICT"] == 2


def test_pipeline_refuses_a_missing_model_before_any_task(batches, tmp_path, nxf_home):
    sheet = _sheet(tmp_path / "query.csv", {"q1": batches["paths"]["q1"]})
    result = nextflow(["run", str(Path(__file__).resolve().parents[1]), "--input", str(sheet), "--model",
                       str(tmp_path / "gone.model.pt"), "--outdir", "results", "-w", "work"], tmp_path, nxf_home)
    line = stopped_before_any_task(result, tmp_path / "work", "Parameter --model")
    assert "gone.model.pt does not exist" in line, line


def test_pipeline_passes_rollup_to_annotate_both_ways(reuse_run):
    """--rollup (on by default) reaches `cellassign-nf annotate` as --rollup, --rollup false as --no-rollup."""
    for outdir, flag in ((reuse_run["outdir"], "--rollup"), (reuse_run["none"], "--no-rollup")):
        rows = [r for r in trace(outdir) if r["process"].endswith(":ANNOTATE")]
        assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows), rows
        for row in rows:
            script = (Path(row["workdir"]) / ".command.sh").read_text().split()
            assert flag in script and ({"--rollup", "--no-rollup"} - {flag}).isdisjoint(script), script
