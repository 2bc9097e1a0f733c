"""Peak memory against the number of RBF centres B (phi's basis functions).

scvi-tools builds cells x genes x types x B tensors for phi, so its peak grows with B; ours
accumulates the B terms in place and should stay flat. One fresh process per point.

    python benchmarks/rbf_memory.py                 # B = 5, 10, 20, 40 on 4,000 x 200 x 20
    python benchmarks/rbf_memory.py --quick --skip-peer
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import default_python, has_module, machine_info, mem_mb, run_worker, write_data  # noqa: E402

FULL = dict(n=4_000, g=200, c=20, centres=(5, 10, 20, 40))
QUICK = dict(n=1_000, g=50, c=8, centres=(5, 10, 20))


def measure(ours_py: str, peer_py: str | None, quick: bool = False, device: str = "cpu",
            batch_size: int = 1024, cap_mb: float | None = None, log=print) -> dict:
    d = QUICK if quick else FULL
    cap_mb = cap_mb or machine_info().get("mem_gib", 24) * 1024 * 2 / 3
    out = {"n_cells": d["n"], "n_markers": d["g"], "n_types": d["c"], "batch_size": batch_size, "points": []}
    with tempfile.TemporaryDirectory(prefix="cellassign-rbf-") as tmp:
        data, markers = write_data(Path(tmp), d["n"], d["g"], d["c"], 0)
        base = ["--data", data, "--markers", markers, "--batch-size", str(batch_size), "--device", device,
                "--mode", "epochs", "--epochs", "1"]
        impls = [("ours", ours_py)] + ([("peer", peer_py)] if peer_py else [])
        for B in d["centres"]:
            pt = {"B": B}
            for impl, py in impls:
                extra = ["--limit-train-batches", "1"] if impl == "peer" else []
                log(f"  rbf: {impl} with B = {B}")
                rec = run_worker(py, ["--impl", impl, *base, "--n-centres", str(B), *extra], cap_mb, 1800, log)
                pt[impl] = mem_mb(rec, device)
                pt[f"{impl}_after_import"] = rec.get("rss_after_import_mb")
                pt[f"{impl}_failed"] = rec.get("failed")
            out["points"].append(pt)
    return out


def to_markdown(res: dict) -> str:
    L = [f"Peak memory against the number of RBF centres B ({res['n_cells']:,} cells × {res['n_markers']} markers "
         f"× {res['n_types']} types, minibatch {res['batch_size']}; one training step for the peer, one epoch "
         "for ours; Δ = peak − RSS after imports):\n",
         "| B | ours peak | ours Δ | peer peak | peer Δ |", "|---|---|---|---|---|"]

    def mib(x):
        return "–" if x is None else f"{x:.0f} MiB"

    for pt in res["points"]:
        cells = []
        for impl in ("ours", "peer"):
            m, b = pt.get(impl), pt.get(f"{impl}_after_import")
            if pt.get(f"{impl}_failed"):
                cells += [pt[f"{impl}_failed"], "–"]
            else:
                cells += [mib(m), mib(None if m is None or b is None else m - b)]
        L.append(f"| {pt['B']} | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--ours-python", default=None)
    p.add_argument("--peer-python", default=None)
    args = p.parse_args()
    ours = args.ours_python or default_python(".venv")
    peer = None if args.skip_peer else (args.peer_python or default_python(".venv-bench"))
    if peer and not has_module(peer, "scvi"):
        print(f"{peer} has no scvi-tools; measuring ours only", file=sys.stderr)
        peer = None
    res = measure(ours, peer, quick=args.quick, device=args.device)
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
