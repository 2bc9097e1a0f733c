"""Count inputs in the formats Cell Ranger writes (10x HDF5 v3, gzipped matrix folder) and the
cohort `merge` step (gene intersection, duplicate samples)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from cellassign_nf.cli import main
from cellassign_nf.io import read_counts

from tenx_files import plain_sample, write_cellranger_h5, write_mtx_folder

GENES = ["CD3E", "CD19", "LYZ", "MS4A1", "NKG7"]
IDS = [f"ENSG0000000{i}" for i in range(len(GENES))]
BARCODES = ["AAACCTGAGAAACCAT-1", "AAACCTGAGAAACCGC-1", "AAACCTGAGAAACCTA-1", "AAACCTGCAAGCCGCT-1"]


@pytest.fixture(scope="module")
def counts():
    """cells x genes, with zeros, so the sparse layout matters."""
    rng = np.random.default_rng(4)
    x = rng.poisson(1.5, size=(len(BARCODES), len(GENES)))
    x[1, :] = 0
    x[2, 3] = 17
    return x


def write_10x_h5(path, x):
    """A Cell Ranger >= 3 filtered_feature_bc_matrix.h5 of the counts x (cells x genes)."""
    write_cellranger_h5(path, plain_sample(x, BARCODES, GENES, IDS))


def write_10x_mtx(folder, x):
    """A Cell Ranger >= 3 matrix folder: matrix.mtx.gz (genes x cells), features.tsv.gz, barcodes.tsv.gz."""
    write_mtx_folder(folder, plain_sample(x, BARCODES, GENES, IDS))


def _check(adata, x):
    assert list(adata.obs_names) == BARCODES
    # 10x files are indexed by gene ID, with the symbols kept beside them (docs/inputs.md)
    assert list(adata.var_names) == IDS and list(adata.var["gene_symbols"]) == GENES
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), x)


def test_10x_h5_is_read_with_cells_genes_and_counts(tmp_path, counts):
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path, counts)
    _check(read_counts(path), counts)


def test_10x_mtx_folder_is_read_with_cells_genes_and_counts(tmp_path, counts):
    folder = tmp_path / "filtered_feature_bc_matrix"
    write_10x_mtx(folder, counts)
    _check(read_counts(folder), counts)


def test_10x_folder_without_matrix_is_one_clear_error(tmp_path):
    folder = tmp_path / "empty_10x"
    folder.mkdir()
    (folder / "barcodes.tsv.gz").write_bytes(b"")
    result = CliRunner().invoke(main, ["--quiet", "qc", str(folder), "-o", str(tmp_path / "o.h5ad"),
                                       "--metrics", str(tmp_path / "m.tsv"), "--summary", str(tmp_path / "s.json")])
    assert result.exit_code == 2, result.output
    assert "matrix.mtx" in result.stderr and str(folder) in result.stderr
    assert "Traceback" not in result.output


def test_qc_step_reads_10x_h5(tmp_path, counts):
    path = tmp_path / "s.h5"
    write_10x_h5(path, counts)
    out = tmp_path / "s.qc.h5ad"
    result = CliRunner().invoke(main, ["--quiet", "qc", str(path), "-o", str(out), "--sample", "s1",
                                       "--metrics", str(tmp_path / "m.tsv"), "--summary", str(tmp_path / "s.json"),
                                       "--nmads", "0", "--nmads-mito", "0"])  # fixed thresholds only
    assert result.exit_code == 0, result.output
    adata = ad.read_h5ad(out)
    kept = counts.sum(axis=1) > 0  # the all-zero cell fails min_counts = 1
    assert list(adata.obs_names) == list(np.asarray(BARCODES)[kept])
    np.testing.assert_array_equal(adata.X.toarray(), counts[kept])
    assert set(adata.obs["sample"].astype(str)) == {"s1"}


# --- merge -----------------------------------------------------------------------------------------

def _qc_file(path, sample, genes, values):
    x = np.asarray(values, dtype=np.float32)
    a = ad.AnnData(sp.csr_matrix(x))
    a.obs_names = [f"c{i}" for i in range(x.shape[0])]  # the same barcodes in both samples
    a.var_names = genes
    a.obs["sample"] = sample
    a.write_h5ad(path)


def test_merge_keeps_shared_genes_and_prefixes_cells(tmp_path):
    _qc_file(tmp_path / "s1.h5ad", "s1", ["g1", "g2", "g3"], [[1, 2, 3], [4, 5, 6]])
    _qc_file(tmp_path / "s2.h5ad", "s2", ["g3", "g1", "g4"], [[7, 8, 9]])
    out = tmp_path / "cohort.h5ad"
    result = CliRunner().invoke(main, ["--quiet", "merge", str(tmp_path / "s1.h5ad"), str(tmp_path / "s2.h5ad"),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    merged = ad.read_h5ad(out)
    assert sorted(merged.var_names) == ["g1", "g3"]
    assert list(merged.obs_names) == ["s1:c0", "s1:c1", "s2:c0"]
    frame = pd.DataFrame(merged.X.toarray(), index=merged.obs_names, columns=merged.var_names)
    assert frame.loc["s1:c1", "g3"] == 6 and frame.loc["s2:c0", "g1"] == 8 and frame.loc["s2:c0", "g3"] == 7
    assert list(merged.obs["sample"].astype(str)) == ["s1", "s1", "s2"]


def test_merge_refuses_the_same_sample_twice(tmp_path):
    _qc_file(tmp_path / "a.h5ad", "s1", ["g1", "g2"], [[1, 2]])
    _qc_file(tmp_path / "b.h5ad", "s1", ["g1", "g2"], [[3, 4]])
    out = tmp_path / "cohort.h5ad"
    result = CliRunner().invoke(main, ["--quiet", "merge", str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad"),
                                       "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "the same sample is given more than once" in lines[0] and "s1" in lines[0], result.stderr
    assert not out.exists()


def test_merge_needs_the_sample_column(tmp_path):
    a = ad.AnnData(sp.csr_matrix(np.ones((2, 2), dtype=np.float32)))
    a.var_names = ["g1", "g2"]
    a.write_h5ad(tmp_path / "nosample.h5ad")
    result = CliRunner().invoke(main, ["--quiet", "merge", str(tmp_path / "nosample.h5ad"), "-o",
                                       str(tmp_path / "cohort.h5ad")])
    assert result.exit_code == 2 and "has no obs['sample']" in result.stderr, result.output
