"""A saved model on a new batch: accuracy as saved (--refit none), after the batch refit
(--refit batch), and of a model fitted on the new batch itself, for per-gene batch shifts of
growing size (docs/model.md section 8).

    python benchmarks/reuse.py                       # shifts 0, 1, 2, 3; seeds 0-2; 6,000 cells
    python benchmarks/reuse.py --shifts 3 --seeds 0 --cells 100000

Each run simulates a reference and a query batch from the CellAssign model (the same types and
delta; the query's per-gene log baseline shifted by Normal(0, shift)), trains on the reference and
annotates the query. Prints one row per run and the mean per shift.
"""
from __future__ import annotations

import argparse
import logging
import time

import pandas as pd

from cellassign_nf.api import CellAssign
from cellassign_nf.keys import TRUE_CELLTYPE_KEY
from cellassign_nf.simulate import random_markers, simulate


def accuracy(probabilities: pd.DataFrame, truth: pd.Series) -> float:
    return float((probabilities.idxmax(axis=1).to_numpy() == truth.loc[probabilities.index].astype(str)).mean())


def one_run(shift: float, seed: int, cells: int, markers: int, types: int) -> dict:
    rho = random_markers(markers, types, seed=seed)
    adata = simulate(rho, n_cells=cells, n_other_genes=300, batches=("reference", "query"), batch_effect=shift,
                     seed=seed + 3, size_factors="library")
    ref = adata[adata.obs["batch"] == "reference"].copy()
    query = adata[adata.obs["batch"] == "query"].copy()
    truth = query.obs[TRUE_CELLTYPE_KEY]
    model = CellAssign(ref, rho).train(progress=False)
    t0 = time.perf_counter()
    as_saved = accuracy(model.predict(query), truth)
    t1 = time.perf_counter()
    refitted = model.refit(query, progress=False)
    refit = accuracy(refitted.predict(), truth)
    t2 = time.perf_counter()
    fresh = accuracy(CellAssign(query, rho).train(progress=False).predict(), truth)
    t3 = time.perf_counter()
    return {"shift": shift, "seed": seed, "query_cells": query.n_obs, "as_saved": as_saved, "refit": refit,
            "fresh_fit": fresh, "refit_epochs": int(refitted.history_table["epoch"].max()),
            "predict_s": t1 - t0, "refit_s": t2 - t1, "fresh_fit_s": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shifts", default="0,1,2,3", help="sd of the query's per-gene log shift, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cells", type=int, default=6000, help="cells of both batches together")
    parser.add_argument("--markers", type=int, default=60)
    parser.add_argument("--types", type=int, default=6)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [one_run(float(s), int(seed), args.cells, args.markers, args.types)
            for s in args.shifts.split(",") for seed in args.seeds.split(",")]
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nmean per shift:")
    print(table.groupby("shift")[["as_saved", "refit", "fresh_fit", "refit_epochs", "refit_s", "fresh_fit_s"]]
          .mean().to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
