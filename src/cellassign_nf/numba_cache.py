"""umap-learn's compiled code kept between processes.

scanpy's neighbour graph (the fuzzy simplicial set), its UMAP layout and Scrublet's neighbours
run umap-learn functions that numba compiles in every new process, and umap-learn does not
ask numba to keep them: several seconds of every report and doublet task went to compiling the
same code again. :func:`cache_umap_compiles` turns numba's on-disk cache on for them, so that a
task loads what an earlier task compiled. Numba keys each entry by the function's code, the CPU
and its own version (a different CPU compiles anew) and keeps them in ``NUMBA_CACHE_DIR`` (the
pipeline sets it; by default next to umap-learn's sources, or the user's cache folder when those
are read-only).
"""
from __future__ import annotations

import importlib
import logging
import sys

log = logging.getLogger(__name__)
UMAP_MODULES = ("umap.umap_", "umap.layouts")  # what scanpy calls: the neighbour graph, the layout


def cache_umap_compiles() -> int:
    """Enable numba's on-disk cache for every compiled function of umap-learn's modules that has
    none; returns how many were enabled (0 when called again)."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for name in UMAP_MODULES:
        importlib.import_module(name)
    enabled = 0
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "umap" or name.startswith("umap.")):
            continue
        for function in list(vars(module).values()):
            if isinstance(function, Dispatcher) and isinstance(getattr(function, "_cache", None), NullCache):
                try:
                    function.enable_caching()
                except RuntimeError as exc:  # no writable cache folder: compile as before
                    log.debug("numba cannot cache %s: %s", function, exc)
                    return enabled
                enabled += 1
    return enabled


def compile_umap() -> None:
    """Compile (and cache) the umap-learn code that the report's UMAP and the doublet step run, on
    a small random matrix: the container image runs this when it is built."""
    import anndata as ad
    import numpy as np

    from .report.figures import compute_umap

    counts = np.random.default_rng(0).poisson(1.0, size=(300, 40)).astype(np.float32)
    compute_umap(ad.AnnData(np.log1p(counts)), copy=False)
