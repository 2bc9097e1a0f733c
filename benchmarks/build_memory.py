"""Peak host memory of building the model (`CellAssign(adata, markers)`) from counts in memory.

The model holds the marker counts as one dense float32 cells x markers matrix (plus a float64
per-cell constant), so building it should add about that much and no more at its peak: no
full-size temporary (a CSR copy of dense counts, a rounded copy for the integer check, a float64
`log_factorial`, a cells x markers quotient); docs/performance.md has the figures. The script
simulates the case in a child process,
reads it back as a user would, builds the model in this fresh process and prints the RSS and
the peak.

    python benchmarks/build_memory.py                   # 1,000,000 x 500 x 30 (~2 min to simulate)
    python benchmarks/build_memory.py --cells 200000
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _worker import peak_rss_mb, rss_now_mb  # noqa: E402
from harness import write_data  # noqa: E402


def _gib(mb: float) -> float:
    return mb / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--markers", type=int, default=500)
    p.add_argument("--types", type=int, default=30)
    args = p.parse_args()

    import anndata as ad
    import pandas as pd

    from cellassign_nf import CellAssign

    with tempfile.TemporaryDirectory(prefix="cellassign-buildmem-") as tmp:
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # the simulation's peak is not ours
            data, markers = pool.apply(write_data, (Path(tmp), args.cells, args.markers, args.types, 0))
        adata, rho = ad.read_h5ad(data), pd.read_csv(markers, index_col=0)
    read, read_peak = _gib(rss_now_mb()), _gib(peak_rss_mb())
    model = CellAssign(adata, rho, size_factor_key="size_factor")
    built, peak = _gib(rss_now_mb()), _gib(peak_rss_mb())
    counts = len(model.data_cells) * len(model.genes) * 4 / 2**30  # float32 cells x markers
    print(f"{args.cells:,} cells x {args.markers} markers x {args.types} types: the model's counts {counts:.2f} GiB")
    print(f"RSS after reading {read:.2f} GiB (peak so far {read_peak:.2f}), after building {built:.2f} GiB, "
          f"peak {peak:.2f} GiB")
    print(f"peak - RSS after reading = {peak - read:.2f} GiB = {(peak - read) / counts:.2f} x the model's counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
