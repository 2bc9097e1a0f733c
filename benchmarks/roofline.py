"""The roofline of the CPU likelihood: how many negative binomial terms per second (forward and
backward of a training step) this CPU can compute at best, and how close the fused kernel comes.

    python benchmarks/roofline.py                          # 20,000 x 120 x 8, minibatch 1,024
    python benchmarks/roofline.py --before /tmp/main/_nbkernel.cpython-311-x86_64-linux-gnu.so

The roofline is ``roofline.c``, compiled here with the system C compiler at the widest vectors
the CPU has (``-march=native``, 512-bit vectors on an AVX-512 CPU, where an AVX2 build is timed too):
the least arithmetic each term needs with the kernel's own exp, log, Stirling and digamma, on the
terms of a real minibatch (the project's simulator, as in bench.py), zero counts and non-zero
counts pre-sorted into separate arrays so that each does only the work its count needs, and
nothing else (no gather, no sum by type, no Python). The kernel is timed on the same minibatch
through ``kernels.fused_log_likelihood``, forward and backward; ``--before`` times other builds
of ``_nbkernel`` (e.g. the previous version) in the same run. Each figure is the median of
``--rounds`` alternating rounds, with the range.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import simulate_case  # noqa: E402

from cellassign_nf import kernels  # noqa: E402
from cellassign_nf.model import PHI_LOWER_BOUND, CellAssignModule, basis_means  # noqa: E402

KERNEL_DIR = HERE.parent / "src" / "cellassign_nf"
# setup.py's flags for the kernel (the roofline is compiled as the kernel is), as a shared library
FLAGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno", "-shared", "-fPIC"]


def cpu() -> tuple[str, list[str]]:
    """The CPU's name and its vector extensions."""
    name, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    wanted = ["avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"]
    return name, [f for f in wanted if f in flags]


def builds(flags: list[str]) -> dict[str, list[str]]:
    """Compiler flags of each build of the roofline: the widest vectors the CPU has, and AVX2 beside
    an AVX-512 CPU's."""
    widest = ["-march=native"] + (["-mprefer-vector-width=512"] if "avx512f" in flags else [])
    return {"widest": widest, **({"avx2": ["-march=x86-64-v3"]} if "avx512f" in flags else {})}


def build(tmp: Path, cc: str, flags: list[str]) -> dict[str, ctypes.CDLL]:
    """roofline.c compiled once per build (builds())."""
    libs = {}
    for name, extra in builds(flags).items():
        out = tmp / f"roofline_{name}.so"
        subprocess.run([cc, *FLAGS, *extra, f"-I{KERNEL_DIR}", str(HERE / "roofline.c"), "-o", str(out), "-lm"],
                       check=True)
        lib = ctypes.CDLL(str(out))
        lib.roof_run.restype = ctypes.c_double
        lib.roof_run.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                                         ctypes.c_double, ctypes.c_double, ctypes.c_double]\
            + [ctypes.c_void_p] * 3
        libs[name] = lib
    return libs


class Batch:
    """One minibatch of the case: the kernel's arguments, and its terms flattened for the roofline."""

    def __init__(self, n: int, g: int, c: int, batch_size: int):
        adata, rho = simulate_case(n, g, c, seed=0)
        x = torch.as_tensor(np.asarray(adata.X), dtype=torch.float32)
        log_s = torch.log(torch.as_tensor(adata.obs["size_factor"].to_numpy(), dtype=torch.float32))
        v, b = basis_means(float(x.max()))
        module = CellAssignModule(torch.as_tensor(rho.to_numpy(dtype=np.float32)), 0, v, b,
                                  generator=torch.Generator().manual_seed(0))
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:batch_size]
        xb, offset, col = x[idx], module.gene_offset(log_s[idx], None).detach(), module.column_constant().detach()
        self.lay = kernels.layout(module.n_genes, module.n_types, module.marker_gene, module.marker_type)
        self.args = (xb, offset.requires_grad_(), col.requires_grad_(), module.log_a.detach().clone().requires_grad_(),
                     self.lay, v, b, PHI_LOWER_BOUND)
        gene = torch.cat([torch.arange(module.n_genes), module.marker_gene])
        terms_x, terms_lm = xb[:, gene].flatten().numpy(), (offset[:, gene] + col).detach().flatten().numpy()
        zero = terms_x == 0
        self.n_terms, self.zero_share = terms_x.size, float(zero.mean())
        self.parts = [(np.ascontiguousarray(terms_x[m]), np.ascontiguousarray(terms_lm[m]), int(z))
                      for m, z in ((zero, 1), (~zero, 0))]
        self.a = module.log_a.detach().double().exp().numpy()
        self.v0, self.h = kernels._spacing(tuple(v), float(b))


