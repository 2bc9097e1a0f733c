"""Fault isolation per sample (lib/SetAside.groovy): the pipeline run for real on samplesheets that
mix the demo samples with bad ones.

The bad samples: a truncated .h5ad (a transfer that stopped early), a sample whose genes are named
differently from the panel, and a 15-cell library whose first 10 cells are damaged (~90%
mitochondrial counts; QC warns and 10 cells remain, fewer than --min_cells_fit). Each is set aside
at the step that fails on it; the demo samples run to the end with exactly the outputs of a run
without the bad ones (the session's per_sample_run / cohort_run, tests/conftest.py).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import anndata as ad
import pytest

from nextflow_helpers import (COHORT_ARGS, DEMO_SAMPLES, REPO, explain, md5, nextflow, step, trace)

DEMO = REPO / "assets" / "demo"
BAD = {  # sample -> (the step that sets it aside, words of its reason)
    "truncated": ("qc", "cannot be read as .h5ad"),
    "renamed": ("train", "none of the marker genes is in the data"),
    "damaged": ("train", "10 cells, fewer than min_cells_fit=50"),
}
# the files that must not change when bad samples join the run: per sample, and of the cohort model
COMPARED = ("predictions.tsv", "qc_metrics.tsv", "marker_diagnostics.tsv")
PER_SAMPLE_MODEL = ("probabilities.tsv", "design.tsv")


def _bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = (DEMO / "sample2.h5ad").read_bytes()
    (folder / "truncated.h5ad").write_bytes(data[: len(data) // 2])
    renamed = ad.read_h5ad(DEMO / "sample1.h5ad")
    renamed.var = renamed.var.iloc[:, :0]
    renamed.var_names = [f"gene{i}" for i in range(renamed.n_vars)]
    renamed.write_h5ad(folder / "renamed.h5ad")
    ad.read_h5ad(DEMO / "sample1.h5ad")[:15].copy().write_h5ad(folder / "damaged.h5ad")
    return {name: folder / f"{name}.h5ad" for name in BAD}


def _samplesheet(path: Path, samples: dict[str, Path]) -> Path:
    """A samplesheet like assets/samplesheet_test.csv (same columns, so the demo samples' tasks get
    the same inputs)."""
    runs = {"sample1": "run1", "sample2": "run2"}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample", "counts", "sequencing_run"])
        for name, counts in samples.items():
            writer.writerow([name, counts, runs.get(name, "run3")])
    return path


def _run(launch: Path, nxf_home: Path, sheet: Path, *args: str):
    return nextflow(["run", str(REPO), "-profile", "test", "--input", str(sheet), *args, "--outdir", "results",
                     "-w", "work"], launch, nxf_home)


def _status(outdir: Path) -> dict[str, dict[str, str]]:
    with open(outdir / "pipeline_info" / "samples.tsv", newline="") as fh:
        return {row["sample"]: row for row in csv.DictReader(fh, delimiter="\t")}


def _multiqc_status(outdir: Path) -> dict[str, dict[str, str]]:
    with open(outdir / "multiqc" / "multiqc_data" / "multiqc_cellassign_nf_samples_table.txt", newline="") as fh:
        return {row["Sample"]: row for row in csv.DictReader(fh, delimiter="\t")}


def _same_outputs(outdir: Path, reference: Path, samples, names) -> None:
    for s in samples:
        for name in names:
            assert md5(outdir / s / f"{s}.{name}") == md5(reference / s / f"{s}.{name}"), f"{s}/{s}.{name} differs"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, nxf_home):
    """The demo samples and the three bad ones, per-sample mode: the first run, then -resume with
    --allow_failed_samples after the truncated file was copied again whole."""
    launch = tmp_path_factory.mktemp("mixed")
    bad = _bad_inputs(launch / "data")
    sheet = _samplesheet(launch / "samplesheet.csv", {s: DEMO / f"{s}.h5ad" for s in DEMO_SAMPLES} | bad)
    first = _run(launch, nxf_home, sheet)
    outdir = launch / "results"
    state = {"first": first, "status": _status(outdir), "multiqc": _multiqc_status(outdir),
             "trace": trace(outdir), "html": (outdir / "multiqc" / "multiqc_report.html").read_text(),
             "published": sorted(p.relative_to(outdir).as_posix() for p in outdir.glob("*/**/*") if p.is_file())}
    shutil.copyfile(DEMO / "sample2.h5ad", bad["truncated"])  # fixed: the whole file
    resumed = _run(launch, nxf_home, sheet, "-resume", "--allow_failed_samples")
    return state | {"outdir": outdir, "resumed": resumed, "resumed_status": _status(outdir),
                    "resumed_trace": trace(outdir)}


def test_bad_samples_are_set_aside_with_their_step_and_reason(mixed):
    status = mixed["status"]
    assert list(status) == [*DEMO_SAMPLES, *BAD]  # every sample, in samplesheet order
    for s in DEMO_SAMPLES:
        assert status[s]["status"] == "annotated" and status[s]["reason"] == ""
    for s, (where, words) in BAD.items():
        assert status[s]["status"] == "set aside", status[s]
        assert status[s]["step"] == where
        assert words in status[s]["reason"], status[s]["reason"]
    assert "mitochondrial" in status["damaged"]["qc_warnings"]
    assert all(status[s]["qc_warnings"] == "" for s in DEMO_SAMPLES)


def test_the_run_exits_non_zero_and_ends_with_one_line_per_set_aside_sample(mixed):
    first = mixed["first"]
    assert first.returncode == 1, explain(first)
    last = [line for line in first.stdout.splitlines() if line.strip()][-len(BAD):]
    by_sample = {line.removeprefix("WARN: ").split(":")[0]: line for line in last}  # in the order they failed
    assert set(by_sample) == set(BAD), last
    for s, (where, words) in BAD.items():
        assert f"set aside at {where}: " in by_sample[s] and words in by_sample[s], by_sample[s]
    assert "3 samples set aside" in first.stdout


def test_multiqc_lists_every_sample_and_why(mixed):
    multiqc = mixed["multiqc"]
    assert set(multiqc) == {*DEMO_SAMPLES, *BAD}
    for s, (where, words) in BAD.items():
        assert (multiqc[s]["status"], multiqc[s]["step"]) == ("set aside", where)
        assert words in multiqc[s]["reason"]
    assert "3 of 5 samples were set aside" in mixed["html"]
    # the annotated samples' own sections are there as in a run without the bad ones
    assert all(f"{s}" in mixed["html"] for s in DEMO_SAMPLES)


def test_a_set_aside_sample_runs_no_later_step(mixed):
    failed = {(r["tag"], step(r)) for r in mixed["trace"] if r["status"] == "FAILED"}
    assert failed == {("truncated", "QC"), ("renamed", "TRAIN"), ("damaged", "TRAIN")}
    ran = {(r["tag"], step(r)) for r in mixed["trace"]}
    for s in BAD:
        assert not {x for x in ran if x[0] == s and x[1] in ("ANNOTATE", "DIAGNOSE", "REPORT")}
    published = [p for p in mixed["published"] if p.split("/")[0] in BAD]
    # the files of the steps that finished: QC, the doublets and the design, for the samples set aside at TRAIN
    assert published == sorted(f"{s}/{s}.{name}" for s in ("renamed", "damaged")
                               for name in ("qc_metrics.tsv", "qc_summary.json", "doublets.tsv",
                                            "doublet_summary.json", "design.tsv"))


def test_good_samples_get_the_outputs_of_a_run_without_the_bad_ones(mixed, per_sample_run):
    _same_outputs(mixed["outdir"], per_sample_run["outdir"], DEMO_SAMPLES, COMPARED + PER_SAMPLE_MODEL)


def test_resume_after_fixing_a_file_reruns_only_that_sample_and_the_still_failing_steps(mixed):
    resumed = mixed["resumed"]
    assert resumed.returncode == 0, explain(resumed)  # --allow_failed_samples
    assert "2 samples set aside" in resumed.stdout and "exit status 0 (--allow_failed_samples)" in resumed.stdout
    rows = mixed["resumed_trace"]
    per_sample = [r for r in rows if r["tag"] not in ("-", "")]
    for r in per_sample:
        if r["tag"] in DEMO_SAMPLES:
            assert r["status"] == "CACHED", r
    fixed = {step(r): r["status"] for r in per_sample if r["tag"] == "truncated"}
    assert fixed == dict.fromkeys(["QC", "DOUBLETS", "SIZE_FACTORS", "DESIGN", "TRAIN", "ANNOTATE", "DIAGNOSE",
                                   "REPORT"], "COMPLETED")
    for s in ("renamed", "damaged"):  # their finished steps are reused, the failed one runs again
        assert {step(r): r["status"] for r in per_sample if r["tag"] == s} == {
            "QC": "CACHED", "DOUBLETS": "CACHED", "SIZE_FACTORS": "CACHED", "DESIGN": "CACHED", "TRAIN": "FAILED"}
    status = mixed["resumed_status"]
    assert status["truncated"]["status"] == "annotated"
    assert [s for s, row in status.items() if row["status"] == "set aside"] == ["renamed", "damaged"]
    assert (mixed["outdir"] / "truncated" / "truncated.predictions.tsv").is_file()


def test_cohort_mode_leaves_a_sample_that_fails_qc_out_of_the_merge(tmp_path, nxf_home, cohort_run):
    bad = _bad_inputs(tmp_path / "data")
    sheet = _samplesheet(tmp_path / "samplesheet.csv",
                         {s: DEMO / f"{s}.h5ad" for s in DEMO_SAMPLES} | {"truncated": bad["truncated"]})
    result = _run(tmp_path, nxf_home, sheet, *COHORT_ARGS)
    assert result.returncode == 1, explain(result)
    status = _status(tmp_path / "results")
    assert {s: row["status"] for s, row in status.items()} == {"sample1": "annotated", "sample2": "annotated",
                                                               "truncated": "set aside"}
    assert status["truncated"]["step"] == "qc"
    merged = [r for r in trace(tmp_path / "results") if step(r) == "MERGE"]
    assert [r["status"] for r in merged] == ["COMPLETED"]
    _same_outputs(tmp_path / "results", cohort_run["outdir"], DEMO_SAMPLES, COMPARED)
    _same_outputs(tmp_path / "results", cohort_run["outdir"], ["cohort"], PER_SAMPLE_MODEL)
