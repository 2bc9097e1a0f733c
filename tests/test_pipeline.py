"""The Nextflow pipeline, run for real through scripts/nextflow on CPU.

One per-sample run of `-profile test` (two demo samples), the same run again with
-resume, and one cohort-mode run happen once per session (session-scoped fixtures);
the tests read their outputs. Bad samplesheets, the resolved configs of the gpu /
awsbatch profiles and the container recipes are checked without running any step.
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from nextflow_helpers import (COHORT_TASKS, DEMO_SAMPLES as SAMPLES, NEXTFLOW, PER_SAMPLE_TASKS, REPO, accuracy,
                              explain, flat_config, md5, nextflow, nxf_env, process_counts, run_pipeline,
                              stopped_before_any_task, task_dirs, trace)


# --------------------------------------------------------------------------------------
# Session fixtures: the real runs, once each (per_sample_run and cohort_run: tests/conftest.py)
# --------------------------------------------------------------------------------------

def _sample_outputs(outdir: Path) -> dict[Path, str]:
    """The md5 of every published per-sample file <sample>/<sample>.*."""
    return {p.relative_to(outdir): md5(p) for s in SAMPLES for p in (outdir / s).glob(f"{s}.*") if p.is_file()}


@pytest.fixture(scope="session")
def resumed_run(per_sample_run, nxf_home):
    before = _sample_outputs(per_sample_run["outdir"])
    result = run_pipeline(per_sample_run["launch"], nxf_home, ["-profile", "test", "-resume"])["result"]
    return {"result": result, "before": before, "after": _sample_outputs(per_sample_run["outdir"])}


# --------------------------------------------------------------------------------------
# (a) per-sample mode
# --------------------------------------------------------------------------------------

def test_per_sample_run_writes_every_output(per_sample_run):
    out = per_sample_run["outdir"]
    for s in SAMPLES:
        for name in [f"{s}.annotated.h5ad", f"{s}.predictions.tsv", f"{s}.model.pt", f"{s}.history.tsv",
                     f"{s}.probabilities.tsv", f"{s}.design.tsv", f"{s}.qc_metrics.tsv", f"{s}.qc_summary.json",
                     f"{s}.marker_diagnostics.tsv", f"{s}.marker_specificity.tsv", f"report/{s}.report.html"]:
            path = out / s / name
            assert path.is_file() and path.stat().st_size > 0, f"missing output {path}"
        assert list((out / s / "report").glob(f"{s}_*_mqc.*")), f"no MultiQC files from the report of {s}"
        assert not list((out / s).glob("versions.yml"))
    assert (out / "multiqc" / "multiqc_report.html").is_file()
    assert (out / "celltype_counts.tsv").is_file()
    counts = (out / "celltype_counts.tsv").read_text()
    assert all(s in counts for s in SAMPLES), counts
    info = out / "pipeline_info"
    for pattern in ["execution_report_*.html", "execution_timeline_*.html", "execution_trace_*.txt"]:
        assert list(info.glob(pattern)), f"no {pattern} in {info}"
    versions = (info / "software_versions.yml").read_text()
    for tool in ["cellassign-nf", "multiqc", "Nextflow", "TRAIN", "QC"]:
        assert tool in versions, versions
    assert re.search(rf"multiqc: '?{re.escape(metadata.version('multiqc'))}'?\n", versions), versions  # MultiQC's own data


def test_marker_diagnostics_reach_every_sample_report_and_multiqc(per_sample_run):
    """DIAGNOSE per sample: its TSVs are published, the report has the section, and MultiQC's
    General Statistics has the warnings column (0 on the demo with its own panel)."""
    out = per_sample_run["outdir"]
    for s in SAMPLES:
        header = (out / s / f"{s}.marker_diagnostics.tsv").read_text().splitlines()[0]
        assert header == "level\tname\tflag\tseverity\tmessage\tmarkers\tcandidates", header
        spec = (out / s / f"{s}.marker_specificity.tsv").read_text().splitlines()
        assert spec[0].split("\t")[0] == "cell_type" and len(spec) == 5, spec  # the demo's 4 types
        html = (out / s / "report" / f"{s}.report.html").read_text()
        assert 'id="marker-diagnostics"' in html and "No marker problems found" in html
        assert f"{s}: marker diagnostics: no warnings" in per_sample_run["result"].stdout  # the terminal line
    stats = (out / "multiqc" / "multiqc_data" / "multiqc_general_stats.txt").read_text().splitlines()
    column = next(i for i, c in enumerate(stats[0].split("\t")) if "marker_warnings" in c)
    assert sorted(row.split("\t")[column] for row in stats[1:]) == ["0", "0"] or \
        sorted(float(row.split("\t")[column]) for row in stats[1:]) == [0.0, 0.0], stats


def test_doublets_of_each_sample_reach_train_annotate_reports_and_the_status(per_sample_run):
    """DOUBLETS per sample: its table and summary are published, TRAIN leaves the predicted doublets
    out, ANNOTATE labels them, and the rate reaches the terminal, samples.tsv and MultiQC."""
    import csv
    import json

    import anndata as ad
    import pandas as pd

    from cellassign_nf.keys import CELLTYPE_KEY, DOUBLET, PREDICTED_DOUBLET_KEY

    out = per_sample_run["outdir"]
    rows = trace(out)
    with open(out / "pipeline_info" / "samples.tsv", newline="") as fh:
        status = {row["sample"]: row for row in csv.DictReader(fh, delimiter="\t")}
    for s in SAMPLES:
        summary = json.loads((out / s / f"{s}.doublet_summary.json").read_text())
        table = pd.read_csv(out / s / f"{s}.doublets.tsv", sep="\t", index_col=0)
        assert summary["method"] == "scrublet" and summary["n_doublets"] == table[PREDICTED_DOUBLET_KEY].sum()
        train = next(r for r in rows if r["process"].endswith(":TRAIN") and r["tag"] == s)
        assert f"--doublet-table doublets/{s}.doublets.tsv" in (Path(train["workdir"]) / ".command.sh").read_text()
        obs = ad.read_h5ad(out / s / f"{s}.annotated.h5ad", backed="r").obs
        assert obs[PREDICTED_DOUBLET_KEY].tolist() == table.loc[obs.index, PREDICTED_DOUBLET_KEY].tolist()
        assert ((obs[CELLTYPE_KEY].astype(str) == DOUBLET) == obs[PREDICTED_DOUBLET_KEY]).all()
        assert status[s]["doublets"] == summary["rate_text"]
        assert f"{s}: doublets: {summary['note']}" in per_sample_run["result"].stdout
        assert 'id="doublets"' in (out / s / "report" / f"{s}.report.html").read_text()
    stats = (out / "multiqc" / "multiqc_data" / "multiqc_general_stats.txt").read_text().splitlines()
    assert any("pct_doublets" in c for c in stats[0].split("\t")), stats[0]


def test_per_sample_run_carries_the_panels_cell_ontology_terms(per_sample_run):
    """CHECK_PANEL publishes the panel with its terms; every sample's outputs carry each cell's term."""
    import anndata as ad
    import pandas as pd

    from cellassign_nf.keys import ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY
    from cellassign_nf.markers import read_panel

    out = per_sample_run["outdir"]
    terms = read_panel(REPO / "assets" / "demo" / "markers.csv").ontology
    listing = (out / "pipeline_info" / "markers.panel.txt").read_text().splitlines()
    assert "NK cell [CL:0000623]:CD2,NKG7,GNLY,KLRD1" in listing, listing
    for s in SAMPLES:
        obs = ad.read_h5ad(out / s / f"{s}.annotated.h5ad", backed="r").obs
        at_type = (obs["cellassign_level"].astype(str) != "ancestor").to_numpy()  # rolled up: tests/test_rollup.py
        assert obs[ONTOLOGY_ID_KEY].astype(str)[at_type].equals(
            obs["cellassign_celltype"].astype(str).map(terms).fillna("unknown")[at_type])
        predictions = pd.read_csv(out / s / f"{s}.predictions.tsv", sep="\t", index_col=0)
        assert set(zip(predictions[ONTOLOGY_ID_KEY], predictions[ONTOLOGY_LABEL_KEY])) >= {
            ("CL:0000084", "T cell"), ("CL:0000623", "natural killer cell")}
        assert "CL:0000576" in (out / s / "report" / f"{s}.report.html").read_text()


def test_per_sample_run_one_task_per_sample_and_step(per_sample_run):
    counts = process_counts(trace(per_sample_run["outdir"]))
    assert counts == PER_SAMPLE_TASKS, counts


def test_per_sample_run_uses_covariates_and_cpu(per_sample_run):
    out = per_sample_run["outdir"]
    header = (out / "sample1" / "sample1.design.tsv").read_text().splitlines()[0].split("\t")
    assert header[0] == "cell" and any("batch" in c for c in header[1:]), header
    train = [r for r in trace(out) if r["process"].endswith(":TRAIN")]
    script = (Path(train[0]["workdir"]) / ".command.sh").read_text()
    assert "--device auto" in script and "--max-epochs 60" in script, script
    assert f"--threads {train[0]['cpus']}" in script, script
    assert "--other" in script.split() and "--no-other" not in script, script  # on by default


def test_other_on_by_default_and_off_with_other_false(per_sample_run, cohort_run):
    """params.other (true) reaches TRAIN as --other and its model has the type; --other false (the
    cohort run) reaches it as --no-other and the probabilities have the panel's types only."""
    import pandas as pd

    from cellassign_nf.markers import read_panel

    types = list(read_panel(REPO / "assets" / "demo" / "markers.csv").rho.columns)
    for run, flag, expected in ((per_sample_run, "--other", [*types, "other"]), (cohort_run, "--no-other", types)):
        train = [r for r in trace(run["outdir"]) if r["process"].endswith(":TRAIN")]
        for row in train:
            script = (Path(row["workdir"]) / ".command.sh").read_text().split()
            assert flag in script and ({"--other", "--no-other"} - {flag}).isdisjoint(script), script
        for probabilities in run["outdir"].glob("*/*.predictions.tsv"):
            columns = list(pd.read_csv(probabilities, sep="\t", index_col=0, nrows=1).columns)
            assert columns[-len(expected):] == expected, (probabilities, columns)


