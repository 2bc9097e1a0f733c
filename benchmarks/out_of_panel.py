"""Cells of a type the panel lacks, with and without the ``other`` type (docs/markers.md, "Cells
no type explains: other").

1. Simulated: ``simulate_library`` (a droplet library that is not the CellAssign model) of
   ``--cells`` cells of six types with five markers each; the panel given to the model leaves
   the last type out. Per seed: the share of the left-out type's cells labelled ``other``, and
   the accuracy on the cells of the panel's types (label == true type), with and without
   ``other`` (min_prob 0.5, the default labelling). Twice: markers 4 times up in their type
   (``simulate_library``'s default; weaker than the model's smallest fold, exp(min_delta 2) =
   7.4), and 8 times up.
2. Real: the 700 PBMCs scanpy ships (``cellassign_nf.datasets.pbmc68k_counts``; sorted
   populations in ``obs["bulk_labels"]``) with ``pbmc_human`` (less the types with no marker
   among its 765 genes): cells labelled ``other``, and the lineage accuracy of
   benchmarks/rollup.py (each label taken up the Cell Ontology to T, B, NK, monocyte or dendritic
   cell; ``other``, unassigned and unknown count as wrong), with and without ``other``.

With ``--timing-cells N`` it only times what the extra type costs: 30 epochs (no early stopping,
one restart) on N cells x 120 markers x 8 types of ``simulate``, without and with ``other``,
twice each.

    python benchmarks/out_of_panel.py
    python benchmarks/out_of_panel.py --seeds 5 --cells 4000
    python benchmarks/out_of_panel.py --timing-cells 20000
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

TYPES = ("A", "B", "C", "D", "E", "F")  # F: in the data, not in the panel
MIN_PROB = 0.5
FOLDS = (4.0, 8.0)  # markers' fold in their type: simulate_library's default, and twice that


def _labels(probs: pd.DataFrame, terms: dict[str, str]) -> pd.DataFrame:
    from cellassign_nf.labels import label_cells

    labels, _ = label_cells(probs, probs.index, MIN_PROB, terms, True)
    return labels


def simulated(seed: int, cells: int, fold: float) -> dict[bool, tuple[float, float]]:
    """other -> (share of the left-out type's cells labelled other, accuracy on the other cells)."""
    from cellassign_nf import CellAssign
    from cellassign_nf.keys import CELLTYPE_KEY, OTHER, TRUE_CELLTYPE_KEY
    from cellassign_nf.markers import marker_list_to_matrix
    from cellassign_nf.simulate import simulate_library

    markers = {t: [f"{t}{i}" for i in range(5)] for t in TYPES}
    adata = simulate_library(markers, n_cells=cells, seed=seed, marker_fold=fold)
    truth = adata.obs[TRUE_CELLTYPE_KEY].astype(str)
    missing = truth == TYPES[-1]
    panel = {t: markers[t] for t in TYPES[:-1]}
    out = {}
    for other in (False, True):
        rho = marker_list_to_matrix(panel, include_other=other)
        probs = CellAssign(adata, rho).train(seed=0, progress=False).predict()
        called = _labels(probs, {})[CELLTYPE_KEY].astype(str).reindex(adata.obs_names)
        out[other] = (float((called[missing] == OTHER).mean()), float((called[~missing] == truth[~missing]).mean()))
    return out


def pbmc() -> dict[bool, tuple[int, float, int]]:
    """other -> (cells labelled other, lineage accuracy, cells of the five lineages)."""
    from rollup import SORTED, lineage

    from cellassign_nf import CellAssign
    from cellassign_nf.datasets import pbmc68k_counts
    from cellassign_nf.keys import CELLTYPE_KEY, ONTOLOGY_ID_KEY, OTHER
    from cellassign_nf.markers import read_panel

    adata = pbmc68k_counts()
    panel = read_panel("pbmc_human")
    present = [t for t in panel.rho.columns if panel.rho.index[panel.rho[t] == 1].isin(adata.var_names).any()]
    out = {}
    for other in (False, True):
        rho = panel.rho[present].copy()
        if other:
            rho[OTHER] = 0
        model = CellAssign(adata, rho, ontology={t: panel.ontology[t] for t in present})
        probs = model.train(seed=0, progress=False).predict()
        labels = _labels(probs, model.ontology)
        truth = adata.obs["bulk_labels"].astype(str).map(SORTED).reindex(probs.index)
        of_five = truth.notna()
        called = labels[ONTOLOGY_ID_KEY].astype(str).map(lineage)
        out[other] = (int((labels[CELLTYPE_KEY].astype(str) == OTHER).sum()),
                      float((called[of_five] == truth[of_five]).mean()), int(of_five.sum()))
    return out


def timing(cells: int) -> None:
    """Seconds of 30 epochs without and with ``other``, twice each, printed."""
    import time

    from cellassign_nf import CellAssign
    from cellassign_nf.keys import OTHER
    from cellassign_nf.settings import TrainSettings
    from cellassign_nf.simulate import random_markers, simulate

    rho = random_markers(120, 8, seed=0)
    adata = simulate(rho, n_cells=cells, n_other_genes=0, seed=0)
    settings = TrainSettings(n_restarts=1, max_epochs=30, early_stopping=False, progress=False)
    for repeat in range(2):
        for other in (False, True):
            model = CellAssign(adata, rho.assign(**{OTHER: 0}) if other else rho)
            t0 = time.perf_counter()
            model.train(settings=settings)
            print(f"{cells} cells x 120 markers x 8 types, other={str(other).lower():5} (repeat {repeat}): "
                  f"{time.perf_counter() - t0:.2f} s for 30 epochs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--timing-cells", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.timing_cells:
        timing(args.timing_cells)
        return

    for fold in FOLDS:
        print(f"simulate_library, {args.cells} cells of types {', '.join(TYPES)} (5 markers each, {fold:g} times up "
              f"in their type); the panel lacks {TYPES[-1]}")
        rows = []
        for seed in range(args.seeds):
            result = simulated(seed, args.cells, fold)
            rows.append([*result[False], *result[True]])
            print(f"  seed {seed}: without other: {result[False][0]:.3f} of {TYPES[-1]} -> other, accuracy on the "
                  f"rest {result[False][1]:.3f}; with other: {result[True][0]:.3f} -> other, accuracy "
                  f"{result[True][1]:.3f}")
        mean = np.mean(rows, axis=0)
        print(f"  mean: without other: {mean[0]:.3f} -> other, accuracy {mean[1]:.3f}; with other: {mean[2]:.3f} "
              f"-> other, accuracy {mean[3]:.3f}")

    result = pbmc()
    for other in (False, True):
        n_other, accuracy, n = result[other]
        print(f"pbmc_human on 700 real PBMCs, other={str(other).lower():5}: {n_other} cells labelled other; "
              f"lineage accuracy {accuracy:.3f} ({n} cells of the five lineages)")


if __name__ == "__main__":
    main()
