"""Reading inputs and writing outputs: counts (h5ad, 10x h5, 10x mtx), tables, atomic writes."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputError

log = logging.getLogger(__name__)

MAIN_MATRIX = "X"  # --layer X (the default) names the main matrix, adata.X
COUNT_SUFFIXES = (".h5ad", ".h5", "directory of 10x matrix.mtx(.gz), features.tsv(.gz), barcodes.tsv(.gz)")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; published files must be readable
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found", "Check the path and that the file was copied completely.")
    if not os.access(path, os.R_OK):
        raise InputError(path, "file is not readable", "Check its permissions.")


def read_counts(path: str | Path, layer: str | None = None) -> ad.AnnData:
    """Read raw counts from an h5ad file, a 10x ``.h5`` file or a 10x mtx folder.

    The returned AnnData has raw integer counts in ``X`` as a float32 CSR matrix (taken from
    ``layer`` when given; ``"X"`` is the main matrix) and unique gene names; anything else raises :class:`InputError`.
    """
    import scanpy as sc

    path = Path(path)
    _require_file(path)
    try:
        if path.is_dir():
            if not any((path / n).exists() for n in ("matrix.mtx", "matrix.mtx.gz")):
                raise InputError(path, "folder holds no 10x matrix.mtx(.gz)",
                                 "Point to a Cell Ranger filtered_feature_bc_matrix folder, an .h5 or an .h5ad file.")
            adata = sc.read_10x_mtx(path)
        elif path.suffix == ".h5ad":
            adata = ad.read_h5ad(path)
        elif path.suffix == ".h5":
            adata = sc.read_10x_h5(path)
        else:
            raise InputError(path, f"unsupported file type '{path.suffix or path.name}'",
                             "Give counts as .h5ad, 10x .h5, or a 10x mtx folder.")
    except InputError:
        raise
    except Exception as exc:  # h5py/anndata raise many types for corrupt files
        raise InputError(path, f"cannot be read as {'10x mtx' if path.is_dir() else path.suffix} ({type(exc).__name__}: {exc})",
                         "Check that the file is complete and of the type its name says.") from exc
    if layer is not None and layer != MAIN_MATRIX:
        if layer not in adata.layers:
            raise InputError(path, f"has no layer '{layer}' (layers: {', '.join(adata.layers) or 'none'})",
                             f"Name an existing layer with --layer, or give --layer {MAIN_MATRIX} (the default) "
                             "to use the main matrix.")
        adata.X = adata.layers[layer]
    if adata.var_names.has_duplicates:
        dups = adata.var_names[adata.var_names.duplicated()].unique()[:5]
        raise InputError(path, f"has {adata.var_names.duplicated().sum()} duplicate gene names (e.g. {', '.join(map(str, dups))})",
                         "Make them unique first, e.g. adata.var_names_make_unique(), or use gene IDs.")
    if adata.obs_names.has_duplicates:
        raise InputError(path, "has duplicate cell barcodes", "Make them unique first, e.g. adata.obs_names_make_unique().")
    adata.X = as_count_matrix(adata.X, path, layers=list(adata.layers))
    return adata


def as_count_matrix(X, path: str | Path | None = None, layers: list[str] | None = None) -> sp.csr_matrix:
    """Check that ``X`` holds raw counts (non-negative integers) and return it as float32 CSR."""
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    values = X.data
    if values.size and not np.all(np.isfinite(values)):
        raise InputError(path, "counts contain NaN or infinite values", "Pass raw UMI counts.")
    if values.size and values.min() < 0:
        raise InputError(path, f"counts contain negative values (min {values.min():g}); the data look normalised or scaled",
                         _layer_hint(layers))
    if values.size and not np.all(values == np.round(values)):
        example = values[values != np.round(values)][0]
        raise InputError(path, f"counts are not integers (e.g. {example:g}); the data look log-normalised",
                         _layer_hint(layers))
    return X


def _layer_hint(layers: list[str] | None) -> str:
    avail = f" (layers in this file: {', '.join(layers)})" if layers else ""
    return f"CellAssign needs raw UMI counts: choose the layer that holds them with --layer{avail}."


def write_h5ad(adata: ad.AnnData, path: str | Path) -> None:
    """Write ``adata`` atomically (compressed)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an h5ad written by an earlier step."""
    path = Path(path)
    _require_file(path)
    try:
        return ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"cannot be read as h5ad ({type(exc).__name__}: {exc})",
                         "Give the h5ad written by the previous step.") from exc


def write_table(df: pd.DataFrame, path: str | Path, index_label: str | None = "cell") -> None:
    """Write a tab-separated table atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=index_label is not None, index_label=index_label, float_format="%.6g")


def read_table(path: str | Path, index_col: int | None = 0) -> pd.DataFrame:
    """Read a TSV (or CSV, by suffix) table."""
    path = Path(path)
    _require_file(path)
    sep = "," if path.suffix == ".csv" else "\t"
    try:
        return pd.read_csv(path, sep=sep, index_col=index_col)
    except Exception as exc:
        raise InputError(path, f"cannot be read as a {'CSV' if sep == ',' else 'TSV'} table ({exc})",
                         "Give the table written by the previous step.") from exc
