"""The pipeline in its container, for real.

A Docker daemon (started here when none answers, stopped again by its pid), the image built by
scripts/build-images, and `-profile test,docker` run to the end per sample and in cohort mode.
Every task must have run inside the image: the execution trace names the image, and a probe
(a sitecustomize.py mounted into the container through a test-only config) records, from each
Python process a task starts, the interpreter it ran on; the host's Python must never appear.
The per-sample labels must equal those of the same run without a container, and the published
files must belong to the calling user. A `-profile docker` run whose image is missing, and an apptainer run
with a Docker name it cannot pull, must stop before any task with one line naming the image and
the command that builds it.

If no daemon answers and dockerd cannot be started, the tests fail with dockerd's own error.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nextflow_helpers import (COHORT_TASKS, DEMO_SAMPLES as SAMPLES, PER_SAMPLE_TASKS, REPO, accuracy, explain,
                              flat_config, nextflow, nxf_env, process_counts, run_pipeline, stopped_before_any_task,
                              trace)
from test_numba_cache import SCRIPT as UMAP_SCRIPT, WATCHED, cache_stats

BUILD_IMAGES = REPO / "scripts" / "build-images"
BUILD_TIMEOUT = 3600    # s; a cold build debootstraps the base and installs the pinned wheels
DAEMON_START_S = 300    # s; how long dockerd may take to answer (a hang guard, not a speed check)

VERSION = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
IMAGE = f"cellassign-nf:{VERSION}"

# Written into every Python process a task starts inside the container (PYTHONPATH points at it):
# one JSON line per process in the task's directory.
PROBE = r'''
import json, os, socket, sys
try:
    with open(os.path.join(os.environ.get("NXF_TASK_WORKDIR") or os.getcwd(), "python_probe.jsonl"), "a") as fh:
        fh.write(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "argv0": sys.argv[0] if sys.argv else "",
                             "uid": os.getuid(), "gid": os.getgid(), "in_docker": os.path.exists("/.dockerenv"),
                             "hostname": socket.gethostname(), "home": os.environ.get("HOME", "")}) + "\n")
except OSError:
    pass
'''


def _docker_client() -> str:
    """Debian's client (docker.io): another one found first on PATH may lack BuildKit support."""
    for candidate in (os.environ.get("DOCKER"), "/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no docker client: install Docker (Debian: apt-get install docker.io; scripts/setup does it)")


def _daemon_answers(client: str) -> subprocess.CompletedProcess:
    return subprocess.run([client, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                          timeout=60, check=False)


# --------------------------------------------------------------------------------------
# Session fixtures: the daemon, the image, the runs
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker(tmp_path_factory):
    """The docker client, with a daemon that answers: the running one, or a dockerd started here."""
    client = _docker_client()
    if _daemon_answers(client).returncode == 0:
        yield client
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    command = [dockerd] if os.geteuid() == 0 else ["sudo", "-n", dockerd]
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + DAEMON_START_S
        while True:
            answer = _daemon_answers(client)
            if answer.returncode == 0:
                break
            if daemon.poll() is not None or time.monotonic() > deadline:
                state = f"exited with code {daemon.returncode}" if daemon.poll() is not None else \
                    f"did not answer within {DAEMON_START_S} s"
                log_tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
                pytest.fail(f"dockerd ({' '.join(command)}) {state}; its log:\n{log_tail}\n"
                            f"client: {answer.stderr.strip()}")
            time.sleep(1)
        print(f"started dockerd (pid {daemon.pid}), log {log_path}")
        yield client
    finally:
        if daemon.poll() is None:
            daemon.terminate()  # SIGTERM to our dockerd (or to sudo, which passes it on)
            try:
                daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)


@pytest.fixture(scope="session")
def client_dir(tmp_path_factory, docker) -> Path:
    """A folder to put first on PATH, so that Nextflow's `docker` is the client the tests use."""
    folder = tmp_path_factory.mktemp("docker_client")
    (folder / "docker").symlink_to(docker)
    return folder


