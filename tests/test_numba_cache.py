"""umap-learn's numba code is compiled once and loaded by later processes (cellassign_nf.numba_cache):
the report's UMAP and the doublet step no longer compile it in every task."""
from __future__ import annotations

import json
import os
import subprocess
import sys

# the functions of scanpy's neighbour graph (umap-learn's fuzzy simplicial set) and of the layout,
# compiled at their first call, and one of pynndescent's, compiled when umap-learn is imported
WATCHED = ("smooth_knn_dist", "compute_membership_strengths", "_nb_optimize_layout_euclidean_single_epoch",
           "squared_euclidean")

SCRIPT = f"""
import json
from cellassign_nf.numba_cache import compile_umap
compile_umap()
import umap.layouts, umap.umap_, pynndescent.distances
stats = {{name: getattr(module, name).stats for module in (umap.umap_, umap.layouts, pynndescent.distances)
         for name in {WATCHED!r} if hasattr(module, name)}}
print(json.dumps({{name: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for name, s in stats.items()}}))
"""


def cache_stats(result: subprocess.CompletedProcess) -> dict[str, list[int]]:
    """{function: [cache hits, cache misses]} as SCRIPT printed them."""
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cache_stats(cache_dir) -> dict[str, list[int]]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return cache_stats(subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                                      timeout=600))


def test_umap_code_compiled_by_one_process_is_loaded_by_the_next(tmp_path):
    first = _cache_stats(tmp_path)
    assert set(first) == set(WATCHED), first
    assert all(hits == 0 and misses >= 1 for hits, misses in first.values()), first  # compiled, then saved
    assert {"umap", "pynndescent"} <= {p.name.split("_")[0] for p in tmp_path.iterdir()}, list(tmp_path.iterdir())
    second = _cache_stats(tmp_path)
    assert all(hits >= 1 and misses == 0 for hits, misses in second.values()), second  # loaded, not compiled
