"""The whole pipeline on one simulated sample (or a cohort) at real size: each step's realtime,
peak RSS and memory request from the Nextflow trace, and the non-TRAIN steps against TRAIN.

    python benchmarks/pipeline.py                                   # 100,000 x 30,000, one sample
    python benchmarks/pipeline.py --cells 20000 --genes 5000        # smaller
    python benchmarks/pipeline.py --samples 5 --mode cohort         # 5 x 100,000 cells, one model

The counts come from the project's simulator (``cellassign_nf.simulate``): 120 marker genes of 10
types, the other genes at a low base expression so that about 11% of the matrix is non-zero (a
large Cell Ranger library). With ``--samples N`` the N samples are copies of one simulated sample
under N names (simulating takes ~4 minutes per 100,000 x 30,000 sample on 2 cores; the steps'
costs depend on the sizes, not on the values). Simulated data are kept in ``--data`` and reused
when their size matches. The run uses the default parameters, the local executor and
``scripts/nextflow``; nothing is timed against a target here: the figures are printed (and written
as JSON with ``--json``) for docs/performance.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OTHER_BETA0_MEAN = -2.6  # base expression of the non-marker genes: ~11% of the matrix non-zero
FIT_STEPS = ("TRAIN", "PREDICT")  # the model's fit: training, or the refit of a saved model (--model)
ASIDE_STEPS = ("DOUBLETS",)  # steps with targets of their own (docs/performance.md), also shown apart
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def simulate_sample(path: Path, cells: int, genes: int, markers: int, types: int, seed: int) -> None:
    """One simulated sample (uncompressed h5ad) and its panel (markers.csv beside it)."""
    from cellassign_nf.simulate import random_markers, simulate

    rho = random_markers(markers, types, seed=seed)
    adata = simulate(rho, n_cells=cells, n_other_genes=genes - markers, other_beta0_mean=OTHER_BETA0_MEAN,
                     seed=seed, gene_seed=seed)
    del adata.uns["simulation"]
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    rho.to_csv(path.parent / "markers.csv")
    (path.parent / "shape.json").write_text(json.dumps({"cells": cells, "genes": genes, "markers": markers,
                                                        "types": types, "nnz": int(adata.X.nnz)}))


def data_folder(root: Path, args: argparse.Namespace) -> Path:
    """The folder of the simulated sample of this size, simulated now unless already there."""
    folder = root / f"{args.cells}x{args.genes}x{args.markers}x{args.types}"
    if not (folder / "shape.json").exists():
        t0 = time.perf_counter()
        print(f"simulating {args.cells:,} cells x {args.genes:,} genes into {folder} ...", flush=True)
        simulate_sample(folder / "sample.h5ad", args.cells, args.genes, args.markers, args.types, seed=args.seed)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def parse_size(text: str) -> float:
    """A trace size ('1.5 GB', '800 MB', '-') in bytes (NaN when absent)."""
    m = re.match(r"^\s*([\d.]+)\s*([KMGT]?B)\s*$", text or "")
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_duration(text: str) -> float:
    """A trace duration ('1m 5s', '850ms', '2h 1m 3s') in seconds."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)\s*(ms|s|m|h|d)", text or ""):
        total += float(value) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


