"""Reading inputs and writing outputs: counts (h5ad, 10x h5, 10x mtx), tables, atomic writes."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputError
from .keys import INPUT_INFO_KEY, TOTALS_KEY
from .rules import COUNTS_IN_FOLDER, COUNTS_MULTI_GLOB, MATRIX_FILES

log = logging.getLogger(__name__)

MAIN_MATRIX = "X"  # --layer X (the default) names the main matrix, adata.X
BLOCK_VALUES = 2**24  # matrix values handled at once by the block-wise readers and checks (~130 MB)


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


# --- gene identifiers -------------------------------------------------------------------------------
GENE_IDS = "gene_ids"            # var column: stable gene IDs (e.g. Ensembl), when known
GENE_SYMBOLS = "gene_symbols"    # var column: gene symbols (may repeat), when known
FEATURE_TYPES = "feature_types"  # var column of 10x files: "Gene Expression", "Antibody Capture", ...
GENE_EXPRESSION = "Gene Expression"
# var columns that other tools use for the same two things (first match wins, case-insensitive)
ID_COLUMNS = (GENE_IDS, "gene_id", "ensembl_id", "ensembl_ids", "ensembl", "feature_id", "gene_ensembl")
SYMBOL_COLUMNS = (GENE_SYMBOLS, "gene_symbol", "gene_name", "gene_names", "feature_name", "symbol", "symbols")
# Ensembl gene IDs of any species (ENSG, ENSMUSG, ENSDARG, ...), optionally with a version suffix
ENSEMBL_GENE_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def looks_like_gene_ids(names) -> bool:
    """True when most of ``names`` are Ensembl gene IDs."""
    names = [str(n) for n in names]
    return bool(names) and sum(bool(ENSEMBL_GENE_ID.match(n)) for n in names) >= 0.5 * len(names)


def strip_version(gene_id: str) -> str:
    """``ENSG00000141510.17`` -> ``ENSG00000141510`` (other names unchanged)."""
    gene_id = str(gene_id)
    return gene_id.rsplit(".", 1)[0] if ENSEMBL_GENE_ID.match(gene_id) else gene_id


def gene_symbols(adata: ad.AnnData) -> pd.Index:
    """The genes' symbols: ``var['gene_symbols']`` when present, else the gene names."""
    if GENE_SYMBOLS in adata.var:
        return pd.Index(adata.var[GENE_SYMBOLS].astype(str))
    return pd.Index(adata.var_names.astype(str))


def display_names(adata: ad.AnnData) -> dict[str, str]:
    """The data's gene index -> the name shown to users: its symbol when the data carry symbols
    (Cell Ranger data are indexed by Ensembl ID), else the index itself."""
    return dict(zip(map(str, adata.var_names), gene_symbols(adata)))


def relabel_genes(genes, names: dict[str, str]) -> list[str]:
    """``genes`` by their shown names, or unchanged when two would then share a name."""
    labels = [names.get(str(g), str(g)) for g in genes]
    return labels if len(set(labels)) == len(labels) else [str(g) for g in genes]


# --- finding the counts in a folder ------------------------------------------------------------------
def _has_mtx(folder: Path) -> bool:
    return any((folder / n).is_file() for n in MATRIX_FILES)


def resolve_counts_path(path: str | Path) -> Path:
    """The counts file that ``path`` stands for: itself for a file or a matrix folder; for a
    Cell Ranger (``outs/`` or the run folder above it) or STARsolo output folder, its filtered
    feature-barcode matrix (the ``.h5`` when present). The chosen file is logged."""
    path = Path(path)
    if not path.is_dir() or _has_mtx(path):
        return path
    for rel in COUNTS_IN_FOLDER:
        cand = path / rel
        if (cand.is_file() and cand.suffix == ".h5") or (cand.is_dir() and _has_mtx(cand)):
            log.info("counts: %s is a Cell Ranger/STARsolo output folder; reading its filtered matrix %s", path, cand)
            return cand
    multi = sorted(path.glob(COUNTS_MULTI_GLOB))
    if len(multi) == 1:
        log.info("counts: %s is a Cell Ranger multi output folder; reading %s", path, multi[0])
        return multi[0]
    found = ", ".join(str(p.relative_to(path)) for p in multi) if multi else "none"
    raise InputError(path, "folder holds no 10x matrix.mtx(.gz) and no Cell Ranger/STARsolo filtered matrix "
                     f"(looked for matrix.mtx(.gz), {', '.join(COUNTS_IN_FOLDER[:4])}, Solo.out/Gene/filtered; "
                     f"Cell Ranger multi samples: {found})",
                     "Point to a Cell Ranger outs/ folder, a filtered_feature_bc_matrix folder or .h5, or an .h5ad file.")


