"""What the benchmark scripts share: the simulated data sets, running one worker in a fresh
process under a memory watchdog, the machine description, and the figures derived from a
worker's record. Imported by ``bench.py``, ``rbf_memory.py`` and ``report.py``; imports none of
them (no import circles).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VALIDATION_FRACTION = 0.1  # both sides' default


# ---------------------------------------------------------------------------------------------
# the data: the project's one simulator (cellassign_nf.simulate) with the benchmark's settings
# ---------------------------------------------------------------------------------------------
def simulate_case(n: int, g: int, c: int, seed: int):
    """``n`` cells x ``g`` markers x ``c`` types: markers over-expressed by a log-normal fold change
    around 3.5x, 10% of the markers shared by a second type, per-gene dispersion, type proportions
    drawn log-normal (at least 5 cells each), 300 non-marker genes, ``obs["size_factor"]`` = total
    counts over all genes / mean. Returns the marker-only AnnData (dense ``X``) and the markers."""
    from cellassign_nf.simulate import random_markers, simulate

    rho = random_markers(g, c, p_shared=0.1, seed=seed)
    adata = simulate(rho, n_cells=n, n_other_genes=300, seed=seed, fold_change=3.5, delta_sd=0.2,
                     beta0_mean=0.0, other_beta0_mean=1.0, phi=5.0, phi_sd=0.5, proportion_sd=0.5,
                     min_cells_per_type=5, size_factors="library", sparse=False)
    return adata[:, list(rho.index)].copy(), rho


def write_data(workdir: Path, n: int, g: int, c: int, seed: int) -> tuple[str, str]:
    """Simulate one case into ``workdir``: (h5ad path, markers CSV path)."""
    adata, rho = simulate_case(n, g, c, seed)
    data, markers = workdir / f"sim_{n}_{g}_{c}.h5ad", workdir / f"markers_{n}_{g}_{c}.csv"
    adata.write_h5ad(data)
    rho.to_csv(markers)
    return str(data), str(markers)


# ---------------------------------------------------------------------------------------------
# running one worker with a memory watchdog
# ---------------------------------------------------------------------------------------------
def _tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (Linux /proc), MiB."""
    total = 0.0
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return total


def run_worker(python: str, args: list[str], cap_mb: float, timeout_s: float, log,
               compile_cache: str | None = None) -> dict:
    """Run ``_worker.py`` with ``args``; kill it when its RSS passes ``cap_mb``. The worker gets
    empty compile caches (numba, torch) unless ``compile_cache`` names a shared one."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [python, str(HERE / "_worker.py"), *args, "--out", out]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    # cold compile caches for every worker: what a fresh container (one Nextflow task) pays
    cache = compile_cache or tempfile.mkdtemp(prefix="inductor-")
    env["TORCHINDUCTOR_CACHE_DIR"] = cache
    env["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")
    env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    sampled, killed = 0.0, None
    try:
        while proc.poll() is None:
            rss = _tree_rss_mb(proc.pid)
            sampled = max(sampled, rss)
            if rss > cap_mb:
                killed = f"killed at the memory cap ({cap_mb / 1024:.1f} GiB RSS)"
            elif time.perf_counter() - t0 > timeout_s:
                killed = f"killed at the time limit ({timeout_s:.0f} s)"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        output = proc.communicate()[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rec: dict = {}
    if not killed and proc.returncode == 0:
        try:
            rec = json.loads(Path(out).read_text())
        except (OSError, json.JSONDecodeError):
            rec = {}
    Path(out).unlink(missing_ok=True)
    if compile_cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    if not rec:
        rec = {"failed": killed or f"exit code {proc.returncode}", "log_tail": output[-3000:]}
        log(f"    FAILED: {rec['failed']}\n" + "\n".join("      " + l for l in output.strip().splitlines()[-15:]))
    rec["sampled_peak_rss_mb"] = sampled
    rec["wall_s"] = time.perf_counter() - t0
    if "python" in rec:
        rec["python"] = shown_path(rec["python"])
    return rec


# ---------------------------------------------------------------------------------------------
# derived figures
# ---------------------------------------------------------------------------------------------
def n_train(n: int) -> int:
    return n - int(round(n * VALIDATION_FRACTION))


def s_per_epoch(rec: dict) -> float | None:
    """Steady-state seconds per epoch: median of the epoch times after the first (warm-up) one;
    wall time of train() / epochs where no epoch times were recorded. None for runs cut to a
    few minibatches per epoch (memory-only runs)."""
    if not rec or rec.get("failed") or rec.get("limit_train_batches"):
        return None
    times = rec.get("epoch_times") or []
    if len(times) >= 2:
        rest = sorted(times[1:])
        return rest[len(rest) // 2] if len(rest) % 2 else 0.5 * (rest[len(rest) // 2 - 1] + rest[len(rest) // 2])
    if len(times) == 1:
        return times[0]
    if rec.get("epochs_run"):
        return rec["train_s"] / rec["epochs_run"]
    return None


def terms_per_s(rec: dict) -> float | None:
    spe = s_per_epoch(rec)
    if not spe:
        return None
    return n_train(rec["n_cells"]) * rec["n_markers"] * rec["n_types"] / spe


def mem_mb(rec: dict, device: str) -> float | None:
    if not rec or rec.get("failed"):
        return None
    if device.startswith("cuda"):
        return rec.get("cuda_peak_mb")
    return rec.get("peak_rss_mb")


# ---------------------------------------------------------------------------------------------
# the machine and the interpreters
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "nproc": os.cpu_count()}
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gib"] = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return info


def loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def has_module(python: str, module: str) -> bool:
    try:
        r = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def shown_path(path: str) -> str:
    """A path as the records show it: relative to the repository when inside it, so that a
    committed record names no folder of the machine that made it."""
    try:
        return str(Path(path).relative_to(REPO)) if Path(path).is_absolute() else path  # no resolve: venv links
    except ValueError:
        return path


def default_python(venv: str) -> str:
    p = REPO / venv / "bin" / "python"
    return str(p) if p.exists() else sys.executable
