"""Marker diagnostics: the false-alarm rate on clean simulations and the time the diagnostics add.

With ``--timing-cells N`` it also times the checks on N cells x 1,540 genes (40 markers over 8
types, the cells labelled with their true types): the checks before training, then all of
``diagnose``.

Each seed draws a random panel (``--markers`` genes over ``--types`` types, 15% of the genes
shared by a second type), simulates ``--cells`` cells with unequal type proportions and library
size factors, fits CellAssign with the default settings, labels the cells (min_prob 0.5) and
runs the full diagnostics (pre-flight, post-fit, candidates). Any warning is a false alarm:
the data separate the types by construction. Prints one line per seed and a summary.

    python benchmarks/diagnostics.py --seeds 20
    python benchmarks/diagnostics.py --seeds 0 --timing-cells 20000
"""
from __future__ import annotations

import argparse
import logging
import time

import pandas as pd

from cellassign_nf.api import CellAssign
from cellassign_nf.diagnostics import check_markers, diagnose
from cellassign_nf.predict import assign_labels
from cellassign_nf.simulate import random_markers, simulate


def one_seed(seed: int, cells: int, markers: int, types: int) -> tuple[list[str], float, float]:
    rho = random_markers(markers, types, p_shared=0.15, seed=seed)
    adata = simulate(rho, n_cells=cells, n_other_genes=500, proportion_sd=0.8, size_factors="library", seed=seed)
    model = CellAssign(adata, rho, size_factor_key="size_factor").train(progress=False)
    labels = assign_labels(model.predict(), 0.5)["cellassign_celltype"]
    adata.obs["cellassign_celltype"] = pd.Categorical(labels.reindex(adata.obs_names).fillna("unassigned"))
    accuracy = float((adata.obs["cellassign_celltype"].astype(str) == adata.obs["true_celltype"].astype(str)).mean())
    t0 = time.perf_counter()
    diag = diagnose(adata, rho)
    return [f"{f.flag}: {f.name}" for f in diag.warnings], time.perf_counter() - t0, accuracy


def timing(cells: int) -> str:
    rho = random_markers(40, 8, p_shared=0.15, seed=0)
    adata = simulate(rho, n_cells=cells, n_other_genes=1500, proportion_sd=0.8, seed=0)
    adata.obs["cellassign_celltype"] = adata.obs["true_celltype"].astype(str)
    diagnose(adata, rho)  # warm-up: the first call imports scanpy's ranking
    t0 = time.perf_counter()
    check_markers(adata, rho)
    t1 = time.perf_counter()
    diagnose(adata, rho)
    t2 = time.perf_counter()
    return (f"{cells} cells x {adata.n_vars} genes x 8 types: checks before training {t1 - t0:.2f} s, "
            f"all of diagnose {t2 - t1:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--markers", type=int, default=40)
    parser.add_argument("--types", type=int, default=8)
    parser.add_argument("--timing-cells", type=int, default=0, help="also time the checks on this many cells")
    args = parser.parse_args()
    logging.getLogger("cellassign_nf").setLevel(logging.ERROR)
    if args.timing_cells:
        print(timing(args.timing_cells), flush=True)
    alarms, times = 0, []
    for seed in range(args.seeds):
        warnings, seconds, accuracy = one_seed(seed, args.cells, args.markers, args.types)
        alarms += bool(warnings)
        times.append(seconds)
        print(f"seed {seed:3d}: accuracy {accuracy:.3f}, diagnostics {seconds:5.2f} s, "
              f"warnings: {'; '.join(warnings) or 'none'}", flush=True)
    if not args.seeds:
        return
    print(f"\n{args.seeds} clean simulations ({args.cells} cells x {args.markers} markers x {args.types} types): "
          f"{alarms} with a warning (false-alarm rate {alarms / args.seeds:.1%}); diagnostics took "
          f"{min(times):.2f}-{max(times):.2f} s (median {sorted(times)[len(times) // 2]:.2f} s)")


if __name__ == "__main__":
    main()