def default_sample_name(path: str | Path) -> str:
    """A sample name from a counts path: the file name before its first dot, or, for Cell Ranger
    output (``RUN/outs``, ``RUN/outs/filtered_feature_bc_matrix(.h5)``), the run folder's name."""
    path = Path(path).absolute()
    parts = [p for p in (path, *path.parents) if p.name]
    # the folder and file names of the counting tools' layouts, which name no sample
    generic = {part.lower() for rel in (*COUNTS_IN_FOLDER, COUNTS_MULTI_GLOB) for part in Path(rel).parts
               if "*" not in part}
    for p in parts:
        if p.name.lower() not in generic:
            return p.name.split(".")[0]
    return path.name.split(".")[0]


# --- readers -------------------------------------------------------------------------------------------
def _text(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _tenx_var(ids, names, types=None, genome=None) -> pd.DataFrame:
    var = pd.DataFrame({GENE_IDS: _text(ids)})
    if names is not None:  # a one-column genes.tsv has IDs only
        var[GENE_SYMBOLS] = _text(names)
    var[FEATURE_TYPES] = _text(types) if types is not None else GENE_EXPRESSION
    if genome is not None:
        var["genome"] = _text(genome)
    var.index = pd.Index(var[GENE_IDS].to_numpy(), name=None)
    return var


def read_10x_h5(path: str | Path) -> ad.AnnData:
    """Read a Cell Ranger feature-barcode matrix ``.h5`` (v3+ layout ``matrix/``, or the v2 layout
    with one group per genome). Genes are indexed by their IDs; all features are returned."""
    import h5py

    with h5py.File(path, "r") as f:
        if "matrix" in f:
            g = f["matrix"]
            feats = g["features"]
            var = _tenx_var(feats["id"][:], feats["name"][:],
                            feats["feature_type"][:] if "feature_type" in feats else None,
                            feats["genome"][:] if "genome" in feats else None)
            groups = [(g, var)]
        else:  # Cell Ranger 2: /<genome>/{data,indices,indptr,shape,barcodes,genes,gene_names}
            groups = [(f[k], _tenx_var(f[k]["genes"][:], f[k]["gene_names"][:], genome=[k] * f[k]["genes"].shape[0]))
                      for k in f if isinstance(f[k], h5py.Group) and "indptr" in f[k]]
            if not groups:
                raise ValueError("neither a 'matrix' group (Cell Ranger 3+) nor genome groups (Cell Ranger 2)")
        parts, barcodes = [], None
        for g, var in groups:
            n_genes, n_cells = (int(x) for x in g["shape"][:])
            # stored genes x cells in CSC order = cells x genes in CSR order
            X = sp.csr_matrix((g["data"][:].astype(np.float32), g["indices"][:], g["indptr"][:]),
                              shape=(n_cells, n_genes))
            parts.append((X, var))
            barcodes = _text(g["barcodes"][:]) if barcodes is None else barcodes
    X = sp.hstack([p[0] for p in parts], format="csr") if len(parts) > 1 else parts[0][0]
    var = pd.concat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ad.AnnData(X, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def read_10x_mtx(folder: str | Path) -> ad.AnnData:
    """Read a Cell Ranger / STARsolo matrix folder: ``matrix.mtx(.gz)``, ``features.tsv(.gz)``
    (3 columns: ID, symbol, feature type) or ``genes.tsv(.gz)`` (2 columns: ID, symbol; or 1),
    ``barcodes.tsv(.gz)``. Genes are indexed by their IDs; all features are returned."""
    import scipy.io

    folder = Path(folder)
    matrix = _first_file(folder, MATRIX_FILES)
    features = _first_file(folder, ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"))
    barcodes = _first_file(folder, ("barcodes.tsv.gz", "barcodes.tsv"))
    missing = [n for n, p in (("features.tsv(.gz) or genes.tsv(.gz)", features), ("barcodes.tsv(.gz)", barcodes)) if p is None]
    if missing:
        raise InputError(folder, f"10x matrix folder lacks {' and '.join(missing)}",
                         "Copy the whole filtered_feature_bc_matrix folder (matrix, features and barcodes files).")
    feats = pd.read_csv(features, sep="\t", header=None, dtype=str, keep_default_na=False)
    cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str, keep_default_na=False)[0].to_numpy()
    X = sp.csr_matrix(scipy.io.mmread(matrix).T, dtype=np.float32)
    if X.shape != (len(cells), len(feats)):
        raise InputError(folder, f"matrix is {X.shape[1]} features x {X.shape[0]} barcodes, but {features.name} lists "
                         f"{len(feats)} features and {barcodes.name} {len(cells)} barcodes",
                         "The files come from different runs or are truncated; copy the folder again.")
    names = feats[1] if feats.shape[1] > 1 else None
    var = _tenx_var(feats[0], names, feats[2] if feats.shape[1] > 2 else None)
    return ad.AnnData(X, obs=pd.DataFrame(index=pd.Index(cells)), var=var)


def find_column(var: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    """The first column of ``var`` named like one of ``candidates`` (case-insensitive)."""
    lower = {str(c).lower(): c for c in var.columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _standardise_genes(adata: ad.AnnData, path: Path) -> dict:
    """Give every gene a unique index and keep both identifiers: ``var['gene_ids']`` (when known)
    and ``var['gene_symbols']`` (when known). Duplicated names are never an error."""
    var = adata.var
    id_col, sym_col = find_column(var, ID_COLUMNS), find_column(var, SYMBOL_COLUMNS)
    names_are_ids = looks_like_gene_ids(adata.var_names)
    if id_col is not None and id_col != GENE_IDS:
        var[GENE_IDS] = var[id_col].astype(str)
    elif id_col is None and names_are_ids:
        var[GENE_IDS] = adata.var_names.astype(str)
    if sym_col is not None and sym_col != GENE_SYMBOLS:
        var[GENE_SYMBOLS] = var[sym_col].astype(str)
    elif sym_col is None and not names_are_ids:
        var[GENE_SYMBOLS] = adata.var_names.astype(str)
    index = "var_names"
    if adata.var_names.has_duplicates:
        dups = adata.var_names[adata.var_names.duplicated()].unique()
        example = ", ".join(map(str, dups[:5]))
        if GENE_IDS in var and not var[GENE_IDS].duplicated().any():
            adata.var_names = var[GENE_IDS].astype(str).to_numpy()
            index = GENE_IDS
            log.warning("genes of %s: %d names occur more than once (e.g. %s); genes are indexed by var['%s'] "
                        "instead, names kept in var['%s']", path, len(dups), example, GENE_IDS, GENE_SYMBOLS)
        else:
            adata.var_names_make_unique()
            index = "var_names (made unique)"
            log.warning("genes of %s: %d names occur more than once (e.g. %s) and there are no unique gene IDs; "
                        "repeats get a suffix (-1, -2, ...) in the index, the names are kept in var['%s']",
                        path, len(dups), example, GENE_SYMBOLS)
    return {"gene_index": index, "gene_ids": GENE_IDS in var, "gene_symbols": GENE_SYMBOLS in var}


def _keep_gene_expression(adata: ad.AnnData, path: Path) -> tuple[ad.AnnData, dict[str, int], np.ndarray | None]:
    """Drop non-gene features (antibody capture, CRISPR guides, ...) and say how many there were;
    also returns the mask of the genes kept (``None``: all)."""
    if FEATURE_TYPES not in adata.var:
        return adata, {}, None
    types = adata.var[FEATURE_TYPES].astype(str)
    other = types != GENE_EXPRESSION
    if not other.any():
        return adata, {}, None
    counts = {str(k): int(v) for k, v in types[other].value_counts().items()}
    examples = ", ".join(map(str, adata.var.loc[other.to_numpy(), GENE_SYMBOLS if GENE_SYMBOLS in adata.var else GENE_IDS][:3])) \
        if (GENE_SYMBOLS in adata.var or GENE_IDS in adata.var) else ""
    if not (~other).any():
        raise InputError(path, f"has no Gene Expression features (only {', '.join(counts)})",
                         "Give the gene expression counts of the sample.")
    log.info("kept out of the model: %s (e.g. %s); %d Gene Expression features used",
             ", ".join(f"{n} {t} features" for t, n in counts.items()), examples, int((~other).sum()))
    keep = (~other).to_numpy()
    return adata[:, keep].copy(), counts, keep


def _select_matrix(adata: ad.AnnData, layer: str | None, path: Path) -> ad.AnnData:
    """Put the raw counts in ``X``: ``layer=None`` or ``"X"``: X; ``"raw"``/``".raw"``: ``adata.raw``
    (with its genes), unless a layer of that name exists; otherwise the named layer."""
    if layer is None or layer == MAIN_MATRIX:
        return adata
    if layer in adata.layers:
        adata.X = adata.layers[layer]
        return adata
    if layer in ("raw", ".raw"):
        if adata.raw is None:
            raise InputError(path, f"has no .raw (layers: {', '.join(adata.layers) or 'none'})",
                             "Name the layer that holds raw counts with --layer, or leave --layer out to use X.")
        raw = adata.raw.to_adata()
        raw.obs = adata.obs
        log.info("counts: taken from .raw of %s (%d genes)", path, raw.n_vars)
        return raw
    raise InputError(path, f"has no layer '{layer}' (layers: {', '.join(adata.layers) or 'none'}"
                     f"{'; .raw: --layer raw' if adata.raw is not None else ''})",
                     "Name an existing layer with --layer, or leave it out (or give --layer X) to use X.")


def _is_counts(X) -> bool:
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    values = values[: 1_000_000]
    return bool(values.size == 0 or (np.all(np.isfinite(values)) and values.min() >= 0
                                       and np.all(values == np.round(values))))


def _count_sources(adata: ad.AnnData) -> list[str]:
    """The ``--layer`` values under which this file holds raw integer counts (other than X)."""
    found = [f"--layer {name}" for name in adata.layers if _is_counts(adata.layers[name])]
    if adata.raw is not None and _is_counts(adata.raw.X):
        found.append("--layer raw (.raw)")
    return found


def _name_count_sources(exc: InputError, sources: list[str]) -> None:
    """Make the fix of a counts error name the layers that hold raw counts, when there are any."""
    if sources:
        exc.fix = f"CellAssign needs raw UMI counts; this file holds them under: {', '.join(sources)}."


def _first_values(elem, n: int = 1_000_000) -> np.ndarray:
    """About the first ``n`` stored values of a matrix in an h5ad file (a sparse group or a dense dataset)."""
    import h5py

    if isinstance(elem, h5py.Group):
        return elem["data"][:n]
    width = int(elem.shape[1]) if len(elem.shape) > 1 else 1
    return np.asarray(elem[:max(1, n // max(width, 1))]).ravel()


def _count_sources_on_disk(path: Path) -> list[str]:
    """:func:`_count_sources` of an h5ad file, from the first values of each matrix (none read whole)."""
    import h5py

    with h5py.File(path, "r") as f:
        layers = f["layers"] if "layers" in f else {}
        found = [f"--layer {name}" for name in layers if _is_counts(_first_values(layers[name]))]
        if "raw" in f and "X" in f["raw"] and _is_counts(_first_values(f["raw"]["X"])):
            found.append("--layer raw (.raw)")
    return found


def _csr_on_disk(path: Path, layer: str | None) -> bool:
    """Whether the counts :func:`read_counts` takes from this h5ad (X, for ``layer`` None or X) are
    stored as CSR, so that they can be read block by block from disk."""
    import h5py

    if layer not in (None, MAIN_MATRIX):
        return False
    with h5py.File(path, "r") as f:
        X = f.get("X")
        return isinstance(X, h5py.Group) and X.attrs.get("encoding-type") == "csr_matrix"


def _read_h5ad_without_matrix(path: Path) -> ad.AnnData:
    """obs, var and uns of an h5ad file (X left on disk; layers, obsm and the rest unread)."""
    from anndata.io import read_elem
    import h5py

    with h5py.File(path, "r") as f:
        obs, var = read_elem(f["obs"]), read_elem(f["var"])
        uns = read_elem(f["uns"]) if "uns" in f else {}
    return ad.AnnData(obs=obs, var=var, uns=uns)


@dataclass
class Counts:
    """Raw counts as :func:`read_counts` prepares them, with the matrix in memory (``adata.X``) or
    left on disk (``adata.X`` is ``None``): an h5ad whose X is stored as CSR is read block by block
    by :meth:`blocks`, which checks each block as :func:`as_count_matrix` checks a whole matrix."""

    adata: ad.AnnData  # obs, var (gene expression only, standardised) and uns; X when in memory
    source: Path
    columns: np.ndarray | None = None  # on disk: the stored matrix's columns kept (None: all)
    checked: bool = False  # every block has been checked (by a whole pass of blocks())
    stored_zeros: bool = True  # a block may store explicit zeros (False once a whole pass found none)

    @property
    def on_disk(self) -> bool:
        return self.adata.X is None

    def blocks(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(first row, float32 CSR block) over all cells in order, explicit zeros dropped. A block
        read from disk is valid until the next one is read (take copies of what is kept); the
        first whole pass checks the counts (InputError) and looks for explicit zeros, which later
        passes then look for only if it found some."""
        if not self.on_disk:
            X = self.adata.X
            for start, block in _blocks(X, X.shape[0], X.nnz):
                block.eliminate_zeros()
                yield start, block
            return
        import h5py

        with h5py.File(self.source, "r") as f:
            group = f["X"]
            shape = (int(group.attrs["shape"][0]), int(group.attrs["shape"][1]))
            step = rows_per_block(shape[0], group["data"].shape[0])
            layers = list(f["layers"]) if "layers" in f else []
            zeros = False
            for start, block in _csr_blocks(group, shape, step):
                if self.columns is not None:
                    block = block[:, self.columns]
                block = block.astype(np.float32, copy=False)
                if not self.checked:
                    try:
                        check_counts(block.data, self.source, layers)
                    except InputError as exc:
                        _name_count_sources(exc, _count_sources_on_disk(self.source))
                        raise
                if self.stored_zeros and np.count_nonzero(block.data) < block.nnz:
                    zeros = True
                    block.eliminate_zeros()
                yield start, block
            self.checked, self.stored_zeros = True, zeros


def read_counts(path: str | Path, layer: str | None = None) -> ad.AnnData:
    """Read raw counts from an h5ad file, a Cell Ranger ``.h5`` file, a 10x/STARsolo matrix folder
    or a Cell Ranger/STARsolo output folder (see :func:`resolve_counts_path`).

    The result has raw integer counts in ``X`` (float32 CSR) taken from ``layer`` when given
    (``"X"``: X; ``"raw"``: ``.raw``), gene expression features only, a unique gene index, and
    ``var['gene_ids']`` / ``var['gene_symbols']`` where known (10x files: indexed by gene ID).
    ``uns['cellassign_input']`` says what was read. Anything else raises :class:`InputError`.
    """
    return open_counts(path, layer, on_disk=False).adata


def open_counts(path: str | Path, layer: str | None = None, on_disk: bool = True) -> Counts:
    """:func:`read_counts`, leaving the matrix on disk (``on_disk``) when the counts are an h5ad's
    X stored as CSR: then only obs, var and uns are read, and :meth:`Counts.blocks` reads and
    checks the matrix block by block. Other inputs are read whole."""
    path = Path(path)
    _require_file(path)
    source = resolve_counts_path(path)
    try:
        if source.is_dir():
            adata = read_10x_mtx(source)
            kind = "10x matrix folder"
        elif source.suffix == ".h5ad":
            lazy = on_disk and _csr_on_disk(source, layer)
            adata = _read_h5ad_without_matrix(source) if lazy else ad.read_h5ad(source)
            kind = "h5ad"
        elif source.suffix == ".h5":
            adata = read_10x_h5(source)
            kind = "Cell Ranger h5"
        else:
            raise InputError(path, f"unsupported file type '{path.suffix or path.name}'",
                             "Give counts as .h5ad, 10x .h5, or a 10x mtx folder (or a Cell Ranger outs/ folder).")
    except InputError:
        raise
    except Exception as exc:  # h5py/anndata/scipy raise many types for corrupt files
        what = "10x mtx" if source.is_dir() else source.suffix
        raise InputError(source, f"cannot be read as {what} ({type(exc).__name__}: {exc})",
                         "Check that the file is complete and of the type its name says.") from exc
    if layer not in (None, MAIN_MATRIX) and kind != "h5ad":
        raise InputError(path, f"--layer {layer} was given, but a {kind} has only one count matrix",
                         "Leave --layer out for Cell Ranger and STARsolo files.")
    adata = _select_matrix(adata, layer, source)
    info = {"source": str(source), "kind": kind, **_standardise_genes(adata, source)}
    adata, left_out, columns = _keep_gene_expression(adata, source)
    info["non_gene_features"] = left_out
    if adata.obs_names.has_duplicates:
        raise InputError(source, "has duplicate cell barcodes", "Make them unique first, e.g. adata.obs_names_make_unique().")
    if adata.X is not None:
        try:
            adata.X = as_count_matrix(adata.X, source, layers=list(adata.layers))
        except InputError as exc:
            _name_count_sources(exc, _count_sources(adata) if kind == "h5ad" else [])
            raise
    if info["gene_index"] == "var_names":
        by_id = GENE_IDS in adata.var and bool((adata.var[GENE_IDS].astype(str) == adata.var_names).all())
        info["gene_index"] = GENE_IDS if by_id else GENE_SYMBOLS if GENE_SYMBOLS in adata.var and bool(
            (adata.var[GENE_SYMBOLS].astype(str) == adata.var_names).all()) else "var_names"
    log.info("counts: %s (%s): %d cells x %d genes; genes indexed by %s; gene IDs %s, symbols %s", source, kind,
             adata.n_obs, adata.n_vars, info["gene_index"], "known" if info["gene_ids"] else "unknown",
             "known" if info["gene_symbols"] else "unknown")
    adata.uns[INPUT_INFO_KEY] = info
    return Counts(adata, source, columns if adata.X is None else None)


def as_count_matrix(X, path: str | Path | None = None, layers: list[str] | None = None) -> sp.csr_matrix:
    """Check that ``X`` holds raw counts (non-negative integers) and return it as float32 CSR
    (``X`` itself when it already is one: no copy)."""
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32, copy=False)
    for start in range(0, X.data.size, BLOCK_VALUES):  # block by block: no temporary of the whole matrix
        check_counts(X.data[start:start + BLOCK_VALUES], path, layers)
    return X


def dense_counts(X, rows: np.ndarray, cols: np.ndarray, path: str | Path | None = None,
                 layers: list[str] | None = None, block_values: int = 2**22) -> np.ndarray:
    """``X[rows][:, cols]`` as dense float32 counts, checked like :func:`as_count_matrix`.

    Built a block of about ``block_values`` values at a time straight into the result, so that
    no temporary copy of the whole matrix (CSR of a dense matrix, the check's rounding) is ever
    made: the peak is the result plus one block.
    """
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()
    out = np.empty((len(rows), len(cols)), dtype=np.float32)
    block = max(1, block_values // max(len(cols), 1))
    for start in range(0, len(rows), block):
        part = X[rows[start:start + block]][:, cols]
        part = np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float32)
        check_counts(part.ravel(), path, layers)
        out[start:start + len(part)] = part
    return out


def check_counts(values: np.ndarray, path: str | Path | None = None, layers: list[str] | None = None,
                 chunk: int = 2**20) -> None:
    """Raise InputError unless ``values`` are finite non-negative integers (raw UMI counts).

    Checked ``chunk`` values at a time, so that the temporaries stay small and are reused."""
    for start in range(0, values.size, chunk):
        part = values[start:start + chunk]
        if not np.all(np.isfinite(part)):
            raise InputError(path, "counts contain NaN or infinite values", "Pass raw UMI counts.")
        if part.min() < 0:
            raise InputError(path, f"counts contain negative values (min {part.min():g}); the data look normalised "
                             "or scaled", _layer_hint(layers))
        if not np.all(part == np.round(part)):
            example = part[part != np.round(part)][0]
            raise InputError(path, f"counts are not integers (e.g. {example:g}); the data look log-normalised",
                             _layer_hint(layers))


def _layer_hint(layers: list[str] | None) -> str:
    avail = f" (layers in this file: {', '.join(layers)})" if layers else ""
    return f"CellAssign needs raw UMI counts: choose the layer that holds them with --layer{avail}."


def write_h5ad(adata: ad.AnnData, path: str | Path) -> None:
    """Write ``adata`` atomically, uncompressed: the later steps read parts of it (some genes, some
    cells) block by block, which a compressed matrix would make as slow as reading it whole."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def write_h5ad_rows(path: str | Path, obs: pd.DataFrame, var: pd.DataFrame, uns: Mapping,
                   blocks: Iterable[tuple[int, sp.csr_matrix]], rows: np.ndarray, columns: np.ndarray | None,
                   n_values: int) -> None:
    """Write, as :func:`write_h5ad` does, an h5ad of ``obs``, ``var``, ``uns`` and the ``rows`` and
    ``columns`` (boolean masks; ``None``: all columns) of a CSR matrix given block by block
    ((first row, block) pairs, as :meth:`Counts.blocks` gives): memory holds one block, never
    the matrix. ``n_values``, the number of stored values kept, sizes the file's arrays."""
    import h5py

    n_rows, n_cols = int(rows.sum()), len(var)
    index_dtype = np.int32 if max(n_values, n_cols) < 2**31 else np.int64
    with atomic_path(path) as tmp:
        ad.AnnData(obs=obs, var=var, uns=dict(uns)).write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            if "X" in f:
                del f["X"]
            group = f.create_group("X")  # anndata's on-disk CSR matrix
            group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_rows, n_cols)})
            data = group.create_dataset("data", (n_values,), dtype=np.float32)
            indices = group.create_dataset("indices", (n_values,), dtype=index_dtype)
            indptr = np.zeros(n_rows + 1, dtype=np.int64)
            pos = row = 0
            for start, block in blocks:
                for first, stop in _runs(rows[start:start + block.shape[0]]):  # kept rows: sliced, not indexed
                    lo, hi = int(block.indptr[first]), int(block.indptr[stop])
                    values, columns_of, offsets = block.data[lo:hi], block.indices[lo:hi], block.indptr[first:stop + 1] - lo
                    if columns is not None:
                        part = sp.csr_matrix((values, columns_of, offsets), shape=(stop - first, block.shape[1]))[:, columns]
                        values, columns_of, offsets = part.data, part.indices, part.indptr
                    n = len(values)
                    if pos + n > n_values:
                        raise RuntimeError(f"{path}: more stored values than the {n_values:,} expected")
                    if n:
                        data.write_direct(np.ascontiguousarray(values, dtype=np.float32), dest_sel=np.s_[pos:pos + n])
                        indices.write_direct(np.ascontiguousarray(columns_of, dtype=index_dtype),
                                             dest_sel=np.s_[pos:pos + n])
                    indptr[row + 1:row + stop - first + 1] = pos + offsets[1:]
                    pos, row = pos + n, row + stop - first
            if (pos, row) != (n_values, n_rows):
                raise RuntimeError(f"{path}: wrote {row:,} rows and {pos:,} values, expected {n_rows:,} and {n_values:,}")
            group.create_dataset("indptr", data=indptr.astype(index_dtype))


def _runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """(first, stop) of each run of consecutive True values of a boolean mask."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def copy_h5ad_with(source: str | Path, path: str | Path, obs: pd.DataFrame, obsm: Mapping | None = None,
                   uns: Mapping | None = None) -> None:
    """Write ``path`` atomically as a copy of the h5ad ``source`` with ``obs`` replaced and the
    entries of ``obsm`` and ``uns`` added (or replaced): the matrices are copied as bytes, never
    read into memory."""
    from anndata.io import write_elem
    import h5py

    source = Path(source)
    _require_file(source)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            del f["obs"]
            write_elem(f, "obs", obs)
            for group, entries in (("obsm", obsm or {}), ("uns", uns or {})):
                if group not in f:
                    write_elem(f, group, {})
                for key, value in entries.items():
                    if key in f[group]:
                        del f[group][key]
                    write_elem(f[group], key, value)


def open_h5ad(path: str | Path) -> ad.AnnData:
    """An h5ad written by an earlier step, opened backed (``obs``, ``var``, ``uns`` and ``obsm`` in
    memory, the matrix on disk); close it with ``adata.file.close()``."""
    path = Path(path)
    _require_file(path)
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as exc:
        raise InputError(path, f"cannot be read as h5ad ({type(exc).__name__}: {exc})",
                         "Give the h5ad written by the previous step.") from exc


def read_obs(path: str | Path) -> pd.DataFrame:
    """The ``obs`` table of an h5ad, without reading its matrix."""
    return read_element(path, "obs")


_REQUIRED = object()


def read_element(path: str | Path, key: str, default: Any = _REQUIRED,
                 fix: str = "Give the h5ad written by the previous step.") -> Any:
    """One element of an h5ad (``"obs"``, ``"uns/cellassign/model"``, ...), without reading the
    rest of the file; ``default`` where the file has no such element (without one, the file is
    refused). A file that cannot be read is one InputError with ``fix``."""
    from anndata.io import read_elem
    import h5py

    path = Path(path)
    _require_file(path)
    try:
        with h5py.File(path, "r") as f:
            if default is not _REQUIRED and key not in f:
                return default
            return read_elem(f[key])
    except Exception as exc:
        raise InputError(path, f"cannot be read as h5ad ({type(exc).__name__}: {exc})", fix) from exc


def _blocks(X, n_obs: int, n_values: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    """(first row, CSR block) of a backed matrix, read as contiguous slices of about
    ``BLOCK_VALUES`` stored values each (scattered rows read one by one would cost one disk read
    per row). A CSR matrix on disk is read into two buffers that every block reuses: a block is
    valid until the next one is read (take copies of what is kept), and the memory of the pass is
    touched once, not once per block."""
    step = rows_per_block(n_obs, n_values)
    group = getattr(X, "group", None)
    if group is not None and getattr(X, "format", None) == "csr":
        yield from _csr_blocks(group, (n_obs, int(X.shape[1])), step)
        return
    for start in range(0, n_obs, step):
        block = X[start:min(n_obs, start + step)]
        yield start, block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


def rows_per_block(n_obs: int, n_values: int, block_values: int = BLOCK_VALUES) -> int:
    """Rows of about ``block_values`` stored values, at the matrix's mean values per row."""
    return max(1, int(block_values / max(1.0, n_values / max(n_obs, 1))))


def _csr_blocks(group, shape: tuple[int, int], step: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    """:func:`_blocks` of the CSR arrays of an h5ad group (``data``, ``indices``, ``indptr``),
    ``step`` rows a block, read straight into the reused buffers."""
    data, indices = group["data"], group["indices"]
    indptr = np.asarray(group["indptr"][:], dtype=np.int64)
    starts = np.arange(0, shape[0], step)
    stops = np.minimum(starts + step, shape[0])
    size = int((indptr[stops] - indptr[starts]).max()) if len(starts) else 0
    data_buf, indices_buf = np.empty(size, dtype=data.dtype), np.empty(size, dtype=indices.dtype)
    for start, stop in zip(starts, stops):
        lo, hi = int(indptr[start]), int(indptr[stop])
        if hi > lo:
            data.read_direct(data_buf, np.s_[lo:hi], np.s_[0:hi - lo])
            indices.read_direct(indices_buf, np.s_[lo:hi], np.s_[0:hi - lo])
        offsets = (indptr[start:stop + 1] - lo).astype(indices_buf.dtype if hi - lo < 2**31 else np.int64)
        yield int(start), sp.csr_matrix((data_buf[:hi - lo], indices_buf[:hi - lo], offsets),
                                        shape=(int(stop - start), shape[1]), copy=False)


def _part(backed: ad.AnnData, matrix: sp.csr_matrix, rows: np.ndarray | slice, cols: np.ndarray | slice) -> ad.AnnData:
    """An AnnData of ``matrix`` (the ``rows`` x ``cols`` of ``backed``) with their annotations."""
    return ad.AnnData(matrix, obs=backed.obs.iloc[rows].copy(), var=backed.var.iloc[cols].copy(),
                      obsm={k: v.iloc[rows] if isinstance(v, pd.DataFrame) else v[rows] for k, v in backed.obsm.items()},
                      uns=dict(backed.uns))


def read_h5ad_parts(path: str | Path, genes: Sequence[str], cells: Sequence[int] | None = None
                    ) -> tuple[ad.AnnData, ad.AnnData | None]:
    """Two parts of an h5ad written by an earlier step, in one pass over its matrix, block by
    block (memory holds the parts and one block): every cell with only ``genes`` (var names), and
    the cells at positions ``cells`` (when given) with all genes.

    The first part's ``obs[TOTALS_KEY]`` holds each cell's total counts over all the file's genes,
    which size factors and normalisation need (``size_factors.cell_totals``)."""
    backed = open_h5ad(path)
    try:
        X = backed.X
        cols = backed.var_names.get_indexer([str(g) for g in genes])
        if (cols < 0).any():
            missing = [str(g) for g, c in zip(genes, cols) if c < 0]
            raise InputError(path, f"lacks {len(missing)} of the genes asked for (e.g. {', '.join(missing[:5])})",
                             "Give the h5ad that holds these genes.")
        rows = None if cells is None else np.unique(np.asarray(cells, dtype=np.int64))
        n_values = X.group["data"].shape[0] if hasattr(X, "group") else backed.n_obs * backed.n_vars
        some_genes, totals, all_genes = [], [], []
        for start, block in _blocks(X, backed.n_obs, n_values):
            totals.append(np.asarray(block.sum(axis=1), dtype=np.float64).ravel())
            some_genes.append(block[:, cols])
            if rows is not None:
                all_genes.append(block[rows[(rows >= start) & (rows < start + block.shape[0])] - start])
        empty = sp.csr_matrix((0, len(cols)), dtype=np.float32)
        first = _part(backed, sp.vstack(some_genes, format="csr") if some_genes else empty, slice(None), cols)
        first.obs[TOTALS_KEY] = np.concatenate(totals) if totals else np.zeros(0)
        second = None
        if rows is not None:
            second = _part(backed, sp.vstack(all_genes, format="csr") if all_genes else
                           sp.csr_matrix((0, backed.n_vars), dtype=np.float32), rows, slice(None))
        return first, second
    finally:
        backed.file.close()


def read_h5ad(path: str | Path, genes: Sequence[str] | None = None, cells: Sequence[int] | None = None) -> ad.AnnData:
    """Read an h5ad written by an earlier step: whole; or every cell with only ``genes`` (var
    names; with ``obs[TOTALS_KEY]``, see :func:`read_h5ad_parts`); or the cells at positions
    ``cells`` with all genes. The parts are read block by block."""
    path = Path(path)
    if genes is not None and cells is not None:
        raise TypeError("read_h5ad: give genes or cells, not both (read_h5ad_parts reads both in one pass)")
    if genes is not None:
        return read_h5ad_parts(path, genes)[0]
    if cells is not None:
        return read_h5ad_parts(path, [], cells)[1]
    _require_file(path)
    try:
        return ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"cannot be read as h5ad ({type(exc).__name__}: {exc})",
                         "Give the h5ad written by the previous step.") from exc


def write_table(df: pd.DataFrame, path: str | Path, index_label: str | None = "cell", exact: bool = False) -> None:
    """Write a tab-separated table atomically: numbers to 6 significant digits, or with ``exact``
    every digit (a table a later step computes with, read back to the same float64)."""
    with atomic_path(path) as tmp:
        _formatted(df, "%.17g" if exact else "%.6g").to_csv(tmp, sep="\t", index=index_label is not None,
                                                          index_label=index_label)


def _formatted(df: pd.DataFrame, fmt: str) -> pd.DataFrame:
    """``df`` with its float columns as text in ``fmt`` (NaN empty), as ``to_csv(float_format=fmt)``
    writes them: pandas formats each value through several Python calls, this one format each."""
    out = df.copy(deep=False)
    for i in range(df.shape[1]):
        column = df.iloc[:, i]
        if isinstance(column.dtype, np.dtype) and column.dtype.kind == "f":
            values = column.to_numpy()
            text = np.array([fmt % v for v in values.tolist()], dtype=object)
            text[np.isnan(values)] = ""
            out.isetitem(i, text)
    return out


def read_table(path: str | Path, index_col: int | None = 0) -> pd.DataFrame:
    """Read a TSV (or CSV, by suffix) table; numbers parse back to the float64 that was written."""
    path = Path(path)
    _require_file(path)
    sep = "," if path.suffix == ".csv" else "\t"
    try:
        return pd.read_csv(path, sep=sep, index_col=index_col, float_precision="round_trip")
    except Exception as exc:
        raise InputError(path, f"cannot be read as a {'CSV' if sep == ',' else 'TSV'} table ({exc})",
                         "Give the table written by the previous step.") from exc
