"""The pipeline on a real, one-node SLURM cluster (scripts/local-slurm), and the bin/ wrapper.

A session fixture starts munged + slurmctld + slurmd (partitions `cpu` and `gpu`, one placeholder GPU)
and stops them at the end. Every run here uses a PATH without any cellassign-nf / multiqc on it:
the tasks find the tools only through the pipeline's bin/ wrapper and the repository's .venv,
exactly as after `scripts/setup`.

Runs (each once per session):
  * local:   `-profile test` on the local executor (the reference outputs);
  * gpu:     `-profile test,slurm,gpu --device cpu`; TRAIN (sample1) is cancelled with scancel while it
             runs and must be retried; then the same work dir with -resume and `--device cuda`
             (GPU node without CUDA: TRAIN must fail in one line);
  * cohort:  `-profile test,slurm --mode cohort`, MERGE given 40 MB (killed, retried with more),
             interrupted while TRAIN runs, then -resume.
A TRAIN job that a test acts on is held (HOLD_CONFIG): its `cellassign-nf train` waits, the first time
only, until the test has acted or HOLD_S pass, so the job is certainly running when it is cancelled,
however fast training is on this machine.
What the tests read comes from SLURM's own records: `scontrol show job` for the trace's native ids
and the job completion log (`sacct -c`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nextflow_helpers import (DEMO_SAMPLES as SAMPLES, NEXTFLOW, REPO, RUN_TIMEOUT, accuracy, explain, md5, nxf_env,
                              step, trace)

LOCAL_SLURM = REPO / "scripts" / "local-slurm"
CPU_STEPS_PER_SAMPLE = ["QC", "DOUBLETS", "SIZE_FACTORS", "DESIGN", "ANNOTATE", "DIAGNOSE", "REPORT"]

# Test-only settings: poll SLURM every second instead of every 30 s, and record what each task saw.
FAST_CONFIG = """
executor {
    $slurm {
        pollInterval      = '1 sec'
        queueStatInterval = '2 sec'
        submitRateLimit   = '100/1min'
        exitReadTimeout   = '60 sec'
    }
}
// afterScript runs in the task's own shell, after the task, with the task's PATH (type -P: the file on PATH, not the
// function that HOLD_CONFIG defines)
process.afterScript = 'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} SLURM_JOB_PARTITION=${SLURM_JOB_PARTITION-unset} TOOL=$(type -P cellassign-nf)" > .task_env'
"""
# A site config as docs/pipeline.md shows one: params read after the profiles
SITE_CONFIG = """
params {
    cpu_queue     = 'cpu'
    slurm_options = '--comment=cellassign-site'
}
"""
# Test-only config: the first `cellassign-nf train` of the SLURM job named @JOB@ waits (in the background,
# so that a signal ends it at once, as it ends a running training) until the job is cancelled or
# HOLD_S pass, and marks the gate folder @GATE@ with `running` while it waits; every later attempt and
# run finds the gate taken and goes straight on. The test's watcher acts on the job only once the
# gate says running, so a fast machine cannot finish TRAIN before the test acts, and a slow one
# cannot be caught before the training command has started.
HOLD_S = 600
HOLD_CONFIG = """
process {
    withName: 'TRAIN' {
        beforeScript = '''
cellassign-nf() {
    if [ "${SLURM_JOB_NAME-}" = "@JOB@" ] && [ "${1-}" = train ] && mkdir "@GATE@" 2>/dev/null; then
        touch "@GATE@/running"
        sleep @HOLD_S@ & wait $!
    fi
    command cellassign-nf "$@"
}
export -f cellassign-nf
'''
    }
}
"""
TINY_MEMORY_CONFIG = """
process {
    withName: 'MERGE' {
        memory = { task.attempt == 1 ? 40.MB : 2.GB }
    }
}
"""


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def _clean_path() -> str:
    """PATH without any folder that holds cellassign-nf or multiqc (the venv, pipx, ...)."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in ("cellassign-nf", "multiqc"))]
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if d not in keep:
            keep.append(d)
    return os.pathsep.join(keep)


