"""umap-learn's compiled code kept between processes.

scanpy's neighbour graph (the fuzzy simplicial set), its UMAP layout and Scrublet's neighbours
run umap-learn functions that numba compiles in every new process, and umap-learn does not
ask numba to keep them; importing umap-learn also compiles pynndescent's distance functions
(their signatures are given, so numba compiles them when the module is imported): several
seconds of every report and doublet task went to compiling the same code again.
:func:`cache_umap_compiles` imports umap-learn with numba's on-disk cache on for the functions
compiled at import, and turns it on for those compiled at their first call, so that a task loads
what an earlier task compiled. Numba keys each entry by the function's code, the CPU
and its own version (a different CPU compiles anew) and keeps them in ``NUMBA_CACHE_DIR`` (the
pipeline sets it; by default next to umap-learn's sources, or the user's cache folder when those
are read-only).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)
UMAP_MODULES = ("umap.umap_", "umap.layouts")  # what scanpy calls: the neighbour graph, the layout
PACKAGES = ("umap", "pynndescent")  # umap-learn and the neighbour search it imports


@contextlib.contextmanager
def _cached_by_default() -> Iterator[None]:
    """numba's ``jit`` (and so ``njit``) with ``cache=True`` for functions of :data:`PACKAGES`
    unless they say otherwise, inside the block."""
    import numba
    from numba.core import decorators

    plain = decorators.jit

    def jit(*args, **kwargs):
        caller = sys._getframe(1)
        while caller is not None and caller.f_globals.get("__name__", "").startswith("numba."):
            caller = caller.f_back  # njit calls jit
        if caller is not None and caller.f_globals.get("__name__", "").split(".")[0] in PACKAGES:
            kwargs.setdefault("cache", True)
        return plain(*args, **kwargs)

    decorators.jit, numba.jit = jit, jit
    try:
        yield
    finally:
        decorators.jit, numba.jit = plain, plain


def cache_umap_compiles() -> int:
    """Import umap-learn with numba's on-disk cache on for what it compiles at import (unless it is
    imported already), and enable the cache for every other compiled function of its modules that
    has none; returns how many were enabled (0 when called again)."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    imported = any(name in sys.modules for name in PACKAGES)
    with contextlib.nullcontext() if imported else _cached_by_default():
        for name in UMAP_MODULES:
            importlib.import_module(name)
    enabled = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in PACKAGES:
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
