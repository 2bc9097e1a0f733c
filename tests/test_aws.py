"""The `awsbatch` profile, for real, against a local AWS Batch + S3 emulator (scripts/local-aws).

A session fixture runs `scripts/local-aws start` (the Docker daemon when none answers, moto's
server on 127.0.0.1 with a bucket, a compute environment and the queues cellassign-cpu and
cellassign-gpu, the nf-amazon plugin built from source into this session's NXF_HOME, the AWS CLI
wrapper of the jobs, the job image) and `scripts/local-aws stop` at the end (by the pids it
recorded). Then `-profile test,awsbatch,gpu,local_aws --device cpu -work-dir s3://…` runs, with every
task a Batch job run by the emulator as a Docker container that stages its files through S3:

* per sample, to the end; then the same with -resume, which must rerun nothing;
* with `--model` (the model the first run published, a local file staged through S3), resumed from
  the same work dir: PREDICT instead of TRAIN, on the GPU queue;
* in cohort mode with a third sample whose file is truncated, resumed from the per-sample run's work
  dir (the demo samples' QC and doublet jobs are the same tasks, cached: this keeps the test short):
  the bad sample is set aside at QC as locally (its exit code and reason read back from S3), the run
  ends as the local one does (exit 1, the two demo samples annotated).

Every task must be a Batch job that the emulator reports SUCCEEDED (or FAILED, the set-aside
sample's QC), read back from the emulator's API by the trace's native ids; TRAIN and PREDICT go to
the GPU queue with a GPU requirement, every other step to the CPU queue without one; each job's memory and
CPUs are the task's request. --device cpu: the emulated GPU instance has no GPU (the emulator
records GPU requirements, it does not enforce them).

The plugin source: $CELLASSIGN_NF_AMAZON_SRC (.ci/run sets it), else a clone of the upstream tag.
If no Docker daemon answers and dockerd cannot be started, the tests fail with the script's error.
"""
from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from nextflow_helpers import (COHORT_TASKS, DEMO_SAMPLES, MODEL_TASKS, PER_SAMPLE_TASKS, REPO, explain,
                              nextflow, nxf_env, process_counts, step, trace)

