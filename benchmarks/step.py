"""Time one training step (one minibatch EM step: E step, likelihood, backward, Adam) of ours, by
path and number of threads, and the fused kernel's forward and backward passes alone.

    python benchmarks/step.py                      # 20,000 x 120 x 8, minibatch 1,024
    python benchmarks/step.py --case 100000x200x10 --threads 1,2,4

Each configuration runs ``--rounds`` times, alternating, after a warm-up; the median is printed
with the range, so a noisy machine shows as a wide range. Ours only, in this process (no peer):
for the comparison with scvi-tools see ``bench.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import simulate_case  # noqa: E402

from cellassign_nf import kernels  # noqa: E402
from cellassign_nf.model import PHI_LOWER_BOUND, CellAssignModule, basis_means, log_factorial  # noqa: E402
from cellassign_nf.optim import Adam  # noqa: E402
from cellassign_nf.predict import ModelData  # noqa: E402
from cellassign_nf.train import _em_step  # noqa: E402


def time_steps(module: CellAssignModule, data: ModelData, idx: torch.Tensor, n_train: int, steps: int) -> float:
    """Seconds per training step (after 5 warm-up steps)."""
    opt = Adam(module.parameters(), lr=0.1)
    ll = torch.zeros((), dtype=torch.float64)
    for _ in range(5):
        _em_step(module, opt, data, idx, n_train, ll)
    t0 = time.perf_counter()
    for _ in range(steps):
        _em_step(module, opt, data, idx, n_train, ll)
    return (time.perf_counter() - t0) / steps


def time_kernel(module: CellAssignModule, data: ModelData, idx: torch.Tensor, steps: int) -> tuple[float, float]:
    """Seconds of the fused kernel's forward and of its backward pass on one minibatch."""
    x, log_s, D = data.batch(idx)
    lay = kernels.layout(module.n_genes, module.n_types, module.marker_gene, module.marker_type)
    args = (x, module.gene_offset(log_s, D).detach().requires_grad_(), module.column_constant().detach().requires_grad_(),
            module.log_a.detach().clone().requires_grad_(), lay, module.v, module.b, PHI_LOWER_BOUND)
    out = kernels.fused_log_likelihood(*args)
    grad = torch.ones_like(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = kernels.fused_log_likelihood(*args)
    t1 = time.perf_counter()
    for _ in range(steps):
        torch.autograd.grad(out, args[1:4], grad, retain_graph=True)
    return (t1 - t0) / steps, (time.perf_counter() - t1) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="20000x120x8", help="cells x markers x types (default 20000x120x8)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30, help="timed steps per round (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = p.parse_args(argv)
    n, g, c = (int(v) for v in args.case.split("x"))
    if kernels.unavailable_reason():
        print(f"error: {kernels.unavailable_reason()}", file=sys.stderr)
        return 2
    adata, rho = simulate_case(n, g, c, seed=0)
    x = torch.as_tensor(np.asarray(adata.X), dtype=torch.float32)
    log_s = torch.log(torch.as_tensor(adata.obs["size_factor"].to_numpy(), dtype=torch.float32))
    data = ModelData(x, log_s, None, log_factorial(x))
    v, b = basis_means(float(x.max()))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.batch_size]
    module = CellAssignModule(torch.as_tensor(rho.to_numpy(dtype=np.float32)), 0, v, b,
                              generator=torch.Generator().manual_seed(0))
    print(f"{n:,} cells x {g} markers x {c} types ({module.n_genes + module.n_markers} columns), minibatch "
          f"{args.batch_size}; median [min-max] over {args.rounds} rounds of {args.steps} steps")
    configs = [(path, int(t)) for t in args.threads.split(",") for path in ("plain", "fused")]
    times: dict = {cfg: [] for cfg in configs}
    kernel: dict = {int(t): [] for t in args.threads.split(",")}
    before = torch.get_num_threads()
    try:
        for _ in range(args.rounds):
            for path, threads in configs:
                torch.set_num_threads(threads)
                module.fused = path == "fused"
                with kernels.owning_threads() if module.fused else contextlib.nullcontext():
                    times[(path, threads)].append(time_steps(module, data, idx, n, args.steps))
                    if module.fused:
                        kernel[threads].append(time_kernel(module, data, idx, args.steps))
    finally:
        torch.set_num_threads(before)
    for path, threads in configs:
        t = times[(path, threads)]
        line = f"{path:5s} {threads} thread(s): {1e3 * statistics.median(t):6.2f} ms/step [{1e3 * min(t):.2f}-{1e3 * max(t):.2f}]"
        if path == "fused":
            fwd = statistics.median(k[0] for k in kernel[threads])
            bwd = statistics.median(k[1] for k in kernel[threads])
            line += f"; kernel forward {1e3 * fwd:.2f} ms, backward {1e3 * bwd:.2f} ms"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