def trace_rows(outdir: Path) -> list[dict[str, str]]:
    traces = sorted((outdir / "pipeline_info").glob("execution_trace_*.txt"))
    with open(traces[-1], newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def step_table(rows: list[dict[str, str]]) -> list[dict]:
    """Per process: tasks, summed and longest realtime, the largest peak RSS and request."""
    steps: dict[str, dict] = {}
    for row in rows:
        if row["status"] not in ("COMPLETED", "CACHED"):
            continue
        name = row["process"].split(":")[-1]
        s = steps.setdefault(name, {"step": name, "tasks": 0, "realtime_s": 0.0, "longest_s": 0.0,
                                    "peak_rss_bytes": 0.0, "memory_bytes": 0.0})
        real = parse_duration(row["realtime"])
        s["tasks"] += 1
        s["realtime_s"] += real
        s["longest_s"] = max(s["longest_s"], real)
        s["peak_rss_bytes"] = max(s["peak_rss_bytes"], parse_size(row["peak_rss"]))
        s["memory_bytes"] = max(s["memory_bytes"], parse_size(row["memory"]))
    return list(steps.values())


def accuracy(outdir: Path, samples: list[str]) -> float:
    """The share of cells whose predicted type is the simulated one, over all samples."""
    import pandas as pd

    import anndata as ad
    from cellassign_nf.keys import CELLTYPE_KEY, TRUE_CELLTYPE_KEY

    right = total = 0
    for sample in samples:
        predicted = pd.read_csv(outdir / sample / f"{sample}.predictions.tsv", sep="\t", index_col=0)[CELLTYPE_KEY]
        obs = ad.read_h5ad(outdir / sample / f"{sample}.annotated.h5ad", backed="r").obs
        right += int((predicted.reindex(obs.index).astype(str) == obs[TRUE_CELLTYPE_KEY].astype(str)).sum())
        total += len(obs)
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=30_000)
    p.add_argument("--markers", type=int, default=120)
    p.add_argument("--types", type=int, default=10)
    p.add_argument("--samples", type=int, default=1, help="samples (copies of one simulated sample)")
    p.add_argument("--mode", choices=("per_sample", "cohort"), default="per_sample")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", type=Path, default=Path("bench-data"), help="where simulated samples are kept")
    p.add_argument("--run", type=Path, default=Path("bench-run"), help="launch folder (emptied first)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--cold", action="store_true",
                   help="do not warm the page cache first (by default the input is read once and the libraries "
                        "imported once before the run, as on a node that has just staged the sample)")
    p.add_argument("nextflow_args", nargs="*", help="more arguments for `nextflow run` (after --)")
    args = p.parse_args(argv)

    folder = data_folder(args.data.resolve(), args)
    shape = json.loads((folder / "shape.json").read_text())
    run = args.run.resolve()
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    samples = [f"sample{i + 1}" for i in range(args.samples)]
    for sample in samples:
        os.symlink(folder / "sample.h5ad", run / f"{sample}.h5ad")
    (run / "samplesheet.csv").write_text("sample,counts\n" + "".join(f"{s},{s}.h5ad\n" for s in samples))
    if not args.cold:  # the steps' figures should not depend on what the page cache held before
        with open(folder / "sample.h5ad", "rb") as fh:
            while fh.read(1 << 24):
                pass
        subprocess.run([sys.executable, "-c", "import anndata, scanpy, torch, matplotlib.pyplot, multiqc"], check=True)
    command = [str(REPO / "scripts" / "nextflow"), "run", str(REPO), "--input", "samplesheet.csv",
               "--markers", str(folder / "markers.csv"), "--outdir", "results", "-w", "work", "--mode", args.mode,
               *args.nextflow_args]
    print("running:", " ".join(command), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "NXF_ANSI_LOG": "false", "NXF_OFFLINE": "true"}
    result = subprocess.run(command, cwd=run, env=env)
    wall = time.perf_counter() - t0
    if result.returncode:
        print(f"the pipeline failed (exit {result.returncode}); see {run}/.nextflow.log", file=sys.stderr)
        return result.returncode

    steps = step_table(trace_rows(run / "results"))
    csr = shape["nnz"] * 8 + (shape["cells"] + 1) * 8  # float32 data + int32 indices + int64 indptr
    train = sum(s["realtime_s"] for s in steps if s["step"] in FIT_STEPS)
    other = sum(s["realtime_s"] for s in steps if s["step"] not in FIT_STEPS)
    rest = sum(s["realtime_s"] for s in steps if s["step"] not in FIT_STEPS + ASIDE_STEPS)
    report = sum(s["realtime_s"] for s in steps if s["step"] == "REPORT")

    def per_fit(seconds: float) -> float:
        return seconds / max(train, 1e-9)

    print(f"\n{args.samples} x {shape['cells']:,} cells x {shape['genes']:,} genes ({shape['nnz']:,} non-zero, "
          f"CSR {csr / 1e9:.2f} GB per sample), mode {args.mode}: wall {wall:.0f} s")
    print(f"{'step':<16}{'tasks':>6}{'realtime':>11}{'longest':>10}{'peak RSS':>11}{'asked':>9}{'RSS/CSR':>9}")
    for s in steps:
        print(f"{s['step']:<16}{s['tasks']:>6}{s['realtime_s']:>10.1f}s{s['longest_s']:>9.1f}s"
              f"{s['peak_rss_bytes'] / 1e9:>9.2f}GB{s['memory_bytes'] / 1e9:>7.1f}GB"
              f"{s['peak_rss_bytes'] / csr:>9.2f}")
    over = [s["step"] for s in steps if s["peak_rss_bytes"] > s["memory_bytes"] > 0]
    acc = accuracy(run / "results", samples)
    print(f"steps other than the fit {other:.1f} s = {per_fit(other):.2f} x the fit "
          f"({'/'.join(s['step'] for s in steps if s['step'] in FIT_STEPS)}, {train:.1f} s); "
          f"accuracy {acc:.4f}; over their request: {', '.join(over) or 'none'}")
    print(f"without {'/'.join(ASIDE_STEPS)}: {rest:.1f} s = {per_fit(rest):.2f} x the fit; "
          f"REPORT {report:.1f} s = {per_fit(report):.2f} x the fit")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "samples": args.samples, "mode": args.mode, "wall_s": wall,
                                         "csr_bytes": csr, "steps": steps, "accuracy": acc,
                                         "non_train_over_train": per_fit(other),
                                         "rest_over_train": per_fit(rest),
                                         "report_over_train": per_fit(report)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