LOCAL_AWS = REPO / "scripts" / "local-aws"
START_TIMEOUT = 3600  # s; a cold start builds the job image, the plugin and two Python environments
DEMO = REPO / "assets" / "demo"
PROFILE = "test,awsbatch,gpu,local_aws"
GPU_STEPS = {"TRAIN", "PREDICT"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory, nxf_home):
    """scripts/local-aws start … stop; the environment its `env` prints, and a boto3 Batch client."""
    state = tmp_path_factory.mktemp("local_aws")
    env = os.environ.copy()
    env.update(CELLASSIGN_AWS_DIR=str(state), CELLASSIGN_AWS_PORT=str(_free_port()), NXF_HOME=str(nxf_home))
    try:
        start = subprocess.run([str(LOCAL_AWS), "start"], env=env, capture_output=True, text=True,
                               timeout=START_TIMEOUT, check=False)
        assert start.returncode == 0, explain(start)
        printed = subprocess.run([str(LOCAL_AWS), "env"], env=env, capture_output=True, text=True, timeout=60,
                                 check=True).stdout
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", printed, re.M))
        import boto3
        batch = boto3.client("batch", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_REGION"],
                             aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                             aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        s3 = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_REGION"],
                          aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        yield {"exports": exports, "batch": batch, "s3": s3, "state": state}
    finally:
        stop = subprocess.run([str(LOCAL_AWS), "stop"], env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        print(stop.stderr)


def _run(local_aws, nxf_home, launch: Path, name: str, *args: str, outdir: str = "results") -> subprocess.CompletedProcess:
    env = nxf_env(nxf_home, **local_aws["exports"])
    result = nextflow(["run", str(REPO), "-profile", PROFILE, "--device", "cpu",
                       "-work-dir", f"{local_aws['exports']['LOCAL_AWS_WORK_DIR']}/{name}", *args,
                       "--outdir", outdir], launch, env)
    print(f"-profile {PROFILE} {' '.join(args)}: {result.wall_s:.0f} s wall")  # type: ignore[attr-defined]
    return result


def _jobs(local_aws, rows) -> dict[str, dict]:
    """The emulator's description of each trace row's job, by the row's native id."""
    ids = [r["native_id"] for r in rows]
    assert all(ids), rows
    jobs = {}
    for i in range(0, len(ids), 100):
        for job in local_aws["batch"].describe_jobs(jobs=ids[i:i + 100])["jobs"]:
            jobs[job["jobId"]] = job
    assert set(jobs) == set(ids), f"jobs the emulator does not know: {set(ids) - set(jobs)}"
    return jobs


def _queue_names(local_aws) -> dict[str, str]:
    return {q["jobQueueArn"]: q["jobQueueName"] for q in local_aws["batch"].describe_job_queues()["jobQueues"]}


def _status(outdir: Path) -> dict[str, dict[str, str]]:
    with open(outdir / "pipeline_info" / "samples.tsv", newline="") as fh:
        return {row["sample"]: row for row in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="session")
def aws_per_sample(tmp_path_factory, nxf_home, local_aws):
    launch = tmp_path_factory.mktemp("aws_per_sample")
    first = _run(local_aws, nxf_home, launch, "per_sample")
    assert first.returncode == 0, explain(first)
    rows = trace(launch / "results")
    jobs_before = {j["jobId"] for q in ("cellassign-cpu", "cellassign-gpu")
                   for j in local_aws["batch"].list_jobs(jobQueue=q, filters=[{"name": "JOB_NAME", "values": ["*"]}])
                   ["jobSummaryList"]}
    resumed = _run(local_aws, nxf_home, launch, "per_sample", "-resume")
    return {"launch": launch, "outdir": launch / "results", "first": first, "trace": rows,
            "jobs": _jobs(local_aws, rows), "resumed": resumed, "jobs_before_resume": jobs_before}


@pytest.fixture(scope="session")
def aws_model(aws_per_sample, nxf_home, local_aws):
    """Per sample with --model (sample1's published model, a local file), resumed from the per-sample
    run's S3 work dir: QC to DESIGN are its jobs; CHECK_MODEL, PREDICT and what follows run now."""
    launch = aws_per_sample["launch"]
    model = launch / "sample1.model.pt"
    model.write_bytes((aws_per_sample["outdir"] / "sample1" / "sample1.model.pt").read_bytes())
    result = _run(local_aws, nxf_home, launch, "per_sample", "--model", str(model), "-resume",
                  outdir="results_model")
    rows = trace(launch / "results_model")
    return {"outdir": launch / "results_model", "result": result, "trace": rows, "jobs": _jobs(local_aws, rows)}


@pytest.fixture(scope="session")
def aws_cohort_bad(aws_per_sample, nxf_home, local_aws):
    """Cohort mode with the demo samples and a truncated third one, resumed from the per-sample run's
    S3 work dir (the demo samples' QC and doublet jobs are cached: the same tasks; the rest is new)."""
    launch = aws_per_sample["launch"]
    data = (DEMO / "sample2.h5ad").read_bytes()
    (launch / "truncated.h5ad").write_bytes(data[: len(data) // 2])
    sheet = launch / "samplesheet.csv"
    with open(sheet, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample", "counts", "sequencing_run"])
        writer.writerows([["sample1", DEMO / "sample1.h5ad", "run1"], ["sample2", DEMO / "sample2.h5ad", "run2"],
                          ["truncated", launch / "truncated.h5ad", "run3"]])
    result = _run(local_aws, nxf_home, launch, "per_sample", "--input", str(sheet), "--mode", "cohort", "-resume",
                  outdir="results_cohort")
    rows = trace(launch / "results_cohort")
    return {"launch": launch, "outdir": launch / "results_cohort", "result": result, "trace": rows,
            "jobs": _jobs(local_aws, rows)}


# --------------------------------------------------------------------------------------
# Per sample
# --------------------------------------------------------------------------------------

def test_per_sample_run_ends_with_every_task_a_batch_job_that_succeeded(aws_per_sample):
    rows = aws_per_sample["trace"]
    assert process_counts(rows) == PER_SAMPLE_TASKS
    assert all(r["status"] == "COMPLETED" and r["workdir"].startswith("s3://") for r in rows), rows
    jobs = aws_per_sample["jobs"]
    assert {j["status"] for j in jobs.values()} == {"SUCCEEDED"}, {j["jobName"]: j["status"] for j in jobs.values()}
    assert all(j["container"]["command"] for j in jobs.values())


def test_train_goes_to_the_gpu_queue_with_a_gpu_and_nothing_else_does(aws_per_sample, local_aws):
    queues = _queue_names(local_aws)
    for row in aws_per_sample["trace"]:
        job = aws_per_sample["jobs"][row["native_id"]]
        requirements = {r["type"]: r["value"] for r in job["container"]["resourceRequirements"]}
        if step(row) in GPU_STEPS:
            assert (queues[job["jobQueue"]], requirements.get("GPU")) == ("cellassign-gpu", "1"), (row["name"], job)
        else:
            assert queues[job["jobQueue"]] == "cellassign-cpu" and "GPU" not in requirements, (row["name"], job)


def test_each_job_asks_for_the_tasks_cpus_and_memory(aws_per_sample):
    units = {"MB": 1, "GB": 1024}
    for row in aws_per_sample["trace"]:
        job = aws_per_sample["jobs"][row["native_id"]]
        requirements = {r["type"]: r["value"] for r in job["container"]["resourceRequirements"]}
        amount, unit = row["memory"].split()
        assert requirements["VCPU"] == row["cpus"], (row["name"], requirements)
        # the trace prints memory rounded (a task sized from its input asks for e.g. 1026 MB: "1 GB")
        assert abs(int(requirements["MEMORY"]) - float(amount) * units[unit]) <= 0.01 * float(amount) * units[unit], \
            (row["name"], row["memory"], requirements)


def test_per_sample_outputs_are_published_from_s3(aws_per_sample):
    outdir = aws_per_sample["outdir"]
    for s in DEMO_SAMPLES:
        for name in (f"{s}.annotated.h5ad", f"{s}.predictions.tsv", f"{s}.model.pt", f"report/{s}.report.html"):
            assert (outdir / s / name).stat().st_size > 0, f"{s}/{name}"
    assert (outdir / "multiqc" / "multiqc_report.html").stat().st_size > 0
    assert {r["status"] for r in _status(outdir).values()} == {"annotated"}


def test_resume_from_the_s3_work_dir_reruns_nothing(aws_per_sample, local_aws):
    resumed = aws_per_sample["resumed"]
    assert resumed.returncode == 0, explain(resumed)
    rows = trace(aws_per_sample["outdir"])
    assert process_counts(rows) == PER_SAMPLE_TASKS
    assert {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]
    after = {j["jobId"] for q in ("cellassign-cpu", "cellassign-gpu")
             for j in local_aws["batch"].list_jobs(jobQueue=q, filters=[{"name": "JOB_NAME", "values": ["*"]}])
             ["jobSummaryList"]}
    assert after == aws_per_sample["jobs_before_resume"]


# --------------------------------------------------------------------------------------
# With --model: PREDICT on the GPU queue
# --------------------------------------------------------------------------------------

def test_model_run_predicts_on_the_gpu_queue_with_a_gpu(aws_model, local_aws):
    result = aws_model["result"]
    assert result.returncode == 0, explain(result)
    rows = aws_model["trace"]
    assert process_counts(rows) == MODEL_TASKS
    assert {(r["tag"], step(r)) for r in rows if r["status"] == "CACHED"} == \
        {(s, p) for s in DEMO_SAMPLES for p in ("QC", "DOUBLETS", "SIZE_FACTORS", "DESIGN")}
    queues = _queue_names(local_aws)
    for row in rows:
        job = aws_model["jobs"][row["native_id"]]
        requirements = {r["type"]: r["value"] for r in job["container"]["resourceRequirements"]}
        assert job["status"] == "SUCCEEDED", (row["name"], job["status"])
        if step(row) == "PREDICT":
            assert (queues[job["jobQueue"]], requirements.get("GPU")) == ("cellassign-gpu", "1"), (row["name"], job)
        else:
            assert queues[job["jobQueue"]] == "cellassign-cpu" and "GPU" not in requirements, (row["name"], job)
    for s in DEMO_SAMPLES:
        assert (aws_model["outdir"] / s / f"{s}.annotated.h5ad").stat().st_size > 0
    assert {r["status"] for r in _status(aws_model["outdir"]).values()} == {"annotated"}


# --------------------------------------------------------------------------------------
# Cohort mode, with a sample whose file is truncated
# --------------------------------------------------------------------------------------

def test_cohort_run_sets_the_bad_sample_aside_and_ends_as_locally(aws_cohort_bad):
    result = aws_cohort_bad["result"]
    assert result.returncode == 1, explain(result)  # a sample set aside: non-zero, as locally
    assert "truncated: set aside at qc: " in result.stdout and "cannot be read as .h5ad" in result.stdout, \
        result.stdout[-3000:]
    status = _status(aws_cohort_bad["outdir"])
    assert (status["truncated"]["status"], status["truncated"]["step"]) == ("set aside", "qc"), status
    assert "cannot be read as .h5ad" in status["truncated"]["reason"]
    assert all(status[s]["status"] == "annotated" for s in DEMO_SAMPLES), status
    rows = aws_cohort_bad["trace"]
    assert {(r["tag"], step(r)) for r in rows if r["status"] == "FAILED"} == {("truncated", "QC")}
    ok = [r for r in rows if r["status"] != "FAILED"]
    assert process_counts(ok) == COHORT_TASKS
    # resumed from the per-sample run: the demo samples' QC and doublets are its jobs, the rest ran now
    assert {(r["tag"], step(r)) for r in rows if r["status"] == "CACHED"} == \
        {(s, p) for s in DEMO_SAMPLES for p in ("QC", "DOUBLETS")} | {("markers.csv", "CHECK_PANEL")}
    for s in DEMO_SAMPLES:
        assert (aws_cohort_bad["outdir"] / s / f"{s}.annotated.h5ad").stat().st_size > 0
    assert (aws_cohort_bad["outdir"] / "multiqc" / "multiqc_report.html").stat().st_size > 0


def test_cohort_jobs_succeeded_except_the_bad_samples_qc_and_train_is_on_the_gpu_queue(aws_cohort_bad, local_aws):
    queues = _queue_names(local_aws)
    for row in aws_cohort_bad["trace"]:
        job = aws_cohort_bad["jobs"][row["native_id"]]
        expected = "FAILED" if row["tag"] == "truncated" and step(row) == "QC" else "SUCCEEDED"
        assert job["status"] == expected, (row["name"], job["status"])
        queue = "cellassign-gpu" if step(row) in GPU_STEPS else "cellassign-cpu"
        assert queues[job["jobQueue"]] == queue, (row["name"], job["jobQueue"])