def _build_images(client_dir: Path, timeout: int) -> tuple[subprocess.CompletedProcess, float]:
    """scripts/build-images with the tests' Docker client first on PATH; the result and its wall time."""
    env = os.environ.copy()
    env["PATH"] = os.pathsep.join([str(client_dir), env.get("PATH", "")])
    start = time.monotonic()
    result = subprocess.run([str(BUILD_IMAGES)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result, time.monotonic() - start


@pytest.fixture(scope="session")
def built_image(docker, client_dir):
    """scripts/build-images, as a user runs it (a rebuild is a cache hit)."""
    result, wall = _build_images(client_dir, BUILD_TIMEOUT)
    print(f"scripts/build-images: {wall:.0f} s wall")
    assert result.returncode == 0, explain(result)
    info = subprocess.run([docker, "run", "--rm", "-u", f"{os.getuid()}:{os.getgid()}", IMAGE, "python", "-c",
                           "import json, sys, torch; print(json.dumps({'prefix': sys.prefix, 'executable': "
                           "sys.executable, 'version': sys.version.split()[0], 'torch': torch.__version__, "
                           "'cuda': torch.version.cuda}))"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert info.returncode == 0, explain(info)
    return {"result": result, "wall_s": wall, "python": json.loads(info.stdout.strip().splitlines()[-1])}


def test_image_ships_umap_compiled_for_the_tasks_user(built_image, docker):
    """The image's numba cache holds umap-learn's code (compiled at build time on this CPU): a
    task, run as the calling user, loads it instead of compiling it."""
    result = subprocess.run([docker, "run", "--rm", "-u", f"{os.getuid()}:{os.getgid()}", IMAGE, "python", "-c",
                             UMAP_SCRIPT], capture_output=True, text=True, timeout=600, check=False)
    stats = cache_stats(result)
    assert set(stats) == set(WATCHED), stats
    assert all(hits >= 1 and misses == 0 for hits, misses in stats.values()), stats


def _probe_config(folder: Path) -> Path:
    """Test-only config: mount the probe read-only into every container and put it on PYTHONPATH."""
    probe = folder / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    config = folder / "probe.config"
    config.write_text(f"process.containerOptions = '-v {probe}:{probe}:ro -e PYTHONPATH={probe}'\n")
    return config


def _docker_run(tmp_path_factory, nxf_home, client_dir, name: str, extra: list[str]):
    launch = tmp_path_factory.mktemp(name)
    config = _probe_config(launch)
    # the Docker client first on PATH; the host's cellassign-nf stays on it: inside the container it must not be used
    run = run_pipeline(launch, nxf_env(nxf_home, extra_path=[client_dir]),
                       ["-profile", "test,docker", "-c", str(config), *extra])
    print(f"-profile test,docker {' '.join(extra) or '(per sample)'}: {run['result'].wall_s:.0f} s wall")
    return run


@pytest.fixture(scope="session")
def docker_per_sample(tmp_path_factory, nxf_home, client_dir, built_image):
    return _docker_run(tmp_path_factory, nxf_home, client_dir, "docker_per_sample", [])


@pytest.fixture(scope="session")
def docker_cohort(tmp_path_factory, nxf_home, client_dir, built_image):
    return _docker_run(tmp_path_factory, nxf_home, client_dir, "docker_cohort", ["--mode", "cohort"])


@pytest.fixture(scope="session")
def plain_per_sample(tmp_path_factory, nxf_home):
    return run_pipeline(tmp_path_factory.mktemp("plain_per_sample"), nxf_home, ["-profile", "test"])


def _labels(outdir: Path) -> dict[str, dict[str, str]]:
    labels = {}
    for sample in SAMPLES:
        with open(outdir / sample / f"{sample}.predictions.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        assert rows, f"{sample}: no predictions"
        key, label = list(rows[0])[0], "cellassign_celltype" if "cellassign_celltype" in rows[0] else list(rows[0])[1]
        labels[sample] = {row[key]: row[label] for row in rows}
    return labels


# --------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------

def test_build_images_prints_the_name_nextflow_uses_and_its_size(built_image, tmp_path, nxf_home):
    lines = built_image["result"].stdout.strip().splitlines()
    assert re.fullmatch(rf"{re.escape(IMAGE)}\t\d+\.\d\d GB", lines[-1]), built_image["result"].stdout
    config = flat_config("docker", tmp_path, nxf_home)
    assert config["process.container"] == f"'{IMAGE}'", config
    assert config["docker.runOptions"] == "'-u $(id -u):$(id -g)'", config


def test_image_python_is_the_pinned_one_with_cuda_torch(built_image):
    python = built_image["python"]
    assert python["version"].startswith("3.11."), python  # the version requirements.txt is pinned with
    torch_pin = re.search(r"^torch==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert python["torch"].split("+")[0] == torch_pin, python
    assert python["cuda"], f"the image's torch has no CUDA runtime, so it cannot serve GPU training: {python}"
    assert python["prefix"] != sys.prefix and not python["executable"].startswith(sys.prefix), python


def test_rebuild_is_a_cache_hit(built_image, client_dir):
    """A second build with nothing changed reuses every layer (CI's rebuilds after a code change
    rerun only the last, package layer): every step of the Dockerfile is a cache hit, whatever the
    time the build takes on this machine."""
    again, wall = _build_images(client_dir, BUILD_TIMEOUT)
    print(f"scripts/build-images again: {wall:.0f} s wall")
    assert again.returncode == 0, explain(again)
    assert again.stdout.strip().splitlines()[-1] == built_image["result"].stdout.strip().splitlines()[-1]
    steps = dict(re.findall(r"^(#\d+) \[(?:\S+\s+)?\d+/\d+\] ((?:RUN|COPY) .*)$", again.stderr, re.M))
    assert any("pip install -r requirements.txt" in s for s in steps.values()) and \
        any("pip install --no-deps ." in s for s in steps.values()), again.stderr[-4000:]
    for number, text in steps.items():
        assert re.search(rf"^{number} CACHED$", again.stderr, re.M), \
            f"'{text}' was not a cache hit:\n{again.stderr[-4000:]}"


# --------------------------------------------------------------------------------------
# -profile test,docker: every task in the image, the same labels as without a container
# --------------------------------------------------------------------------------------

def _assert_ran_in_the_image(run, built_image, expected_counts: dict[str, int]):
    rows = trace(run["outdir"])
    counts = process_counts(rows)
    assert counts == expected_counts, counts
    image_prefix = built_image["python"]["prefix"]
    for row in rows:
        where = f"{row['process']} ({row['tag']}), {row['workdir']}"
        assert row["status"] == "COMPLETED", where
        assert row["container"] == IMAGE, f"{where}: trace container field is '{row['container']}'"
        assert row["native_id"], where
        workdir = Path(row["workdir"])
        wrapper = (workdir / ".command.run").read_text()
        # the docker profile's run options (the shell expands them when the task starts; the probe
        # below checks the result)
        assert re.search(rf"docker run .*-u \$\(id -u\):\$\(id -g\) .*{re.escape(IMAGE)}", wrapper), where
        probe = workdir / "python_probe.jsonl"
        assert probe.is_file(), f"{where}: no Python process of the task wrote the probe"
        records = [json.loads(line) for line in probe.read_text().splitlines()]
        assert records, where
        for rec in records:
            assert rec["in_docker"], f"{where}: a Python process ran outside a container: {rec}"
            assert rec["prefix"] == image_prefix and rec["executable"].startswith(image_prefix + "/"), \
                f"{where}: ran on {rec['executable']} (prefix {rec['prefix']}), not the image's {image_prefix}"
            assert (rec["uid"], rec["gid"]) == (os.getuid(), os.getgid()), f"{where}: ran as {rec['uid']}:{rec['gid']}"
        # every subcommand the task ran came from the image: cellassign-nf, or multiqc for MULTIQC
        tools = {Path(rec["argv0"]).name for rec in records}
        assert tools & {"cellassign-nf", "multiqc"}, f"{where}: {tools}"


def _assert_published_files_belong_to_the_user(outdir: Path):
    files = [p for p in outdir.rglob("*")]
    assert files
    wrong = [(str(p), p.lstat().st_uid, p.lstat().st_gid) for p in files
             if (p.lstat().st_uid, p.lstat().st_gid) != (os.getuid(), os.getgid())]
    assert wrong == [], wrong[:10]


def test_docker_per_sample_every_task_ran_in_the_image(docker_per_sample, built_image):
    _assert_ran_in_the_image(docker_per_sample, built_image, PER_SAMPLE_TASKS)


def test_docker_per_sample_published_files_belong_to_the_user(docker_per_sample):
    _assert_published_files_belong_to_the_user(docker_per_sample["outdir"])
    assert (docker_per_sample["outdir"] / "multiqc" / "multiqc_report.html").is_file()
    for s in SAMPLES:
        assert (docker_per_sample["outdir"] / s / "report" / f"{s}.report.html").is_file()


def test_docker_per_sample_labels_equal_a_run_without_container(docker_per_sample, plain_per_sample):
    in_docker, plain = _labels(docker_per_sample["outdir"]), _labels(plain_per_sample["outdir"])
    for s in SAMPLES:
        assert len(in_docker[s]) > 100 and in_docker[s].keys() == plain[s].keys()
        differ = [c for c in plain[s] if in_docker[s][c] != plain[s][c]]
        assert differ == [], f"{s}: {len(differ)} cells labelled differently in the container, e.g. {differ[:5]}"


def test_docker_cohort_every_task_ran_in_the_image(docker_cohort, built_image):
    _assert_ran_in_the_image(docker_cohort, built_image, COHORT_TASKS)
    _assert_published_files_belong_to_the_user(docker_cohort["outdir"])
    assert (docker_cohort["outdir"] / "cohort" / "cohort.model.pt").is_file()


def test_docker_cohort_annotates_both_samples_from_one_model(docker_cohort):
    """Cohort mode in the container (its labels are not compared with a run without container,
    to keep CI short: the per-sample comparison above covers every step's code path but MERGE)."""
    for s in SAMPLES:
        agree = accuracy(docker_cohort["outdir"] / s / f"{s}.annotated.h5ad")
        assert agree >= 0.90, f"cohort mode in docker, {s}: {agree:.3f} agree with obs['true_celltype']"


# --------------------------------------------------------------------------------------
# A missing image stops the run before any task, with one line
# --------------------------------------------------------------------------------------

def test_docker_run_with_a_missing_image_stops_before_any_task(tmp_path, nxf_home, client_dir, docker):
    missing = "cellassign-nf:no-such-version"
    result = nextflow(["run", str(REPO), "-profile", "test,docker", "--container_image", missing,
                       "--outdir", "results", "-w", "work"], tmp_path, nxf_env(nxf_home, extra_path=[client_dir]))
    line = stopped_before_any_task(result, tmp_path / "work", missing)
    assert "Build it with: scripts/build-images" in line, line


def test_apptainer_run_with_a_docker_name_stops_with_the_sif_recipe(tmp_path, nxf_home):
    result = nextflow(["run", str(REPO), "-profile", "test,apptainer", "--outdir", "results", "-w", "work"],
                      tmp_path, nxf_home)
    line = stopped_before_any_task(result, tmp_path / "work", IMAGE)
    assert f"apptainer build cellassign-nf_{VERSION}.sif docker-daemon://{IMAGE}" in line, line
    assert "--container_image /path/to/" in line, line
    missing_sif = tmp_path / "missing" / f"cellassign-nf_{VERSION}.sif"
    result = nextflow(["run", str(REPO), "-profile", "test,singularity", "--container_image", str(missing_sif),
                       "--outdir", "results", "-w", "work"], tmp_path, nxf_home)
    line = stopped_before_any_task(result, tmp_path / "work", str(missing_sif))
    assert "does not exist" in line and f"singularity build cellassign-nf_{VERSION}.sif docker-daemon://" in line, line


def test_apptainer_gpu_profile_resolves_the_one_image_and_nv(tmp_path, nxf_home):
    config = flat_config("apptainer,gpu", tmp_path, nxf_home)
    assert config["apptainer.enabled"] == "true" and config["apptainer.autoMounts"] == "true", config
    assert config["process.container"] == f"'{IMAGE}'", config
    assert not any(key.endswith("withLabel:process_gpu'.container") for key in config), config
    assert any("'--nv'" in value for key, value in config.items() if "containerOptions" in key), config