def _env(nxf_home: Path, slurm_conf: Path | None = None) -> dict[str, str]:
    """The Nextflow environment with the clean PATH and no VIRTUAL_ENV; SLURM_CONF when a cluster is given."""
    cluster = {"SLURM_CONF": str(slurm_conf)} if slurm_conf is not None else {}
    return nxf_env(nxf_home, PATH=_clean_path(), VIRTUAL_ENV=None, **cluster)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Nextflow in the background, in a session of its own, output to cwd/nextflow.out. SIGINT gets
    its default action there: a test run started as a background job of a shell ignores SIGINT,
    Nextflow would inherit that, and the interruption below would do nothing."""
    log = open(cwd / "nextflow.out", "a")
    return subprocess.Popen([str(NEXTFLOW), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=_default_sigint)


def _finish(proc: subprocess.Popen, cwd: Path, timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Wait for a run of _start; its output (stdout and stderr together) is the result's stdout."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    return subprocess.CompletedProcess(proc.args, code, stdout=(cwd / "nextflow.out").read_text(), stderr="")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A whole run through _start / _finish; the result has its wall time as `.wall_s`."""
    start = time.monotonic()
    result = _finish(_start(args, cwd, env), cwd)
    result.wall_s = time.monotonic() - start  # type: ignore[attr-defined]
    return result


def _md5s(outdir: Path) -> dict[str, str]:
    """Published per-sample / cohort outputs (not reports, which hold times and paths)."""
    return {str(p.relative_to(outdir)): md5(p)
            for p in sorted(outdir.glob("*/*")) if p.is_file() and p.parent.name != "pipeline_info"}


def _slurm(command: list[str], conf: Path) -> subprocess.CompletedProcess:
    """A SLURM client command (scontrol, squeue, ...) against the cluster of `conf`."""
    return subprocess.run(command, env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, text=True,
                          timeout=60)


def _slurm_job(job_id: str, conf: Path) -> dict[str, str]:
    out = _slurm(["scontrol", "-d", "show", "job", job_id], conf)
    assert out.returncode == 0, f"scontrol show job {job_id}: {out.stderr}"
    fields: dict[str, str] = {}
    for token in re.split(r"\s+", out.stdout):
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields


def _squeue(conf: Path) -> list[tuple[str, str, str]]:
    out = _slurm(["squeue", "-h", "-o", "%i|%j|%T"], conf)
    return [tuple(line.split("|")) for line in out.stdout.splitlines() if line.count("|") == 2]  # type: ignore[misc]


def _hold_config(job_name: str, gate: Path) -> str:
    """HOLD_CONFIG for the SLURM job `job_name`, with its gate folder `gate` (which must not exist yet)."""
    return HOLD_CONFIG.replace("@JOB@", job_name).replace("@GATE@", str(gate)).replace("@HOLD_S@", str(HOLD_S))


def _when_held(conf: Path, job_name: str, gate: Path, action, stop: threading.Event) -> dict:
    """Watch squeue; as soon as the job `job_name` is RUNNING and held at its gate (_hold_config),
    call action(job_id) once; what was seen: the job id, its state then, the action's result."""
    seen: dict = {}

    def watch():
        while not stop.is_set():
            jobs = [(i, s) for i, n, s in _squeue(conf) if n == job_name]
            if jobs and jobs[0][1] == "RUNNING" and (gate / "running").exists():
                seen["job_id"], seen["state"] = jobs[0]
                seen["result"] = action(jobs[0][0])
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    seen["thread"] = thread
    return seen


