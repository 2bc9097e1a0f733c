"""The whole pipeline with `-stub`, per sample, in cohort mode and with --model (`-profile test`).

Every module's `stub:` block writes its declared outputs as placeholders, and a versions.yml,
without running `cellassign-nf` or `multiqc` (here both fail if called). So these runs check, in
the time Nextflow takes to start, what the real runs of test_pipeline.py check in minutes: the
DAG (every process runs, once per sample or once per cohort), the channel joins, the publishDir
rules (exactly the files a real run publishes, from a stub's output names) and the workflow's
own Groovy on those outputs (the marker-diagnostics line of each sample, software_versions.yml).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nextflow_helpers import COHORT_TASKS, DEMO_SAMPLES, MODEL_TASKS, PER_SAMPLE_TASKS, REPO, nxf_env, process_counts, \
    run_pipeline, trace

MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))


def _published(mode: str) -> set[str]:
    """The files a run publishes (pipeline_info/ aside), relative to --outdir."""
    per_sample = ["annotated.h5ad", "predictions.tsv", "qc_metrics.tsv", "qc_summary.json", "doublets.tsv",
                  "doublet_summary.json", "marker_diagnostics.tsv", "marker_specificity.tsv"]
    fit = ["model.pt", "model_info.json", "history.tsv", "probabilities.tsv", "design.tsv"]
    files = {"celltype_counts.tsv", "multiqc/multiqc_report.html", "multiqc/multiqc_data/multiqc.log"}
    for s in DEMO_SAMPLES:
        files |= {f"{s}/{s}.{name}" for name in per_sample + (fit if mode != "cohort" else [])}
        files |= {f"{s}/report/{s}.report.html", f"{s}/report/{s}_celltype_counts_mqc.tsv"}
    if mode == "cohort":
        files |= {f"cohort/cohort.{name}" for name in fit}
    return files


@pytest.fixture(scope="module", params=["per_sample", "cohort", "model"])
def stub_run(request, tmp_path_factory, nxf_home):
    mode = request.param
    launch = tmp_path_factory.mktemp(f"stub_{mode}")
    tools = launch / "tools"  # first on PATH: a stub that calls a tool fails
    tools.mkdir()
    for tool in ("cellassign-nf", "multiqc"):
        (tools / tool).write_text(f"#!/bin/sh\necho '{tool} was called in a stub run' >&2\nexit 97\n")
        (tools / tool).chmod(0o755)
    model = launch / "reference.model.pt"  # a stub does not read it
    model.write_bytes(b"stub")
    # Nextflow's local executor counts free CPUs and memory in plain fields that its submitting and
    # monitoring threads both update; a stub task ends within milliseconds of its submission, and
    # a lost update left a run waiting for ever for two CPUs that were free. Room to spare for the
    # executor (the tasks' own requests stay capped by --max_cpus / --max_memory) keeps a lost
    # update from stopping the run.
    headroom = launch / "headroom.config"
    headroom.write_text("executor { $local { cpus = 64; memory = '1 TB' } }\n")
    args = ["--model", str(model)] if mode == "model" else ["--mode", mode]
    run = run_pipeline(launch, nxf_env(nxf_home, extra_path=[tools]),
                       ["-profile", "test", *args, "-stub", "-c", str(headroom)])
    print(f"-stub run, {mode}: {run['result'].wall_s:.1f} s wall")
    return {**run, "mode": mode}


def test_every_module_has_a_stub_that_writes_versions():
    for module in MODULES:
        text = module.read_text()
        stub = text.split("\n    stub:\n", 1)
        assert len(stub) == 2, f"{module.relative_to(REPO)} has no stub: block"
        assert "versions.yml" in stub[1] and "--version" not in stub[1], module


def test_stub_run_runs_every_process_once_per_sample_or_cohort(stub_run):
    rows = trace(stub_run["outdir"])
    expected = {"cohort": COHORT_TASKS, "model": MODEL_TASKS}.get(stub_run["mode"], PER_SAMPLE_TASKS)
    assert process_counts(rows) == expected
    assert {r["status"] for r in rows} == {"COMPLETED"}, [(r["process"], r["status"]) for r in rows]
    modules = {re.search(r"^process\s+(\w+)", m.read_text(), re.M).group(1) for m in MODULES}
    assert set(COHORT_TASKS) | set(MODEL_TASKS) == modules, "a module that no mode runs, or a mode's list lacks one"


def test_stub_run_publishes_what_a_real_run_publishes(stub_run):
    outdir: Path = stub_run["outdir"]
    published = {str(p.relative_to(outdir)) for p in outdir.rglob("*")
                 if p.is_file() and p.relative_to(outdir).parts[0] != "pipeline_info"}
    assert published == _published(stub_run["mode"])
    versions = (outdir / "pipeline_info" / "software_versions.yml").read_text()
    for process in [*process_counts(trace(outdir)), "Workflow", "Nextflow"]:
        assert f"{process}:" in versions, versions
    for s in DEMO_SAMPLES:
        assert f"{s}: marker diagnostics: no warnings" in stub_run["result"].stdout
