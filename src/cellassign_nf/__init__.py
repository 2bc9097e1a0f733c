"""cellassign-nf: CellAssign cell-type annotation for single-cell RNA-seq (PyTorch, minibatch EM)."""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellassign-nf")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

# imported on first use, so that `cellassign-nf --version` / `--help` start without torch
_EXPORTS = {"CellAssign": "api", "marker_list_to_matrix": "markers", "read_markers": "markers",
            "assign_labels": "labels", "filter_cells": "qc", "QCThresholds": "settings",
            "check_markers": "diagnostics", "diagnose": "diagnostics", "DiagnosticThresholds": "settings"}
_SUBMODULES = ("tl",)  # cellassign_nf.tl.cellassign(adata, markers): scanpy-style
__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cellassign_nf' has no attribute {name!r}")