@pytest.mark.parametrize("sample", SAMPLES)
def test_per_sample_annotations_match_truth(per_sample_run, sample):
    agree = accuracy(per_sample_run["outdir"] / sample / f"{sample}.annotated.h5ad")
    assert agree >= 0.90, f"{sample}: {agree:.3f} of cells agree with obs['true_celltype']"


def test_default_qc_removes_the_damaged_demo_cells(per_sample_run):
    """Data-driven QC by default: the 10 mostly-mitochondrial cells of each demo sample are removed."""
    import json

    import anndata as ad

    out = per_sample_run["outdir"]
    qc = [r for r in trace(out) if r["process"].endswith(":QC")]
    script = (Path(qc[0]["workdir"]) / ".command.sh").read_text()
    assert "--nmads 5" in script and "--nmads-mito 5" in script, script
    for s in SAMPLES:
        summary = json.loads((out / s / f"{s}.qc_summary.json").read_text())
        assert summary["removed"]["outlier_mito"] >= 10 and "MADs" in summary["rules"]["outlier_mito"], summary
        kept = set(ad.read_h5ad(out / s / f"{s}.annotated.h5ad").obs_names)
        assert not {f"{s}_cell{i:06d}" for i in range(10)} & kept


def test_samplesheet_columns_become_obs(per_sample_run):
    import anndata as ad

    runs = {"sample1": "run1", "sample2": "run2"}  # the sequencing_run column of the test samplesheet
    for sample, run in runs.items():
        obs = ad.read_h5ad(per_sample_run["outdir"] / sample / f"{sample}.annotated.h5ad").obs
        assert set(obs["sequencing_run"].astype(str)) == {run}


