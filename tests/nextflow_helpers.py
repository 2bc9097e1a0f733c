"""Helpers of the tests that run the Nextflow pipeline (scripts/nextflow) and read what it leaves.

Every pipeline test starts Nextflow through `nextflow(...)` with an environment from `nxf_env(...)`;
a test that needs another environment (the Docker client first on PATH, a PATH without the venv,
SLURM_CONF) says so through nxf_env's parameters. The session-scoped `nxf_home` fixture is in
tests/conftest.py.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEXTFLOW = REPO / "scripts" / "nextflow"
RUN_TIMEOUT = 1800  # seconds: the limit of one whole pipeline run

# The samples of -profile test (assets/demo), and the tasks of one run of it in each mode
DEMO_SAMPLES = ("sample1", "sample2")
PER_SAMPLE_TASKS = {"QC": 2, "DOUBLETS": 2, "SIZE_FACTORS": 2, "DESIGN": 2, "CHECK_PANEL": 1, "TRAIN": 2, "ANNOTATE": 2,
                    "DIAGNOSE": 2, "REPORT": 2, "CELLTYPE_COUNTS": 1, "MULTIQC": 1}
# the cohort runs of the tests (--layer X: the main matrix, named; --other false: the one model
# without the 'other' type, which per-sample runs have by default: tests/test_pipeline.py)
COHORT_ARGS = ("--mode", "cohort", "--layer", "X", "--other", "false")
COHORT_TASKS = {"QC": 2, "DOUBLETS": 2, "MERGE": 1, "SIZE_FACTORS": 1, "DESIGN": 1, "CHECK_PANEL": 1, "TRAIN": 1,
                "ANNOTATE": 2, "DIAGNOSE": 2, "REPORT": 2, "CELLTYPE_COUNTS": 1, "MULTIQC": 1}
# per-sample mode with --model: the model checked once (CHECK_MODEL instead of CHECK_PANEL), PREDICT instead of TRAIN
MODEL_TASKS = {**{k: v for k, v in PER_SAMPLE_TASKS.items() if k not in ("CHECK_PANEL", "TRAIN")}, "CHECK_MODEL": 1,
               "PREDICT": 2}


def nxf_env(nxf_home: Path, extra_path: Iterable[Path | str] = (), **overrides: str | None) -> dict[str, str]:
    """The environment of a Nextflow run: this process's, with NXF_HOME, offline, no ANSI log.

    The tasks call `cellassign-nf` and `multiqc` from PATH, so the folder of the interpreter running
    the tests and the project's .venv/bin come first on it. `overrides` set variables (PATH
    included) after that; None removes one. `extra_path` goes before everything on PATH.
    """
    env = os.environ.copy()
    path = [str(Path(sys.executable).parent)]
    if (REPO / ".venv" / "bin").is_dir():
        path.append(str(REPO / ".venv" / "bin"))
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    env["NXF_HOME"] = str(nxf_home)
    env["NXF_OFFLINE"] = "true"
    env["NXF_ANSI_LOG"] = "false"
    env.setdefault("NXF_OPTS", "-Xms64m -Xmx1g")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if extra_path:
        env["PATH"] = os.pathsep.join([*map(str, extra_path), env["PATH"]])
    return env


def nextflow(args: list[str], cwd: Path, nxf_home_or_env: Path | Mapping[str, str],
             timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """scripts/nextflow with `args` in `cwd`, to the end; the result has the wall time as `.wall_s`.

    `nxf_home_or_env`: an NXF_HOME folder (the environment is nxf_env(that folder)) or a whole
    environment."""
    env = dict(nxf_home_or_env) if isinstance(nxf_home_or_env, Mapping) else nxf_env(Path(nxf_home_or_env))
    start = time.monotonic()
    result = subprocess.run([str(NEXTFLOW), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    result.wall_s = time.monotonic() - start  # type: ignore[attr-defined]
    return result


def run_pipeline(launch: Path, nxf_home_or_env: Path | Mapping[str, str], args: list[str],
                 timeout: int = RUN_TIMEOUT) -> dict:
    """`nextflow run <the repository> <args> --outdir results -w work` in `launch`, which must succeed.

    Returns {"launch", "outdir", "work", "result"}."""
    result = nextflow(["run", str(REPO), *args, "--outdir", "results", "-w", "work"], launch, nxf_home_or_env,
                      timeout=timeout)
    assert result.returncode == 0, explain(result)
    return {"launch": launch, "outdir": launch / "results", "work": launch / "work", "result": result}


def explain(result: subprocess.CompletedProcess) -> str:
    """An assertion message: the exit status and the ends of stdout and stderr."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"


def trace(outdir: Path, newest: bool = True) -> list[dict[str, str]]:
    """The rows of the run's execution trace (the newest run's, or with newest=False the first's)."""
    traces = sorted((outdir / "pipeline_info").glob("execution_trace_*.txt"))
    assert traces, f"no execution trace in {outdir / 'pipeline_info'}"
    with open(traces[-1] if newest else traces[0], newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def step(row: Mapping[str, str]) -> str:
    """The process of a trace row without its workflow prefix: CELLASSIGN:TRAIN -> TRAIN."""
    return row["process"].split(":")[-1]


def process_counts(trace_rows: Iterable[Mapping[str, str]]) -> dict[str, int]:
    """How many trace rows each process has."""
    counts: dict[str, int] = {}
    for row in trace_rows:
        counts[step(row)] = counts.get(step(row), 0) + 1
    return counts


def task_dirs(workdir: Path) -> list[Path]:
    """The task folders of a work dir (none when it does not exist)."""
    return [p for p in workdir.glob("??/*") if p.is_dir()] if workdir.exists() else []


def stopped_before_any_task(result: subprocess.CompletedProcess, workdir: Path, naming: str) -> str:
    """Assert that the run failed with one line naming `naming`, no Java stack trace and no task
    started; returns that line."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    lines = [line for line in output.splitlines() if naming in line]
    assert len(lines) == 1, output
    assert "Exception" not in output and "\tat " not in output, output
    assert task_dirs(workdir) == [], "a task was started"
    return lines[0]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def accuracy(annotated_h5ad: Path) -> float:
    """The share of cells whose assigned type (obs[CELLTYPE_KEY]) is their simulated one."""
    import anndata

    from cellassign_nf.keys import CELLTYPE_KEY, TRUE_CELLTYPE_KEY

    adata = anndata.read_h5ad(annotated_h5ad)
    predicted = adata.obs[CELLTYPE_KEY].astype(str).to_numpy()
    truth = adata.obs[TRUE_CELLTYPE_KEY].astype(str).to_numpy()
    return float((predicted == truth).mean())


def flat_config(profile: str, cwd: Path, nxf_home: Path) -> dict[str, str]:
    """`nextflow config -profile <profile> -o flat` of the pipeline, as {key: value as printed};
    a multi-line value (a closure) keeps its continuation lines."""
    result = nextflow(["config", str(REPO), "-profile", profile, "-o", "flat"], cwd, nxf_home)
    assert result.returncode == 0, explain(result)
    config: dict[str, str] = {}
    key = None
    for line in result.stdout.splitlines():
        match = re.match(r"^([A-Za-z0-9_.'$:-]+) = (.*)$", line)
        if match:
            key = match.group(1)
            config[key] = match.group(2)
        elif key:  # continuation of a multi-line closure
            config[key] += "\n" + line
    return config