def _run_acting_on(job_name: str, action, args: list[str], cwd: Path, env: dict[str, str],
                   conf: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """A whole run, its TRAIN job `job_name` held (cwd/hold.config, gate cwd/gate), during which
    action(job_id, nextflow_process) is called once while that job waits at its gate; the result
    (with `.wall_s`) and what the watcher saw (_when_held)."""
    gate = cwd / "gate"
    (cwd / "hold.config").write_text(_hold_config(job_name, gate))
    stop = threading.Event()
    start = time.monotonic()
    proc = _start(["-c", "hold.config", *args], cwd, env)
    seen = _when_held(conf, job_name, gate, lambda job_id: action(job_id, proc), stop)
    result = _finish(proc, cwd)
    stop.set()
    result.wall_s = time.monotonic() - start  # type: ignore[attr-defined]
    return result, seen


def _launch_folder(tmp_path_factory, name: str, configs: dict[str, str]) -> Path:
    """A launch folder holding the given config files ({file name: text})."""
    launch = tmp_path_factory.mktemp(name)
    for file_name, text in configs.items():
        (launch / file_name).write_text(text)
    return launch


# --------------------------------------------------------------------------------------
# session fixtures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def venv_ready():
    venv_tool = REPO / ".venv" / "bin" / "cellassign-nf"
    assert venv_tool.is_file(), f"{venv_tool} is missing: run scripts/setup first (the bin/ wrapper runs it)"
    assert shutil.which("cellassign-nf", path=_clean_path()) is None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster, started here and stopped (by its recorded pids) at the end."""
    folder = tmp_path_factory.mktemp("local_slurm")
    env = {**os.environ, "CELLASSIGN_SLURM_DIR": str(folder)}
    start = subprocess.run([str(LOCAL_SLURM), "start"], env=env, capture_output=True, text=True, timeout=600)
    assert start.returncode == 0, start.stdout + start.stderr
    conf = folder / "etc" / "slurm.conf"
    pids = dict(line.split() for line in (folder / "started.pids").read_text().splitlines())
    try:
        yield {"conf": conf, "folder": folder, "env": env}
    finally:
        stop = subprocess.run([str(LOCAL_SLURM), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        for name, pid in pids.items():
            assert not Path(f"/proc/{pid}/cmdline").exists() or name not in Path(f"/proc/{pid}/cmdline").read_text(), \
                f"{name} (pid {pid}) still runs after scripts/local-slurm stop"


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, nxf_home, venv_ready):
    launch = tmp_path_factory.mktemp("local")
    result = _run(["run", str(REPO), "-profile", "test", "--outdir", "results", "-w", "work"], launch, _env(nxf_home))
    print(f"local test profile (no venv on PATH): {result.wall_s:.0f} s wall")  # type: ignore[attr-defined]
    assert result.returncode == 0, explain(result)
    return {"result": result, "outdir": launch / "results", "launch": launch}


@pytest.fixture(scope="session")
def gpu_run(tmp_path_factory, nxf_home, slurm, venv_ready):
    """-profile test,slurm,gpu --device cpu; TRAIN (sample1) is cancelled once while it runs."""
    launch = _launch_folder(tmp_path_factory, "slurm_gpu", {"fast.config": FAST_CONFIG, "site.config": SITE_CONFIG})
    conf = slurm["conf"]
    result, cancelled = _run_acting_on(
        "nf-CELLASSIGN_TRAIN_(sample1)", lambda job_id, _: _slurm(["scancel", job_id], conf).returncode,
        ["-c", "fast.config", "-c", "site.config", "run", str(REPO), "-profile", "test,slurm,gpu", "--device", "cpu",
         "--gpu_queue", "gpu", "--outdir", "results", "-w", "work"], launch, _env(nxf_home, conf), conf)
    print(f"slurm,gpu test profile (one scancel): {result.wall_s:.0f} s wall")  # type: ignore[attr-defined]
    assert result.returncode == 0, explain(result)
    return {"result": result, "outdir": launch / "results", "launch": launch, "conf": conf, "cancelled": cancelled}


@pytest.fixture(scope="session")
def no_cuda_run(gpu_run, nxf_home):
    """The same work dir with -resume and the gpu profile's --device cuda: SLURM gives TRAIN a 'GPU'
    (CUDA_VISIBLE_DEVICES=0) that CUDA cannot use, as on a GPU node with a broken driver."""
    launch = gpu_run["launch"]
    (launch / "nextflow.out").unlink()
    result = _run(["-c", "fast.config", "-c", "site.config", "run", str(REPO), "-profile", "test,slurm,gpu",
                   "--gpu_queue", "gpu", "--outdir", "results_cuda", "-w", "work", "-resume"],
                  launch, _env(nxf_home, gpu_run["conf"]))
    print(f"slurm,gpu without CUDA (resumed): {result.wall_s:.0f} s wall")  # type: ignore[attr-defined]
    return {"result": result, "outdir": launch / "results_cuda"}


@pytest.fixture(scope="session")
def cohort_runs(tmp_path_factory, nxf_home, slurm, venv_ready):
    """-profile test,slurm --mode cohort, MERGE with 40 MB; interrupted while TRAIN runs; then -resume."""
    launch = _launch_folder(tmp_path_factory, "slurm_cohort",
                            {"fast.config": FAST_CONFIG, "memory.config": TINY_MEMORY_CONFIG})
    conf = slurm["conf"]
    args = ["-c", "fast.config", "-c", "memory.config", "run", str(REPO), "-profile", "test,slurm", "--mode", "cohort",
            "--outdir", "results", "-w", "work"]
    env = _env(nxf_home, conf)
    first, interrupted = _run_acting_on("nf-CELLASSIGN_TRAIN_(cohort)",
                                        lambda job_id, proc: os.killpg(proc.pid, signal.SIGINT),
                                        args, launch, env, conf)
    outdir = launch / "results"
    published_after_interrupt = _md5s(outdir) if outdir.exists() else {}
    queue_after_interrupt = _squeue(conf)
    (launch / "nextflow.out").rename(launch / "nextflow.first.out")
    resumed = _run([*args, "-resume"], launch, env)
    print(f"slurm cohort: {first.wall_s:.0f} s until interrupted, {resumed.wall_s:.0f} s resumed")  # type: ignore[attr-defined]
    assert resumed.returncode == 0, explain(resumed)
    return {"first": first, "interrupted": interrupted,
            "published_after_interrupt": published_after_interrupt, "queue_after_interrupt": queue_after_interrupt,
            "resumed": resumed, "outdir": outdir, "conf": conf}


# --------------------------------------------------------------------------------------
# the bin/ wrapper, on its own (no pipeline)
# --------------------------------------------------------------------------------------

def _fake_checkout(root: Path, with_venv: str | None) -> Path:
    """A copy of bin/ in a folder of its own, with a working, broken or no .venv."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(REPO / "bin" / "cellassign-nf", root / "bin" / "cellassign-nf")
    (root / "bin" / "multiqc").symlink_to("cellassign-nf")
    if with_venv:
        venv_bin = root / ".venv" / "bin"
        venv_bin.mkdir(parents=True)
        if with_venv == "working":
            (venv_bin / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
        else:  # a venv made on another machine: its interpreter is not here
            (venv_bin / "python").symlink_to("/nonexistent/python3.11")
        for tool in ("cellassign-nf", "multiqc"):
            (venv_bin / tool).write_text(f"#!/bin/sh\necho venv-{tool} \"$@\"\n")
            (venv_bin / tool).chmod(0o755)
    return root


def _other_tool(folder: Path, tool: str, label: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tool).write_text(f"#!/bin/sh\necho {label}-{tool} \"$@\"\n")
    (folder / tool).chmod(0o755)
    return folder


def _call(path: Path, *args, path_dirs: list[Path] = (), extra_env: dict | None = None):
    env = {"PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"]), "HOME": "/tmp", **(extra_env or {})}
    return subprocess.run([str(path), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("tool", ["cellassign-nf", "multiqc"])
def test_wrapper_runs_the_checkouts_venv_first(tmp_path, tool):
    checkout = _fake_checkout(tmp_path / "repo", "working")
    image = _other_tool(tmp_path / "image", tool, "image")
    out = _call(checkout / "bin" / tool, "--version", path_dirs=[image])
    assert out.returncode == 0 and out.stdout.strip() == f"venv-{tool} --version", out


@pytest.mark.parametrize("venv", [None, "broken"])
def test_wrapper_falls_through_to_the_tool_on_path(tmp_path, venv):
    """In a container (no .venv, or a host .venv whose Python is not there) the image's tool runs;
    other copies of the wrapper on PATH are skipped."""
    checkout = _fake_checkout(tmp_path / "repo", venv)
    other_wrapper = _fake_checkout(tmp_path / "other_checkout", None) / "bin"
    image = _other_tool(tmp_path / "image", "cellassign-nf", "image")
    out = _call(checkout / "bin" / "cellassign-nf", "train", "-h", path_dirs=[checkout / "bin", other_wrapper, image])
    assert out.returncode == 0 and out.stdout.strip() == "image-cellassign-nf train -h", out


def test_wrapper_in_apptainer_prefers_the_image(tmp_path):
    checkout = _fake_checkout(tmp_path / "repo", "working")
    image = _other_tool(tmp_path / "image", "cellassign-nf", "image")
    out = _call(checkout / "bin" / "cellassign-nf", path_dirs=[image], extra_env={"APPTAINER_CONTAINER": "/img.sif"})
    assert out.stdout.strip() == "image-cellassign-nf", out


def test_wrapper_without_any_tool_says_run_setup(tmp_path):
    checkout = _fake_checkout(tmp_path / "repo", None)
    out = _call(checkout / "bin" / "cellassign-nf", "--version", path_dirs=[checkout / "bin"])
    assert out.returncode == 127, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cellassign-nf: error: no usable cellassign-nf"), out.stderr
    assert "Run scripts/setup" in lines[0] and str(checkout) in lines[0], lines[0]


def test_wrapper_runs_this_repositorys_venv(venv_ready):
    out = _call(REPO / "bin" / "cellassign-nf", "--version", extra_env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0 and out.stdout.strip().startswith("cellassign-nf, version"), out


# --------------------------------------------------------------------------------------
# local executor, no PATH change
# --------------------------------------------------------------------------------------

def test_local_run_finds_the_tool_through_bin(local_run):
    out = local_run["outdir"]
    for s in SAMPLES:
        assert (out / s / f"{s}.annotated.h5ad").is_file()
        assert accuracy(out / s / f"{s}.annotated.h5ad") >= 0.90
    assert (out / "multiqc" / "multiqc_report.html").is_file()
    train = [r for r in trace(out) if step(r) == "TRAIN"]
    run_script = (Path(train[0]["workdir"]) / ".command.run").read_text()
    assert f'export PATH="$PATH:{REPO / "bin"}"' in run_script


# --------------------------------------------------------------------------------------
# SLURM: routing (-profile test,slurm,gpu --device cpu)
# --------------------------------------------------------------------------------------

def test_slurm_cluster_has_cpu_and_gpu_partitions(slurm):
    out = _slurm(["sinfo", "-h", "-o", "%P|%T|%G"], slurm["conf"])
    rows = {line.split("|")[0].rstrip("*"): line.split("|")[1:] for line in out.stdout.split()}
    assert set(rows) == {"cpu", "gpu"}, out.stdout
    assert all(state in ("idle", "mixed", "allocated") and gres == "gpu:1" for state, gres in rows.values()), rows


def test_every_task_is_a_slurm_job_on_the_right_partition(gpu_run):
    conf = gpu_run["conf"]
    done = [r for r in trace(gpu_run["outdir"]) if r["status"] == "COMPLETED"]
    steps = sorted(step(r) for r in done)
    once = ["CHECK_PANEL", "CELLTYPE_COUNTS", "MULTIQC"]
    assert steps == sorted(CPU_STEPS_PER_SAMPLE * 2 + ["TRAIN"] * 2 + once), steps
    for row in done:
        assert row["native_id"].isdigit(), row
        job = _slurm_job(row["native_id"], conf)
        assert job["JobName"] == f"nf-CELLASSIGN_{step(row)}" + (f"_({row['tag']})" if row["tag"] != "-" else ""), job
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["Comment"] == "cellassign-site", job  # --slurm_options from the site config reached sbatch
        seen = (Path(row["workdir"]) / ".task_env").read_text()
        assert f"TOOL={REPO / 'bin' / 'cellassign-nf'}" in seen, seen  # found through bin/, not PATH
        if step(row) == "TRAIN":
            assert job["Partition"] == "gpu" and job["JOB_GRES"] == "gpu:1" and job["TresPerNode"] == "gres:gpu:1", job
            assert "CUDA_VISIBLE_DEVICES=0 SLURM_JOB_PARTITION=gpu" in seen, seen
        else:
            assert job["Partition"] == "cpu" and job["JOB_GRES"] == "(null)" and "TresPerNode" not in job, job
            assert "CUDA_VISIBLE_DEVICES=unset SLURM_JOB_PARTITION=cpu" in seen, seen


def test_sbatch_options_of_train_and_a_cpustep(gpu_run):
    done = [r for r in trace(gpu_run["outdir"]) if r["status"] == "COMPLETED"]

    def sbatch(name):
        row = next(r for r in done if step(r) == name)
        lines = (Path(row["workdir"]) / ".command.run").read_text().splitlines()
        return [ln.removeprefix("#SBATCH ") for ln in lines if ln.startswith("#SBATCH")]

    train, qc = sbatch("TRAIN"), sbatch("QC")
    print("TRAIN sbatch:", train, "\nQC sbatch:", qc)
    # test profile caps: TRAIN (process_high + process_gpu) 2 CPUs, 1 h; QC (process_low) 1 CPU. Memory from
    # the input (conf/base.config): TRAIN 2 GB, QC 1 GB, plus a multiple of the demo h5ad (< 1 MB): a few MB
    mem = {name: int(next(o for o in opts if o.startswith("--mem ")).split()[1].removesuffix("M"))
           for name, opts in (("TRAIN", train), ("QC", qc))}
    assert "-p gpu" in train and "-c 2" in train and "-t 01:00:00" in train, train
    assert 2048 <= mem["TRAIN"] <= 2050 and 1024 <= mem["QC"] <= 1026, mem
    assert "--comment=cellassign-site --gres=gpu:1" in train, train
    assert "-p cpu" in qc and "--comment=cellassign-site" in qc, qc
    assert not any("gres" in opt for opt in qc), qc


def test_slurm_outputs_equal_the_local_run(gpu_run, local_run):
    local, slurm_out = _md5s(local_run["outdir"]), _md5s(gpu_run["outdir"])
    # tables and summaries byte for byte (model.pt holds each restart's wall time, so model_info.json,
    # which names the model file by its SHA-256, is compared without the hash)
    compared = {k: v for k, v in local.items() if k.endswith((".tsv", ".json")) and "report/" not in k
                and not k.endswith(".model_info.json")}
    assert len(compared) >= 2 * 6, sorted(compared)
    different = [k for k in compared if slurm_out.get(k) != compared[k]]
    assert different == [], different
    infos = sorted(k for k in local if k.endswith(".model_info.json"))
    assert len(infos) == 2, infos

    def described(outdir: Path, name: str) -> dict:
        info = json.loads((outdir / name).read_text())
        assert len(info.pop("sha256")) == 64, info
        return info

    for name in infos:
        assert described(gpu_run["outdir"], name) == described(local_run["outdir"], name), name


# --------------------------------------------------------------------------------------
# SLURM: faults
# --------------------------------------------------------------------------------------

def test_scancel_of_a_running_train_job_is_retried(gpu_run):
    cancelled = gpu_run["cancelled"]
    assert cancelled.get("job_id"), "TRAIN (sample1) was never seen running, so it was not cancelled"
    # scancel came while SLURM had the job RUNNING and its `cellassign-nf train` had started (held)
    assert cancelled["state"] == "RUNNING" and cancelled["result"] == 0, cancelled
    rows = [r for r in trace(gpu_run["outdir"]) if step(r) == "TRAIN" and r["tag"] == "sample1"]
    by_attempt = {r["attempt"]: r for r in rows}
    assert set(by_attempt) == {"1", "2"}, rows
    first, second = by_attempt["1"], by_attempt["2"]
    assert first["native_id"] == cancelled["job_id"] and first["status"] == "FAILED", first
    assert first["exit"] == "143", first  # SIGTERM from scancel: in base.config's retry list
    assert second["status"] == "COMPLETED" and second["exit"] == "0", second
    job = _slurm_job(first["native_id"], gpu_run["conf"])
    assert job["JobState"] == "CANCELLED", job
    assert "Execution is retried" in gpu_run["result"].stdout, gpu_run["result"].stdout[-3000:]


def test_gpu_node_without_cuda_fails_train_in_one_line(no_cuda_run):
    result = no_cuda_run["result"]
    assert result.returncode != 0, explain(result)
    tasks = trace(no_cuda_run["outdir"])
    # every TRAIN fails with exit 2 and is not retried: each sample is set aside at train with the
    # command's one line (a GPU node with a working driver would have annotated its samples)
    rows = [r for r in tasks if step(r) == "TRAIN"]
    assert len(rows) == 2 and all(r["status"] == "FAILED" and r["exit"] == "2" and r["attempt"] == "1"
                                  for r in rows), rows
    train = rows
    assert {r["status"] for r in tasks if step(r) in ("QC", "DOUBLETS", "SIZE_FACTORS", "DESIGN")} == {"CACHED"}
    err = (Path(train[0]["workdir"]) / ".command.err").read_text().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda: a GPU was requested but CUDA is not usable"), err
    assert "CUDA_VISIBLE_DEVICES='0'" in err[0] and "--device cpu" in err[0], err[0]
    for sample in ("sample1", "sample2"):
        assert f"{sample}: set aside at train: --device cuda: a GPU was requested" in result.stdout, result.stdout[-3000:]
    assert not list(no_cuda_run["outdir"].glob("sample*/sample*.model.pt")), "a model was published"


def test_tiny_memory_request_is_killed_and_retried_with_more(cohort_runs):
    rows = [r for r in trace(cohort_runs["outdir"], newest=False) if step(r) == "MERGE"]
    by_attempt = {r["attempt"]: r for r in rows}
    assert set(by_attempt) == {"1", "2"}, rows
    first, second = by_attempt["1"], by_attempt["2"]
    assert first["status"] == "FAILED" and first["exit"] == "137", first  # OOM-killed, in base.config's retry list
    assert second["status"] == "COMPLETED" and second["exit"] == "0", second
    conf = cohort_runs["conf"]
    job1, job2 = _slurm_job(first["native_id"], conf), _slurm_job(second["native_id"], conf)
    assert job1["JobState"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED"), job1
    assert job1["TRES"].split("mem=")[1].startswith("40M") and job2["TRES"].split("mem=")[1].startswith("2G"), \
        (job1["TRES"], job2["TRES"])


def test_interrupted_cohort_run_publishes_nothing_half_written(cohort_runs):
    interrupted = cohort_runs["interrupted"]
    assert interrupted.get("job_id"), "the cohort TRAIN job was never seen running, so the run was not interrupted"
    assert interrupted["state"] == "RUNNING", interrupted
    before = cohort_runs["published_after_interrupt"]
    assert not any(k.startswith("cohort/cohort.model") for k in before), before
    assert any(k.endswith(".qc_summary.json") for k in before), before
    after = _md5s(cohort_runs["outdir"])
    assert {k: after.get(k) for k in before} == before, "a file published before the interruption changed"
    # Nextflow cancelled its running TRAIN job on the way out
    job = _slurm_job(interrupted["job_id"], cohort_runs["conf"])
    assert job["JobState"] == "CANCELLED", job
    assert not [j for j in cohort_runs["queue_after_interrupt"]
                if j[1].startswith("nf-CELLASSIGN") and j[2] in ("RUNNING", "PENDING")], cohort_runs["queue_after_interrupt"]


def test_resume_after_interruption_reuses_finished_tasks(cohort_runs):
    status = {}
    for row in trace(cohort_runs["outdir"]):
        status.setdefault(step(row), set()).add(row["status"])
    for name in ("QC", "DOUBLETS", "MERGE", "SIZE_FACTORS", "DESIGN"):
        assert status[name] == {"CACHED"}, (name, status)
    for name in ("TRAIN", "ANNOTATE", "DIAGNOSE", "REPORT", "CELLTYPE_COUNTS", "MULTIQC"):
        assert status[name] == {"COMPLETED"}, (name, status)
    out = cohort_runs["outdir"]
    assert (out / "cohort" / "cohort.model.pt").is_file()
    for s in SAMPLES:
        assert accuracy(out / s / f"{s}.annotated.h5ad") >= 0.90


def test_slurm_job_completion_log_lists_every_job(gpu_run, cohort_runs):
    out = _slurm(["sacct", "-c", "-n", "-P", "-o", "jobid,partition,state"], gpu_run["conf"])
    assert out.returncode == 0, out.stderr
    records = {line.split("|")[0]: line.split("|")[1:] for line in out.stdout.split() if "|" in line}
    for outdir in (gpu_run["outdir"], cohort_runs["outdir"]):
        for row in trace(outdir):
            if row["status"] in ("COMPLETED", "FAILED"):
                assert row["native_id"] in records, (row, sorted(records))


def test_slurm_without_gpu_profile_keeps_train_on_cpu(cohort_runs):
    """-profile test,slurm (no gpu): TRAIN is an ordinary CPU job in the default partition."""
    train = [r for r in trace(cohort_runs["outdir"]) if step(r) == "TRAIN"]
    assert len(train) == 1 and train[0]["status"] == "COMPLETED", train
    job = _slurm_job(train[0]["native_id"], cohort_runs["conf"])
    assert job["Partition"] == "cpu" and job["JOB_GRES"] == "(null)", job
    script = (Path(train[0]["workdir"]) / ".command.run").read_text()
    assert "gres" not in script and "#SBATCH -p" not in script, script[:600]
    assert "--device auto" in (Path(train[0]["workdir"]) / ".command.sh").read_text()