# --------------------------------------------------------------------------------------
# (b) -resume: everything cached, same outputs
# --------------------------------------------------------------------------------------

def test_resume_caches_every_task(per_sample_run, resumed_run):
    rows = trace(per_sample_run["outdir"], newest=True)
    statuses = {row["status"] for row in rows}
    assert statuses == {"CACHED"}, [(r["process"], r["tag"], r["status"]) for r in rows]
    assert process_counts(rows) == process_counts(trace(per_sample_run["outdir"], newest=False))
    log = resumed_run["result"].stdout
    assert "Cached process" in log or "cached:" in log.lower(), log[-3000:]


def test_resume_gives_the_same_outputs(resumed_run):
    assert resumed_run["before"], "no per-sample outputs before the resumed run"
    assert resumed_run["after"] == resumed_run["before"]


# --------------------------------------------------------------------------------------
# (c) cohort mode: one model over both samples, sample in the design
# --------------------------------------------------------------------------------------

def test_cohort_run_fits_one_model(cohort_run):
    out = cohort_run["outdir"]
    counts = process_counts(trace(out))
    assert counts == COHORT_TASKS, counts
    for name in ["cohort.model.pt", "cohort.history.tsv", "cohort.probabilities.tsv", "cohort.design.tsv"]:
        assert (out / "cohort" / name).is_file(), f"missing {out / 'cohort' / name}"
    header = (out / "cohort" / "cohort.design.tsv").read_text().splitlines()[0].split("\t")
    assert any("sample" in c for c in header[1:]), f"sample is not in the cohort design: {header}"
    assert any("batch" in c for c in header[1:]), f"batch is not in the cohort design: {header}"
    for s in SAMPLES:
        assert (out / s / f"{s}.annotated.h5ad").is_file()
        assert (out / s / f"{s}.predictions.tsv").is_file()
        assert (out / s / f"{s}.marker_diagnostics.tsv").is_file()
        assert (out / s / "report" / f"{s}.report.html").is_file()
        assert not (out / s / f"{s}.model.pt").exists()
    assert (out / "multiqc" / "multiqc_report.html").is_file()


