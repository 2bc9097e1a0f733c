"""Writers of the files counting tools produce, in their real on-disk layouts (for the input tests).

Cell Ranger 3+ ``filtered_feature_bc_matrix.h5``: group ``matrix`` with ``data``, ``indices``,
``indptr``, ``shape`` (genes x cells, CSC), ``barcodes`` and ``features/{id, name, feature_type,
genome, _all_tag_keys}`` as fixed-length byte strings. Cell Ranger 2 ``.h5``: one group per
genome with ``genes`` and ``gene_names``. Matrix folders: ``matrix.mtx(.gz)`` (MatrixMarket
coordinate integer, genes x cells), ``features.tsv(.gz)`` (ID, symbol, type) or ``genes.tsv``
(ID, symbol), ``barcodes.tsv(.gz)``.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from conftest import DEMO

ADT = ["CD3_TotalSeqB", "CD19_TotalSeqB", "CD14_TotalSeqB"]


def gene_id(i: int) -> str:
    return f"ENSG{i:011d}"


def tenx_sample(source: ad.AnnData | None = None, n_cells: int | None = None, dup_symbol: str = "CD3E",
                seed: int = 0) -> dict:
    """A sample as a counting tool writes it: Ensembl-style IDs (``ENSG...``), the source's gene
    names as symbols, plus (as in real references) a second gene named ``dup_symbol`` (a marker)
    and a second ``MT-G0``, both with few counts, and three antibody-capture features.
    ``source``: counts with ``obs['true_celltype']`` (default: demo sample 1). Returns counts
    (cells x features, CSR int), barcodes, ids, names, types and the true cell types."""
    demo = ad.read_h5ad(DEMO / "sample1.h5ad") if source is None else source
    if n_cells is not None:
        demo = demo[:n_cells].copy()
    rng = np.random.default_rng(seed)
    n = demo.n_obs
    X = sp.csr_matrix(demo.X, dtype=np.int64)
    names = list(demo.var_names)
    assert dup_symbol in names and "MT-G0" in names
    ids = [gene_id(i + 1) for i in range(len(names))]
    # duplicated symbols, low-count second genes with IDs of their own: the decoy CD3E comes
    # first, so that "take the first match" would pick the wrong one
    extra = sp.csr_matrix((rng.random((n, 2)) < 0.01).astype(np.int64))
    adt = sp.csr_matrix(rng.poisson(20, size=(n, len(ADT))).astype(np.int64))
    X = sp.hstack([extra[:, :1], X, extra[:, 1:], adt], format="csr")
    names = [dup_symbol, *names, "MT-G0", *ADT]
    ids = [gene_id(90001), *ids, gene_id(90002), *ADT]
    types = ["Gene Expression"] * (len(names) - len(ADT)) + ["Antibody Capture"] * len(ADT)
    barcodes = [f"{bc}-1" for bc in _barcodes(n, rng)]
    return {"X": X, "barcodes": barcodes, "ids": ids, "names": names, "types": types,
            "truth": pd.Series(demo.obs["true_celltype"].astype(str).to_numpy(), index=barcodes),
            "real_id": ids[names.index(dup_symbol, 1)], "decoy_id": gene_id(90001)}


def plain_sample(X, barcodes, names, ids=None) -> dict:
    """A sample of gene-expression features only, in the form the writers below take: counts
    ``X`` (cells x genes), the cells' barcodes, the genes' symbols and IDs (default: ``ENSG...``
    numbered from 0)."""
    names = list(names)
    return {"X": sp.csr_matrix(X), "barcodes": list(barcodes), "names": names,
            "ids": list(ids) if ids is not None else [gene_id(i) for i in range(len(names))],
            "types": ["Gene Expression"] * len(names)}


def _barcodes(n: int, rng) -> list[str]:
    seen: set[str] = set()
    while len(seen) < n:
        seen.add("".join(rng.choice(list("ACGT"), 16)))
    return sorted(seen)


def _bytes(values) -> np.ndarray:
    return np.array([str(v).encode() for v in values], dtype="S")


def write_cellranger_h5(path: Path, s: dict, genome: str = "GRCh38") -> Path:
    """Cell Ranger 3+ layout."""
    X = sp.csr_matrix(s["X"])  # cells x features CSR == features x cells CSC
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        g = f.create_group("matrix")
        g.create_dataset("data", data=X.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=X.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=X.indptr.astype(np.int64), compression="gzip")
        g.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        g.create_dataset("barcodes", data=_bytes(s["barcodes"]))
        feats = g.create_group("features")
        feats.create_dataset("id", data=_bytes(s["ids"]))
        feats.create_dataset("name", data=_bytes(s["names"]))
        feats.create_dataset("feature_type", data=_bytes(s["types"]))
        feats.create_dataset("genome", data=_bytes([genome] * len(s["ids"])))
        feats.create_dataset("_all_tag_keys", data=_bytes(["genome"]))
    return path


def write_cellranger2_h5(path: Path, s: dict, genome: str = "GRCh38") -> Path:
    """Cell Ranger 2 layout (gene expression only, one group per genome)."""
    keep = [i for i, t in enumerate(s["types"]) if t == "Gene Expression"]
    X = sp.csr_matrix(s["X"])[:, keep]
    with h5py.File(path, "w") as f:
        g = f.create_group(genome)
        g.create_dataset("data", data=X.data.astype(np.int32))
        g.create_dataset("indices", data=X.indices.astype(np.int64))
        g.create_dataset("indptr", data=X.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        g.create_dataset("barcodes", data=_bytes(s["barcodes"]))
        g.create_dataset("genes", data=_bytes([s["ids"][i] for i in keep]))
        g.create_dataset("gene_names", data=_bytes([s["names"][i] for i in keep]))
    return path


def _write_text(path: Path, text: str) -> None:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def write_mtx_folder(folder: Path, s: dict, compressed: bool = True, legacy: bool = False) -> Path:
    """Cell Ranger 3+ (``compressed``: .gz files, features.tsv with 3 columns), STARsolo
    (uncompressed, features.tsv with 3 columns) or Cell Ranger 2 (``legacy``: genes.tsv, 2 columns,
    gene expression only)."""
    folder.mkdir(parents=True, exist_ok=True)
    X, ids, names, types = sp.csr_matrix(s["X"]), s["ids"], s["names"], s["types"]
    if legacy:
        keep = [i for i, t in enumerate(types) if t == "Gene Expression"]
        X, ids, names = X[:, keep], [ids[i] for i in keep], [names[i] for i in keep]
    gz = ".gz" if compressed else ""
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(X.T), field="integer")
    matrix = folder / f"matrix.mtx{gz}"
    if compressed:
        with gzip.open(matrix, "wb") as fh:
            fh.write(buf.getvalue())
    else:
        matrix.write_bytes(buf.getvalue())
    if legacy:
        _write_text(folder / f"genes.tsv{gz}", "".join(f"{i}\t{n}\n" for i, n in zip(ids, names)))
    else:
        _write_text(folder / f"features.tsv{gz}", "".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types)))
    _write_text(folder / f"barcodes.tsv{gz}", "".join(f"{b}\n" for b in s["barcodes"]))
    return folder
