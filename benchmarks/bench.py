"""Benchmark: our CellAssign against scvi-tools' ``scvi.external.CellAssign`` on the same
simulated data, same minibatch size, same number of epochs.

    python benchmarks/bench.py --out docs/performance.md          # full run (~20 min on 2 CPU cores)
    python benchmarks/bench.py --quick --out /tmp/perf.md          # smoke test (~1-2 min)

Every measurement runs in its own subprocess (ours under our interpreter, the peer under the
one that has scvi-tools, by default ``.venv-bench/bin/python``), so peak-memory figures never mix.
See docs/performance.md for the method and the latest results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    default_python, has_module, loadavg, machine_info, run_worker, s_per_epoch, shown_path, terms_per_s, write_data,
)
from rbf_memory import measure  # noqa: E402
from report import render_markdown, render_plot  # noqa: E402

# name -> (cells, markers, types, epochs for the per-epoch figures, extra)
FULL_CASES = {
    "20k": dict(n=20_000, g=120, c=8, epochs=4, e2e=True, max_epochs=100),
    "100k": dict(n=100_000, g=200, c=10, epochs=3),
    "wide": dict(n=5_000, g=2_000, c=70, epochs=1, peer_limit_batches=1, memory=True,
                 batch_sweep=[64, 128, 256]),
    # GPU size (target: one epoch in under 1 s on an H100); not in the default set
    "1m": dict(n=1_000_000, g=500, c=30, epochs=2),
}
QUICK_CASES = {
    "20k": dict(n=2_000, g=30, c=4, epochs=3, e2e=True, max_epochs=60),
    "100k": dict(n=5_000, g=50, c=5, epochs=2),
    "wide": dict(n=1_000, g=200, c=20, epochs=1, peer_limit_batches=1, memory=True, batch_sweep=[64, 256]),
    "1m": dict(n=20_000, g=100, c=10, epochs=2),
}
FULL_SCALING = dict(base=(20_000, 120, 8), factors=(0.5, 1.0, 2.0), epochs=4)
QUICK_SCALING = dict(base=(2_000, 30, 4), factors=(0.5, 1.0, 2.0), epochs=2)
ALL_CASES = ["20k", "100k", "wide", "scaling", "threads", "rbf", "1m"]
DEFAULT_CASES = ["20k", "100k", "wide", "scaling", "threads", "rbf"]  # 1m: the GPU case, ask for it


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the report here (Markdown) plus a PNG and a JSON beside it")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test in a minute or two")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--skip-peer", action="store_true", help="measure ours only")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                   help=f"comma-separated subset of {','.join(ALL_CASES)} (default: {','.join(DEFAULT_CASES)})")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-epochs", type=int, default=None,
                   help="cap for the end-to-end fits with early stopping (default 400, --quick 60)")
    p.add_argument("--ours-python", default=None, help="interpreter with cellassign_nf (default .venv/bin/python)")
    p.add_argument("--peer-python", default=None, help="interpreter with scvi-tools (default .venv-bench/bin/python)")
    p.add_argument("--mem-cap-gib", type=float, default=None,
                   help="kill a worker whose RSS passes this (default 2/3 of the machine's memory)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker before it is killed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-e2e", action="store_true", help="per-epoch figures only (skip the end-to-end fits)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the per-epoch runs (default: per case)")
    args = p.parse_args(argv)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {ALL_CASES}")
    case_defs = QUICK_CASES if args.quick else FULL_CASES
    scaling = QUICK_SCALING if args.quick else FULL_SCALING
    info = machine_info()
    info["loadavg_start"] = loadavg()
    cap_mb = (args.mem_cap_gib * 1024) if args.mem_cap_gib else info.get("mem_gib", 24) * 1024 * 2 / 3
    ours_py = args.ours_python or default_python(".venv")
    peer_py = args.peer_python or default_python(".venv-bench")
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    if not has_module(ours_py, "cellassign_nf"):
        print(f"error: {ours_py} cannot import cellassign_nf; install the package (pip install -e .) "
              "or pass --ours-python", file=sys.stderr)
        return 2
    run_peer = not args.skip_peer
    if run_peer and not has_module(peer_py, "scvi"):
        print(f"error: {peer_py} cannot import scvi-tools. Install the peer (pip install '.[bench]', best in a "
              "separate venv: python3 -m venv .venv-bench && .venv-bench/bin/pip install '.[bench]') or pass "
              "--peer-python or --skip-peer", file=sys.stderr)
        return 2

    common = ["--batch-size", str(args.batch_size), "--device", args.device, "--seed", str(args.seed)]
    results: dict = {"machine": info, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "device": args.device, "batch_size": args.batch_size, "quick": args.quick,
                     "ours_python": shown_path(ours_py), "peer_python": shown_path(peer_py) if run_peer else None,
                     "mem_cap_mb": cap_mb, "cases": {}, "scaling": []}
    impls = [("ours", ours_py)] + ([("peer", peer_py)] if run_peer else [])

    with tempfile.TemporaryDirectory(prefix="cellassign-bench-") as tmp:
        workdir = Path(tmp)
        for name in [c for c in cases if c not in ("scaling", "threads", "rbf")]:
            d = dict(case_defs[name])
            if args.epochs:
                d["epochs"] = args.epochs
            log(f"case {name}: simulating {d['n']:,} cells x {d['g']:,} markers x {d['c']} types")
            data, markers = write_data(workdir, d["n"], d["g"], d["c"], args.seed)
            base = ["--data", data, "--markers", markers, *common]
            case = {"n_cells": d["n"], "n_markers": d["g"], "n_types": d["c"], "epochs": d["epochs"],
                    "memory": bool(d.get("memory"))}
            for impl, py in impls:
                extra = ["--mode", "epochs", "--epochs", str(d["epochs"])]
                if impl == "peer" and d.get("peer_limit_batches"):
                    extra += ["--limit-train-batches", str(d["peer_limit_batches"])]
                log(f"  {impl}: {d['epochs']} epoch(s), early stopping off")
                rec = run_worker(py, ["--impl", impl, *base, *extra], cap_mb, args.timeout, log)
                case[f"{impl}_epochs"] = rec
                log(f"    s/epoch {s_per_epoch(rec)}  peak RSS {rec.get('peak_rss_mb')} MiB")
                if d.get("e2e") and not args.no_e2e:
                    max_epochs = args.max_epochs or d.get("max_epochs", 400)
                    log(f"  {impl}: end to end, early stopping, max {max_epochs} epochs")
                    rec = run_worker(py, ["--impl", impl, *base, "--mode", "e2e", "--max-epochs", str(max_epochs)],
                                     cap_mb, args.timeout, log)
                    case[f"{impl}_e2e"] = rec
                    log(f"    {rec.get('e2e_s')} s, {rec.get('epochs_run')} epochs, accuracy {rec.get('accuracy')}")
                for bs in d.get("batch_sweep", []) if d.get("memory") else []:
                    log(f"  {impl}: memory at minibatch {bs}")
                    sweep = ["--data", data, "--markers", markers, "--batch-size", str(bs), "--device", args.device,
                             "--mode", "epochs", "--epochs", "1"]
                    if impl == "peer":
                        sweep += ["--limit-train-batches", "1"]
                    rec = run_worker(py, ["--impl", impl, *sweep], cap_mb, args.timeout, log)
                    case.setdefault(f"{impl}_sweep", []).append({"batch_size": bs, **rec})
            results["cases"][name] = case

        if "scaling" in cases:
            n0, g0, c0 = scaling["base"]
            points = {("base", 1.0): (n0, g0, c0)}
            for f in scaling["factors"]:
                points[("cells", f)] = (int(n0 * f), g0, c0)
                points[("markers", f)] = (n0, int(g0 * f), c0)
                points[("types", f)] = (n0, g0, max(2, int(round(c0 * f))))
            done: dict = {}
            for (axis, f), (n, g, c) in points.items():
                if (n, g, c) in done:
                    rec = done[(n, g, c)]
                else:
                    log(f"scaling: ours at {n:,} x {g} x {c}, {scaling['epochs']} epochs")
                    data, markers = write_data(workdir, n, g, c, args.seed)
                    # steady-state time only (first epoch dropped): share one compile cache
                    rec = run_worker(ours_py, ["--impl", "ours", "--data", data, "--markers", markers, *common,
                                               "--mode", "epochs", "--epochs", str(scaling["epochs"])],
                                     cap_mb, args.timeout, log, compile_cache=str(workdir / "inductor-shared"))
                    done[(n, g, c)] = rec
                if axis != "base":
                    results["scaling"].append({"axis": axis, "factor": f, "n_cells": n, "n_markers": g,
                                               "n_types": c, "s_per_epoch": s_per_epoch(rec),
                                               "terms_per_s": terms_per_s(rec), "peak_rss_mb": rec.get("peak_rss_mb")})

        if "threads" in cases:
            n0, g0, c0 = scaling["base"]
            data, markers = write_data(workdir, n0, g0, c0, args.seed)
            most = max(2, int(info.get("nproc") or 2))
            runs = [(t, "auto") for t in range(1, most + 1)] + [(most, "off")]
            for threads, fuse in runs:
                log(f"threads: ours at {n0:,} x {g0} x {c0}, {threads} thread(s), fuse={fuse}")
                rec = run_worker(ours_py, ["--impl", "ours", "--data", data, "--markers", markers, *common,
                                           "--mode", "epochs", "--epochs", str(scaling["epochs"]),
                                           "--threads", str(threads), "--fuse", fuse], cap_mb, args.timeout, log)
                results.setdefault("threads", []).append({"threads": threads, "fuse": fuse, "n_cells": n0,
                                                          "n_markers": g0, "n_types": c0,
                                                          "s_per_epoch": s_per_epoch(rec)})

        if "rbf" in cases:
            log("rbf: peak memory against the number of RBF centres B")
            results["rbf"] = measure(ours_py, peer_py if run_peer else None, quick=args.quick, device=args.device,
                                     batch_size=args.batch_size, cap_mb=cap_mb, log=log)

    results["total_s"] = time.perf_counter() - start
    results["machine"]["loadavg_end"] = loadavg()
    results["versions"] = collect_versions(results)
    md = render_markdown(results, cmd="python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print()
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        try:
            render_plot(results, png)
            md = md.replace("<!-- PLOT -->", f"![benchmark plot]({png.name})")
        except Exception as exc:  # matplotlib missing: keep the table
            log(f"no plot: {exc}")
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        out.write_text(md)
        log(f"wrote {out}, {png.name} and {out.with_suffix('.json').name}")
    log(f"done in {results['total_s']:.0f} s")
    return 0


def collect_versions(results: dict) -> dict:
    v: dict = {}
    for case in results["cases"].values():
        for key, rec in case.items():
            if isinstance(rec, dict) and rec.get("impl"):
                v.setdefault(rec["impl"], {"torch": rec.get("torch"), "version": rec.get("impl_version"),
                                           "threads": rec.get("threads")})
    return v


if __name__ == "__main__":
    sys.exit(main())