def test_cohort_run_annotates_each_sample_from_the_cohort_model(cohort_run):
    out = cohort_run["outdir"]
    qc = [r for r in trace(out) if r["process"].endswith(":QC")]
    assert "--layer 'X'" in (Path(qc[0]["workdir"]) / ".command.sh").read_text()
    train = [r for r in trace(out) if r["process"].endswith(":TRAIN")]
    assert "--layer" not in (Path(train[0]["workdir"]) / ".command.sh").read_text()  # QC moved the counts to X
    train_script = (Path(train[0]["workdir"]) / ".command.sh").read_text()
    # every sample's doublets, found in that sample alone before the merge
    assert all(f"--doublet-table doublets/{s}.doublets.tsv" in train_script for s in SAMPLES), train_script
    annotate = [r for r in trace(out) if r["process"].endswith(":ANNOTATE")]
    for row in annotate:
        script = (Path(row["workdir"]) / ".command.sh").read_text()
        assert f"--sample {row['tag']}" in script and "cohort.probabilities.tsv" in script, script
        assert f"--doublet-table {row['tag']}.doublets.tsv" in script, script
    for s in SAMPLES:
        agree = accuracy(out / s / f"{s}.annotated.h5ad")
        assert agree >= 0.90, f"cohort mode, {s}: {agree:.3f} agree with obs['true_celltype']"


# --------------------------------------------------------------------------------------
# (d) bad samplesheets: one clear message, non-zero exit, no task started
# --------------------------------------------------------------------------------------

