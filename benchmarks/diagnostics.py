"""Marker diagnostics: false alarms on clean simulations and on rare types, and the time the checks add.

With ``--timing-cells N`` it also times the checks on N cells x 1,540 genes (40 markers over 8
types, the cells labelled with their true types): the checks before training, then all of
``diagnose``.

Each seed draws a random panel (``--markers`` genes over ``--types`` types, 15% of the genes
shared by a second type), simulates ``--cells`` cells with unequal type proportions and library
size factors, fits CellAssign with the default settings, labels the cells (min_prob 0.5) and
runs the full diagnostics (pre-flight, post-fit, candidates). Any warning is a false alarm:
the data separate the types by construction. Prints one line per seed and a summary.

Then the rare types (``--rare-seeds``, the checks before training only): each seed draws a panel
of 40 markers over 10 types, two types at 1-5% of the cells (drawn uniformly), the other eight
sharing the rest evenly, and 4 genes without a type effect ("flat") listed as markers too. Every
gene is expressed in every cell (about 33 counts at the mean library size, the sizes varying),
each marker 5 to 7 times higher in its types, so the markers are detected almost everywhere.
The sample sizes cycle through 1,000, 5,000, 20,000 and 100,000 cells. A ``ubiquitous`` flag on
a marker is a false alarm; one on a flat gene is right (the summary counts those flagged).

    python benchmarks/diagnostics.py --seeds 20
    python benchmarks/diagnostics.py --seeds 0 --rare-seeds 20
    python benchmarks/diagnostics.py --seeds 0 --rare-seeds 0 --timing-cells 20000
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pandas as pd

from cellassign_nf.api import CellAssign
from cellassign_nf.diagnostics import check_markers, diagnose
from cellassign_nf.predict import assign_labels
from cellassign_nf.settings import DiagnosticThresholds
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


RARE_SIZES = (1_000, 5_000, 20_000, 100_000)
N_FLAT = 4


def rare_seed(seed: int) -> tuple[int, list[float], np.ndarray]:
    """Cells, the two rare types' shares and the counts: markers detected in more than
    ``max_detection`` of cells, of them flagged ``ubiquitous`` (false alarms), those of the two
    rare types, of them flagged, flat genes, of them flagged."""
    rng = np.random.default_rng(1000 + seed)
    cells = RARE_SIZES[seed % len(RARE_SIZES)]
    rho = random_markers(40, 10, p_shared=0.15, seed=seed)
    flat = [f"flat_{i}" for i in range(N_FLAT)]
    rare = rng.uniform(0.01, 0.05, 2)
    proportions = np.concatenate([rare, np.full(8, (1 - rare.sum()) / 8)])
    genes = rho.reindex(list(rho.index) + flat, fill_value=0)  # the flat genes: no type effect
    adata = simulate(genes, n_cells=cells, n_other_genes=500, proportions=proportions, fold_change=6, delta_sd=0.05,
                     beta0_mean=3.5, beta0_sd=0.5, seed=seed)
    for i, gene in enumerate(flat):  # listed as markers of common types
        genes.loc[gene, genes.columns[2 + i]] = 1
    table = check_markers(adata, genes, quiet=True).markers
    everywhere = table["detection"] > DiagnosticThresholds().max_detection
    ubiquitous = table["status"] == "ubiquitous"
    is_flat = table.index.isin(flat)
    of_rare = table.index.isin(rho.index[rho.iloc[:, :2].to_numpy().any(axis=1)])
    marker = everywhere & ~is_flat
    counts = [marker, marker & ubiquitous, marker & of_rare, marker & of_rare & ubiquitous, is_flat,
              is_flat & ubiquitous]
    return cells, [float(x) for x in rare], np.array([int(c.sum()) for c in counts])


def rare_cases(seeds: int) -> None:
    totals = np.zeros(6, dtype=int)
    for seed in range(seeds):
        cells, rare, n = rare_seed(seed)
        totals += n
        print(f"rare seed {seed:3d}: {cells:6d} cells, rare types at {rare[0]:.1%} and {rare[1]:.1%}: flagged "
              f"ubiquitous {n[1]} of {n[0]} markers detected everywhere ({n[3]} of the rare types' {n[2]}), "
              f"{n[5]} of {n[4]} flat genes", flush=True)
    if seeds:
        print(f"\n{seeds} simulations with two types at 1-5% of the cells ({', '.join(map(str, RARE_SIZES))} "
              f"cells x 40 markers x 10 types): false ubiquitous alarms {totals[1]} of {totals[0]} markers detected in "
              f"more than 98% of cells ({totals[3]} of the rare types' {totals[2]}); flat genes flagged ubiquitous "
              f"{totals[5]} of {totals[4]}")


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
    parser.add_argument("--rare-seeds", type=int, default=20, help="rare-type cases (checks before training)")
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
    if args.seeds:
        print(f"\n{args.seeds} clean simulations ({args.cells} cells x {args.markers} markers x {args.types} types): "
              f"{alarms} with a warning (false-alarm rate {alarms / args.seeds:.1%}); diagnostics took "
              f"{min(times):.2f}-{max(times):.2f} s (median {sorted(times)[len(times) // 2]:.2f} s)")
    rare_cases(args.rare_seeds)


if __name__ == "__main__":
    main()