def roof_seconds(lib: ctypes.CDLL, batch: Batch, threads: int) -> float:
    """Seconds for the roofline's forward and backward of all the minibatch's terms."""
    B = batch.a.size

    def run(t: int) -> None:
        for x, lm, zero in batch.parts:
            lo, hi = x.size * t // threads, x.size * (t + 1) // threads
            xs, lms = x[lo:hi], lm[lo:hi]
            grad = np.ones_like(xs)
            dl, dp, acc = np.empty_like(xs), np.empty_like(xs), np.zeros(B)
            lib.roof_run(xs.ctypes.data, lms.ctypes.data, grad.ctypes.data, xs.size, zero, batch.a.ctypes.data, B,
                         batch.v0, batch.h, PHI_LOWER_BOUND, dl.ctypes.data, dp.ctypes.data, acc.ctypes.data)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))  # warm-up (and the threads started)
        t0 = time.perf_counter()
        list(pool.map(run, range(threads)))
        return time.perf_counter() - t0


def kernel_seconds(batch: Batch, threads: int) -> float:
    """Seconds for the fused kernel's forward and backward on the minibatch, on ``threads`` threads
    with torch's own on one, as in training (kernels.owning_threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with kernels.owning_threads():
            out = kernels.fused_log_likelihood(*batch.args)
            grad = torch.ones_like(out)
            torch.autograd.grad(out, batch.args[1:4], grad)
            t0 = time.perf_counter()
            out = kernels.fused_log_likelihood(*batch.args)
            torch.autograd.grad(out, batch.args[1:4], grad)
            return time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def load_extension(path: str):
    """Another build of cellassign_nf._nbkernel, loaded beside ours."""
    spec = importlib.util.spec_from_file_location("_nbkernel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(fn, rounds: int, reps: int) -> list[float]:
    """fn() per round: the best of reps calls (a loaded machine only ever adds time)."""
    return [min(fn() for _ in range(reps)) for _ in range(rounds)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="20000x120x8", help="cells x markers x types (default 20000x120x8)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--reps", type=int, default=5, help="calls per round, the fastest kept (default 5)")
    p.add_argument("--before", action="append", default=[], metavar="SO",
                   help="another build of _nbkernel (.so) to time beside the current one, labelled by its folder's "
                        "name (repeatable)")
    p.add_argument("--cc", default="cc")
    args = p.parse_args(argv)
    if kernels.unavailable_reason():
        print(f"error: {kernels.unavailable_reason()}", file=sys.stderr)
        return 2
    name, flags = cpu()
    print(f"CPU: {name}; vector extensions: {' '.join(flags)}")
    n, g, c = (int(v) for v in args.case.split("x"))
    batch = Batch(n, g, c, args.batch_size)
    print(f"{n:,} cells x {g} markers x {c} types, minibatch {args.batch_size}: {batch.n_terms:,} terms, "
          f"{batch.zero_share:.1%} of them with x = 0; forward + backward; median [min-max] of {args.rounds} rounds "
          f"(each the best of {args.reps} calls)")
    ours = kernels._extension
    kernel_builds = {f"kernel {Path(so).parent.name}": lambda m=load_extension(so): m for so in args.before}
    kernel_builds["kernel"] = ours
    with tempfile.TemporaryDirectory() as tmp:
        libs = build(Path(tmp), args.cc, flags)
        for threads in (int(t) for t in args.threads.split(",")):
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for label, lib in libs.items():
                    times.setdefault(f"roofline ({label})", []).extend(
                        timed(lambda: roof_seconds(lib, batch, threads), 1, args.reps))
                for label, ext in kernel_builds.items():
                    kernels._extension = ext
                    try:
                        times.setdefault(label, []).extend(timed(lambda: kernel_seconds(batch, threads), 1, args.reps))
                    finally:
                        kernels._extension = ours
            report(times, batch.n_terms, threads)
    return 0


def report(times: dict[str, list[float]], n_terms: int, threads: int) -> None:
    """One line per timed thing: terms/s and, for the kernels, the share of the widest roofline."""
    roof = n_terms / statistics.median(times["roofline (widest)"])
    for label, t in times.items():
        rate = [n_terms / s for s in t]
        line = (f"{threads} thread(s) {label:22s} {statistics.median(rate) / 1e6:7.1f} M terms/s "
                f"[{min(rate) / 1e6:.1f}-{max(rate) / 1e6:.1f}]  {1e3 * statistics.median(t):6.2f} ms")
        if not label.startswith("roofline"):
            line += f"  {statistics.median(rate) / roof:.0%} of the roofline"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