BAD_SHEETS = {
    "missing_file": ("sample,counts\ns1,s1.h5ad\ns2,does_not_exist.h5ad\n", ["line 3", "does_not_exist.h5ad", "does not exist"]),
    "duplicate_sample": ("sample,counts\ns1,s1.h5ad\ns1,s1.h5ad\n", ["line 3", "duplicate sample 's1'", "line 2"]),
    "missing_column": ("sample,count\ns1,s1.h5ad\n", ["line 1", "missing column 'counts'"]),
    "unknown_column": ("sample,counts\ns1,s1.h5ad,extra\n", ["line 2", "unknown column"]),
    "empty": ("", ["empty"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SHEETS))
def test_bad_samplesheet_stops_before_any_task(tmp_path, nxf_home, case):
    text, expected = BAD_SHEETS[case]
    (tmp_path / "s1.h5ad").write_bytes((REPO / "assets" / "demo" / "sample1.h5ad").read_bytes())
    sheet = tmp_path / f"{case}.csv"
    sheet.write_text(text)
    result = nextflow(["run", str(REPO), "--input", str(sheet), "--markers", str(REPO / "assets/demo/markers.csv"),
                       "--outdir", "results", "-w", "work"], tmp_path, nxf_home)
    message = stopped_before_any_task(result, tmp_path / "work", str(sheet))
    for fragment in expected:
        assert fragment in message, message


def test_bad_parameter_stops_before_any_task(tmp_path, nxf_home):
    result = nextflow(["run", str(REPO), "-profile", "test", "--mode", "everything", "--outdir", "results",
                       "-w", "work"], tmp_path, nxf_home)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Parameter --mode: 'everything' is not one of per_sample, cohort" in output, output
    assert task_dirs(tmp_path / "work") == []


# --------------------------------------------------------------------------------------
# (e) profiles: TRAIN on the GPU queue with one GPU, everything else on the CPU queue
# --------------------------------------------------------------------------------------

def _gpu_processes() -> list[str]:
    found = []
    for module in sorted((REPO / "modules" / "local").glob("*/main.nf")):
        text = module.read_text()
        if re.search(r"^\s*label\s+'process_gpu'", text, re.M):
            found.append(re.search(r"^process\s+(\w+)", text, re.M).group(1))
    return found


def test_awsbatch_gpu_profile_sends_train_to_the_gpu_queue(tmp_path, nxf_home):
    assert _gpu_processes() == ["PREDICT", "TRAIN"]  # the fit: training, or the refit of a saved model (--model)
    config = flat_config("awsbatch,gpu", tmp_path, nxf_home)
    assert config["process.executor"] == "'awsbatch'"
    assert config["process.queue"] == "'cellassign-cpu'"
    assert config["process.'withLabel:process_gpu'.queue"] == "'cellassign-gpu'"
    assert config["process.'withLabel:process_gpu'.accelerator"] == "1"
    # one image for every step, TRAIN on a GPU included (its torch wheel carries the CUDA runtime)
    assert "process.'withLabel:process_gpu'.container" not in config
    assert config["process.container"] == "'cellassign-nf:0.1.0'"
    assert config["params.device"] == "'cuda'"
    assert config["aws.region"] == "'us-east-1'"
    assert "aws.batch.cliPath" in config
    # no other selector changes the queue or asks for a GPU
    others = [k for k in config if (k.endswith(".queue") or k.endswith(".accelerator"))
              and k not in ("process.queue", "process.'withLabel:process_gpu'.queue",
                            "process.'withLabel:process_gpu'.accelerator")]
    assert others == [], others


def test_awsbatch_without_gpu_keeps_train_on_cpu(tmp_path, nxf_home):
    config = flat_config("awsbatch", tmp_path, nxf_home)
    assert config["process.executor"] == "'awsbatch'"
    assert config["process.queue"] == "'cellassign-cpu'"
    assert not any("accelerator" in k for k in config)
    assert not any(k.startswith("process.'withLabel:process_gpu'.queue") for k in config)
    assert config["params.device"] == "'auto'"


def test_docker_gpu_profile_gives_train_a_gpu(tmp_path, nxf_home):
    config = flat_config("docker,gpu", tmp_path, nxf_home)
    assert config["docker.enabled"] == "true"
    assert config["process.'withLabel:process_gpu'.accelerator"] == "1"
    assert "process.'withLabel:process_gpu'.container" not in config
    options = config["process.'withLabel:process_gpu'.containerOptions"]
    assert "--gpus all" in options and "--nv" in options, options
    assert "process.executor" not in config  # local executor
    apptainer = flat_config("apptainer,gpu", tmp_path, nxf_home)
    assert apptainer["apptainer.enabled"] == "true"
    assert apptainer["process.'withLabel:process_gpu'.accelerator"] == "1"


def test_default_and_test_profiles_need_no_gpu_or_container(tmp_path, nxf_home):
    config = flat_config("test", tmp_path, nxf_home)
    assert not any("accelerator" in k for k in config)
    assert not any(k in config for k in ("docker.enabled", "singularity.enabled", "apptainer.enabled"))
    assert config["params.device"] == "'auto'"
    assert config["process.resourceLimits"].startswith("[cpus:2")


# --------------------------------------------------------------------------------------
# (f) containers install exactly what CI installs
# --------------------------------------------------------------------------------------

def _ci_requirement_files() -> set[str]:
    ci = REPO / ".ci" / "run"
    if ci.is_file():
        files = set(re.findall(r"-r\s+\"?([\w./${}-]*requirements[\w.-]*\.txt)", ci.read_text()))
        files = {Path(f.replace("${REPO}/", "").replace("$REPO/", "")).name if "/" in f else f for f in files}
        if files:
            return files
    # .ci/run names no requirements file (scripts/setup installs one): requirements.txt says it is the one
    assert "CI" in (REPO / "requirements.txt").read_text().splitlines()[0]
    return {"requirements.txt"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile"])
def test_containers_install_the_ci_requirements(dockerfile):
    text = (REPO / "containers" / dockerfile).read_text()
    runs = " ".join(line for line in re.sub(r"\\\n", " ", text).splitlines() if line.startswith("RUN"))
    installed = set(re.findall(r"pip install[^&;]*?-r\s+(\S+)", runs))
    assert installed == _ci_requirement_files(), installed
    for name in installed:
        assert re.search(rf"^COPY\s+.*\b{re.escape(name)}\b", text, re.M), f"{name} is not copied into the image"
        assert (REPO / name).is_file()
    assert re.search(r"pip install --no-deps \.", runs), "the package is not installed with --no-deps"
    # nothing else gets pip-installed on top of the pinned set
    for command in re.findall(r"pip install ([^&;]*)", runs):
        assert command.strip().startswith(("-r ", "--no-deps .", "--upgrade pip")), command
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    # a Debian bookworm root (python3 3.11, the version requirements.txt is pinned with)
    arg = re.search(r"^ARG BASE=(\S+)", text, re.M).group(1)
    assert base == "${BASE}" and arg.startswith("debian:bookworm"), arg
    assert not (REPO / "containers" / "Dockerfile.cuda").exists()


def test_profiles_use_the_images_of_this_version():
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    config = (REPO / "nextflow.config").read_text()
    assert re.search(rf"^\s*version\s*=\s*'{re.escape(version)}'", config, re.M), "manifest.version != pyproject version"
    # the name scripts/build-images tags the image with (tests/test_docker.py builds and runs it)
    assert 'container_image       = "cellassign-nf:${manifest.version}"' in config
    assert "container_image_cuda" not in config


# --------------------------------------------------------------------------------------
# scripts/nextflow: pinned release, cached classpath
# --------------------------------------------------------------------------------------

def test_scripts_nextflow_uses_the_pinned_release_and_a_cached_classpath(tmp_path, nxf_home):
    env = nxf_env(nxf_home, CELLASSIGN_NXF_PINNED="1")
    first = nextflow(["-version"], tmp_path, env)
    assert first.returncode == 0, explain(first)
    pinned = re.search(r'^NXF_PINNED_VERSION="([^"]+)"', NEXTFLOW.read_text(), re.M).group(1)
    assert f"version {pinned}" in first.stdout
    classpath = REPO / ".nextflow-dist" / pinned / "classpath.txt"
    assert classpath.is_file()
    second = nextflow(["-version"], tmp_path, env)
    assert second.returncode == 0 and f"version {pinned}" in second.stdout
    assert "resolving" not in second.stderr  # the second start resolves nothing through Maven
