"""scvi-tools' documented CellAssign example, run unchanged on both implementations: do the labels agree?

The example (docs/api.md) with `from scvi.external import CellAssign` in the peer's environment
(.venv-bench, benchmarks/README.md) and `from cellassign_nf import CellAssign` in ours, each in its
own process, on the same simulated counts (cellassign_nf.simulate: the model's own generative
process, where both should fit well). Prints, per seed, the share of cells on which the two agree
and each one's accuracy against the simulated types, and the wall time of each fit.

    python benchmarks/scvi_agreement.py                       # 3 seeds, 4,000 cells, 60 markers, 6 types
    python benchmarks/scvi_agreement.py --seeds 0 --cells 20000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# scvi-tools' documented example; IMPORT is the one line that differs
EXAMPLE = """
import json, sys, time
import anndata as ad
import numpy as np
import pandas as pd
{import_line}

adata = ad.read_h5ad(sys.argv[1])
marker_gene_mat = pd.read_csv(sys.argv[2], index_col=0)
start = time.perf_counter()
library_size = adata.X.sum(1)
adata.obs["size_factor"] = library_size / np.mean(library_size)
bdata = adata[:, adata.var.index.isin(marker_gene_mat.index)].copy()
CellAssign.setup_anndata(bdata, size_factor_key="size_factor")
model = CellAssign(bdata, marker_gene_mat)
model.train()
predictions = model.predict()
bdata.obs["cellassign_predictions"] = predictions.idxmax(axis=1).values
seconds = time.perf_counter() - start
json.dump({{"labels": [str(x) for x in bdata.obs["cellassign_predictions"]], "seconds": seconds}},
          open(sys.argv[3], "w"))
"""
IMPORTS = {"cellassign-nf": "from cellassign_nf import CellAssign",
           "scvi-tools": "from scvi.external import CellAssign"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated simulation seeds")
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--markers", type=int, default=60)
    parser.add_argument("--types", type=int, default=6)
    parser.add_argument("--peer-python", default=str(REPO / ".venv-bench" / "bin" / "python"),
                        help="the interpreter with scvi-tools (benchmarks/README.md)")
    args = parser.parse_args()
    if not Path(args.peer_python).exists():
        sys.exit(f"error: {args.peer_python} not found. Set up the peer's environment (benchmarks/README.md) "
                 "or give --peer-python.")
    from cellassign_nf.simulate import random_markers, simulate

    print(f"{'seed':>4} {'agree':>7} {'ours acc':>9} {'scvi acc':>9} {'ours s':>7} {'scvi s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed in (int(s) for s in args.seeds.split(",")):
            markers = random_markers(args.markers, args.types, seed=seed)
            adata = simulate(markers, n_cells=args.cells, n_other_genes=300, batches=("b1",), seed=seed)
            adata.write_h5ad(folder / "cells.h5ad")
            markers.to_csv(folder / "markers.csv")
            truth = adata.obs["true_celltype"].astype(str).to_numpy()
            out = {}
            for name, python in (("cellassign-nf", sys.executable), ("scvi-tools", args.peer_python)):
                script = folder / f"{name}.py"
                script.write_text(EXAMPLE.format(import_line=IMPORTS[name]))
                result = folder / f"{name}.json"
                run = subprocess.run([python, str(script), str(folder / "cells.h5ad"), str(folder / "markers.csv"),
                                      str(result)], capture_output=True, text=True, check=False)
                if run.returncode != 0:
                    sys.exit(f"error: {name} failed:\n{run.stderr[-3000:]}")
                out[name] = json.loads(result.read_text())
            ours, peer = (out[n]["labels"] for n in ("cellassign-nf", "scvi-tools"))
            agree = sum(a == b for a, b in zip(ours, peer)) / len(ours)
            acc = {n: sum(a == t for a, t in zip(out[n]["labels"], truth)) / len(truth) for n in out}
            print(f"{seed:>4} {agree:>7.3f} {acc['cellassign-nf']:>9.3f} {acc['scvi-tools']:>9.3f} "
                  f"{out['cellassign-nf']['seconds']:>7.1f} {out['scvi-tools']['seconds']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
