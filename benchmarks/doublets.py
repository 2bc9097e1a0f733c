"""Doublet detection on simulated libraries with known doublets, and on real PBMCs.

The libraries are not the CellAssign model (``cellassign_nf.simulate.simulate_library``:
Splatter-like gene shares with per-type expression beyond the panel, log-normal library sizes,
Gamma-Poisson counts, dropout; a doublet is two cells' counts summed). For each library it prints
the share of the doublets of two types found, the share of singlets flagged, and the label
accuracy of the singlets when the pipeline runs with doublet detection (doublets left out of the
fit, labelled 'doublet') and without (``--doublets none``), with the panel's types only (no
``other``: what is measured is the doublets). A singlet wrongly flagged counts as wrongly labelled. Then the doublet rate Scrublet finds in the 700 real PBMCs that scanpy ships.

    python benchmarks/doublets.py            # about 3 minutes on 2 cores

Targets: >= 60% of two-type doublets found, <= 3% of singlets flagged, singlet accuracy not
lower with detection than without. Figures: docs/steps.md ("Doublets").
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cellassign_nf import steps
from cellassign_nf.keys import CELLTYPE_KEY, PREDICTED_DOUBLET_KEY, SAMPLE_KEY, TRUE_CELLTYPE_KEY, TRUE_DOUBLET_KEY
from cellassign_nf.settings import DoubletSettings, TrainSettings
from cellassign_nf.simulate import simulate_library

MARKERS = {"T cell": ["CD3D", "CD3E", "IL7R", "CD2"], "B cell": ["MS4A1", "CD79A", "CD19", "CD22"],
           "NK cell": ["NKG7", "GNLY", "KLRD1", "PRF1"], "monocyte": ["CD14", "LYZ", "FCGR3A", "S100A8"],
           "dendritic cell": ["CD1C", "FCER1A", "CLEC10A"]}
# (name, cells, other genes, doublet rate, proportions, seed)
LIBRARIES = [
    ("6,000 cells, 8% doublets", 6000, 2000, 0.08, [0.45, 0.15, 0.15, 0.2, 0.05], 1),
    ("10,000 cells, 10% doublets", 10000, 2000, 0.10, [0.3, 0.3, 0.2, 0.1, 0.1], 2),
    ("3,000 cells, 3% doublets", 3000, 2000, 0.03, None, 3),
    ("6,000 cells, no doublets", 6000, 2000, 0.0, [0.45, 0.15, 0.15, 0.2, 0.05], 4),
]


def run_library(folder: Path, adata, doublets: str, seed: int) -> tuple[pd.DataFrame, float]:
    """train + annotate as the pipeline does; the annotated obs, and the doublet step's seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(folder / "lib.h5ad")
    (folder / "panel.json").write_text(json.dumps(MARKERS))
    t0 = time.perf_counter()
    steps.doublets(folder / "lib.h5ad", folder / "d.tsv", folder / "d.json", DoubletSettings(doublets=doublets))
    seconds = time.perf_counter() - t0
    steps.train(folder / "lib.h5ad", folder / "panel.json", folder / "m.pt", folder / "h.tsv", folder / "p.tsv",
                doublets_paths=[folder / "d.tsv"], other=False, settings=TrainSettings(seed=seed, progress=False))
    out = steps.annotate(folder / "lib.h5ad", folder / "p.tsv", folder / "a.h5ad", folder / "pred.tsv",
                         doublets_path=folder / "d.tsv")
    return out.obs, seconds


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    warnings.filterwarnings("ignore")
    print("| library | two-type doublets found | singlets flagged | singlet accuracy with / without detection "
          "| Scrublet s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cells, genes, rate, proportions, seed in LIBRARIES:
            adata = simulate_library(MARKERS, n_cells=cells, n_other_genes=genes, doublet_rate=rate,
                                     proportions=proportions, seed=seed)
            adata.obs[SAMPLE_KEY] = "lib"
            pair = adata.obs[TRUE_DOUBLET_KEY].astype(str)
            two = ((pair != "") & (pair.str.split("+").str[0] != pair.str.split("+").str[-1])).to_numpy()
            singlet = (pair == "").to_numpy()
            truth = adata.obs[TRUE_CELLTYPE_KEY].astype(str).to_numpy()
            with_obs, seconds = run_library(Path(tmp) / f"{seed}-with", adata, "scrublet", seed)
            without_obs, _ = run_library(Path(tmp) / f"{seed}-without", adata, "none", seed)
            called = with_obs[PREDICTED_DOUBLET_KEY].to_numpy(dtype=bool)
            acc = [(obs[CELLTYPE_KEY].astype(str).to_numpy()[singlet] == truth[singlet]).mean()
                   for obs in (with_obs, without_obs)]
            found = f"{100 * called[two].mean():.0f}% of {two.sum()}" if two.any() else "–"
            print(f"| {name} | {found} | {100 * called[singlet].mean():.2f}% | {acc[0]:.3f} / {acc[1]:.3f} "
                  f"| {seconds:.1f} |", flush=True)

    from cellassign_nf.datasets import pbmc68k_counts
    from cellassign_nf.doublets import find_doublets

    pbmc = pbmc68k_counts()
    _, summary = find_doublets(pbmc)
    print(f"\nreal PBMCs (700 cells, 765 genes): {summary['n_doublets']} predicted doublets "
          f"({100 * summary['rate']:.1f}%), threshold {summary['threshold']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
