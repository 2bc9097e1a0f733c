"""Inputs as counting tools write them, and how a marker panel is matched to the data's genes.

Every input is written by the test in its real on-disk layout (tests/tenx_files.py): Cell Ranger
3+ and 2 ``.h5``, Cell Ranger / STARsolo matrix folders (gz or plain, features.tsv or genes.tsv),
Cell Ranger ``outs/`` and STARsolo ``Solo.out/`` folders, and ``.h5ad`` with counts in X, a
layer or ``.raw``. One test per matching rule (docs/inputs.md).
"""
from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from cellassign_nf.cli import main
from cellassign_nf.errors import InputError
from cellassign_nf.io import default_sample_name, dense_counts, read_counts, resolve_counts_path
from cellassign_nf.markers import bundled_panels, marker_list_to_matrix, match_markers, read_markers, read_panel

from conftest import DEMO
from tenx_files import (ADT, gene_id, tenx_sample, write_cellranger2_h5, write_cellranger_h5,
                        write_mtx_folder)

QC_OUT = ["-o", "o.h5ad", "--metrics", "m.tsv", "--summary", "s.json"]


@pytest.fixture(scope="module")
def sample():
    return tenx_sample(n_cells=200)


def _gene_part(s: dict) -> tuple[sp.csr_matrix, list[str], list[str]]:
    keep = [i for i, t in enumerate(s["types"]) if t == "Gene Expression"]
    return s["X"][:, keep], [s["ids"][i] for i in keep], [s["names"][i] for i in keep]


def assert_same_counts(adata: ad.AnnData, s: dict) -> None:
    X, ids, names = _gene_part(s)
    assert list(adata.obs_names) == s["barcodes"]
    assert list(adata.var_names) == ids                      # indexed by the unique gene IDs
    assert list(adata.var["gene_ids"]) == ids
    assert list(adata.var["gene_symbols"]) == names          # symbols kept, duplicates included
    assert adata.X.dtype == np.float32 and sp.issparse(adata.X)
    assert (adata.X != X.astype(np.float32)).nnz == 0


# --- reading -------------------------------------------------------------------------------------------
def test_cellranger_h5_v3_keeps_ids_and_symbols_and_leaves_out_antibody_capture(tmp_path, sample, caplog):
    path = write_cellranger_h5(tmp_path / "filtered_feature_bc_matrix.h5", sample)
    with caplog.at_level(logging.INFO, logger="cellassign_nf"):
        adata = read_counts(path)
    assert_same_counts(adata, sample)
    assert not set(ADT) & set(adata.var_names)
    assert adata.var["gene_symbols"].tolist().count("CD3E") == 2
    info = adata.uns["cellassign_input"]
    assert info["non_gene_features"] == {"Antibody Capture": 3} and info["gene_index"] == "gene_ids"
    assert "kept out of the model: 3 Antibody Capture features (e.g. CD3_TotalSeqB" in caplog.text


def test_cellranger2_h5(tmp_path, sample):
    assert_same_counts(read_counts(write_cellranger2_h5(tmp_path / "filtered_gene_bc_matrices_h5.h5", sample)), sample)


@pytest.mark.parametrize("layout", ["cellranger3_gz", "starsolo_plain", "cellranger2_genes_tsv"])
def test_matrix_folders(tmp_path, sample, layout):
    folder = write_mtx_folder(tmp_path / "m", sample, compressed=layout == "cellranger3_gz",
                              legacy=layout == "cellranger2_genes_tsv")
    adata = read_counts(folder)
    assert_same_counts(adata, sample)
    expected = {} if layout == "cellranger2_genes_tsv" else {"Antibody Capture": 3}
    assert adata.uns["cellassign_input"]["non_gene_features"] == expected


def test_matrix_folder_with_one_column_genes_tsv(tmp_path, sample):
    folder = write_mtx_folder(tmp_path / "m", sample, compressed=False, legacy=True)
    genes = folder / "genes.tsv"
    genes.write_text("".join(line.split("\t")[0] + "\n" for line in genes.read_text().splitlines()))
    adata = read_counts(folder)
    assert list(adata.var_names) == _gene_part(sample)[1]
    assert "gene_symbols" not in adata.var  # only IDs are known


def test_matrix_folder_missing_barcodes_is_one_clear_error(tmp_path, sample):
    folder = write_mtx_folder(tmp_path / "m", sample)
    (folder / "barcodes.tsv.gz").unlink()
    with pytest.raises(InputError, match=r"lacks barcodes.tsv\(.gz\).*Copy the whole"):
        read_counts(folder)


@pytest.mark.parametrize("layout, given, expected", [
    ("run_h5", "run", "run/outs/filtered_feature_bc_matrix.h5"),
    ("run_h5", "run/outs", "run/outs/filtered_feature_bc_matrix.h5"),
    ("run_mtx", "run", "run/outs/filtered_feature_bc_matrix"),
    ("run_mtx", "run/outs/filtered_feature_bc_matrix", "run/outs/filtered_feature_bc_matrix"),
    ("starsolo", "solo", "solo/Solo.out/Gene/filtered"),
    ("multi", "multi", "multi/outs/per_sample_outs/S1/count/sample_filtered_feature_bc_matrix.h5"),
])
def test_counting_tool_output_folders_resolve_to_the_filtered_matrix(tmp_path, sample, caplog, layout, given, expected):
    if layout == "run_h5":
        write_cellranger_h5(tmp_path / "run/outs/filtered_feature_bc_matrix.h5", sample)
        write_cellranger_h5(tmp_path / "run/outs/raw_feature_bc_matrix.h5", sample)
        (tmp_path / "run/outs/possorted_genome_bam.bam").write_bytes(b"")
    elif layout == "run_mtx":
        write_mtx_folder(tmp_path / "run/outs/raw_feature_bc_matrix", sample)
        write_mtx_folder(tmp_path / "run/outs/filtered_feature_bc_matrix", sample)
    elif layout == "starsolo":
        write_mtx_folder(tmp_path / "solo/Solo.out/Gene/raw", sample, compressed=False)
        write_mtx_folder(tmp_path / "solo/Solo.out/Gene/filtered", sample, compressed=False)
    else:
        write_cellranger_h5(tmp_path / expected, sample)
    with caplog.at_level(logging.INFO, logger="cellassign_nf"):
        assert resolve_counts_path(tmp_path / given) == tmp_path / expected
        adata = read_counts(tmp_path / given)
    assert_same_counts(adata, sample)
    if given != expected:
        assert f"reading its filtered matrix {tmp_path / expected}" in caplog.text or \
            f"Cell Ranger multi output folder; reading {tmp_path / expected}" in caplog.text


def test_folder_without_counts_is_one_clear_error(tmp_path):
    (tmp_path / "run" / "outs").mkdir(parents=True)
    r = CliRunner().invoke(main, ["qc", str(tmp_path / "run"), *[str(tmp_path / a) if "." in a else a for a in QC_OUT]])
    assert r.exit_code == 2
    assert "holds no 10x matrix.mtx(.gz) and no Cell Ranger/STARsolo filtered matrix" in r.stderr
    assert "Point to a Cell Ranger outs/ folder" in r.stderr and "Traceback" not in r.output


def test_sample_name_of_cell_ranger_output():
    assert default_sample_name("/data/PBMC_1/outs") == "PBMC_1"
    assert default_sample_name("/data/PBMC_1/outs/filtered_feature_bc_matrix.h5") == "PBMC_1"
    assert default_sample_name("/data/S2/Solo.out/Gene/filtered") == "S2"
    assert default_sample_name("/data/donor3.h5ad") == "donor3"


# --- h5ad: counts in X, a layer or .raw ------------------------------------------------------------
@pytest.fixture()
def h5ad_layers(tmp_path):
    """X log-normalised (an HVG subset of the genes), raw counts in layers['counts'] and in .raw
    (all genes)."""
    demo = ad.read_h5ad(DEMO / "sample1.h5ad")[:100].copy()
    full = demo.copy()
    sub = demo[:, 10:].copy()  # genes 0-9 dropped from X, as after HVG selection
    sub.layers["counts"] = sub.X.copy()
    sub.raw = full
    sub.X = sp.csr_matrix(np.log1p(sub.X.toarray()))
    path = tmp_path / "processed.h5ad"
    sub.write_h5ad(path)
    return path, full


def test_h5ad_counts_in_x(tmp_path):
    adata = read_counts(DEMO / "sample1.h5ad")
    demo = ad.read_h5ad(DEMO / "sample1.h5ad")
    assert (adata.X != demo.X).nnz == 0 and list(adata.var_names) == list(demo.var_names)
    assert list(adata.var["gene_symbols"]) == list(demo.var_names)  # the names are symbols
    assert "gene_ids" not in adata.var
    assert (read_counts(DEMO / "sample1.h5ad", layer="X").X != demo.X).nnz == 0  # --layer X means X


def test_h5ad_counts_in_a_layer(h5ad_layers):
    path, full = h5ad_layers
    adata = read_counts(path, layer="counts")
    assert adata.n_vars == full.n_vars - 10
    assert (adata.X != full[:, 10:].X).nnz == 0


def test_h5ad_counts_in_raw(h5ad_layers):
    path, full = h5ad_layers
    adata = read_counts(path, layer="raw")
    assert list(adata.var_names) == list(full.var_names)  # .raw's genes, all of them
    assert (adata.X != full.X).nnz == 0
    assert list(adata.obs_names) == list(full.obs_names)


def test_h5ad_with_normalised_x_names_where_the_counts_are(tmp_path, h5ad_layers):
    path, _ = h5ad_layers
    r = CliRunner().invoke(main, ["qc", str(path), "-o", str(tmp_path / "o.h5ad"), "--metrics", str(tmp_path / "m.tsv"),
                                  "--summary", str(tmp_path / "s.json")])
    assert r.exit_code == 2
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")][0]
    assert "not integers" in line and "--layer counts" in line and "--layer raw (.raw)" in line
    r = CliRunner().invoke(main, ["qc", str(path), "--layer", "nope", "-o", str(tmp_path / "o.h5ad"),
                                  "--metrics", str(tmp_path / "m.tsv"), "--summary", str(tmp_path / "s.json")])
    assert r.exit_code == 2 and "has no layer 'nope' (layers: counts; .raw: --layer raw)" in r.stderr


def test_layer_given_for_a_cell_ranger_file_is_an_error(tmp_path, sample):
    path = write_cellranger_h5(tmp_path / "f.h5", sample)
    with pytest.raises(InputError, match="has only one count matrix"):
        read_counts(path, layer="counts")


def test_h5ad_with_duplicated_names_is_indexed_by_its_gene_ids(tmp_path, sample, caplog):
    X, ids, names = _gene_part(sample)
    adata = ad.AnnData(X.astype(np.float32), obs=pd.DataFrame(index=sample["barcodes"]),
                       var=pd.DataFrame({"gene_ids": ids}, index=names))  # as scanpy.read_10x_h5 gives it
    path = tmp_path / "dup.h5ad"
    adata.write_h5ad(path)
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        out = read_counts(path)
    assert list(out.var_names) == ids and list(out.var["gene_symbols"]) == names
    assert "2 names occur more than once (e.g. CD3E, MT-G0); genes are indexed by var['gene_ids']" in caplog.text


def test_h5ad_with_duplicated_names_and_no_ids_gets_unique_names(tmp_path, sample, caplog):
    X, _, names = _gene_part(sample)
    adata = ad.AnnData(X.astype(np.float32), obs=pd.DataFrame(index=sample["barcodes"]), var=pd.DataFrame(index=names))
    path = tmp_path / "dup.h5ad"
    adata.write_h5ad(path)
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        out = read_counts(path)
    assert out.var_names.is_unique and list(out.var["gene_symbols"]) == names
    assert "there are no unique gene IDs; repeats get a suffix" in caplog.text


# --- matching a panel to the data's genes: one test per rule ---------------------------------------
@pytest.fixture(scope="module")
def tenx(tmp_path_factory, sample):
    return read_counts(write_cellranger_h5(tmp_path_factory.mktemp("h5") / "f.h5", sample))


def _ids(s: dict, *symbols: str) -> list[str]:
    """The ID of each symbol's first occurrence after the decoys (the real, well-expressed gene)."""
    return [s["ids"][s["names"].index(g, 1)] for g in symbols]


def test_symbol_panel_on_data_indexed_by_gene_id(tenx, sample, caplog):
    rho = marker_list_to_matrix({"T": ["CD3D", "IL7R"], "B": ["CD79A", "MS4A1"]})
    with caplog.at_level(logging.INFO, logger="cellassign_nf"):
        matched = match_markers(rho, tenx)
    assert list(matched.index) == _ids(sample, "CD3D", "IL7R", "CD79A", "MS4A1")  # the data's own IDs
    assert matched.loc[_ids(sample, "CD3D")[0], "T"] == 1 and matched.loc[_ids(sample, "MS4A1")[0], "B"] == 1
    assert "markers matched by gene symbol (data's var['gene_symbols']): 4 of 4 panel genes found" in caplog.text


def test_id_panel_on_data_indexed_by_gene_id_ignores_versions(tenx, sample, caplog):
    ids = _ids(sample, "CD3D", "CD79A")
    rho = marker_list_to_matrix({"T": [ids[0] + ".7"], "B": [ids[1] + ".12"]})
    with caplog.at_level(logging.INFO, logger="cellassign_nf"):
        matched = match_markers(rho, tenx)
    assert list(matched.index) == ids
    assert "markers matched by Ensembl gene ID (data's var['gene_ids']): 2 of 2 panel genes found" in caplog.text


def test_id_panel_on_data_indexed_by_symbol(tmp_path, sample, caplog):
    X, ids, names = _gene_part(sample)
    keep = [i for i, n in enumerate(names) if i == names.index(n)]  # a symbol-indexed h5ad: unique symbols
    adata = ad.AnnData(X[:, keep].astype(np.float32), var=pd.DataFrame({"gene_ids": [ids[i] for i in keep]},
                                                                       index=[names[i] for i in keep]))
    path = tmp_path / "sym.h5ad"
    adata.write_h5ad(path)
    data = read_counts(path)
    rho = marker_list_to_matrix({"T": [data.var.loc["CD3D", "gene_ids"]], "B": [data.var.loc["CD79A", "gene_ids"]]})
    with caplog.at_level(logging.INFO, logger="cellassign_nf"):
        matched = match_markers(rho, data)
    assert list(matched.index) == ["CD3D", "CD79A"]  # the data's own gene names
    assert "markers matched by Ensembl gene ID (data's var['gene_ids'])" in caplog.text


def test_duplicated_symbol_uses_the_gene_with_most_counts(tenx, sample, caplog):
    rho = marker_list_to_matrix({"T": ["CD3E", "CD3D"], "B": ["CD79A"]})
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        matched = match_markers(rho, tenx)
    real, decoy = sample["real_id"], sample["decoy_id"]
    assert matched.index[0] == real and decoy not in matched.index
    totals = {g: int(tenx[:, g].X.sum()) for g in (real, decoy)}
    assert totals[real] > 10 * totals[decoy]
    assert (f"marker CD3E: the gene symbol names 2 genes of the data ({decoy}: {totals[decoy]} counts, "
            f"{real}: {totals[real]} counts); using {real}, the one with the most counts") in caplog.text


def test_case_only_difference_matches_with_a_warning(tenx, sample, caplog):
    rho = marker_list_to_matrix({"T": ["Cd3d", "Il7r"], "B": ["CD79A"]})
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        matched = match_markers(rho, tenx)
    assert list(matched.index) == _ids(sample, "CD3D", "IL7R", "CD79A")
    assert "2 marker genes match the data only when ignoring case: Cd3d -> CD3D, Il7r -> IL7R" in caplog.text


def test_id_panel_on_data_without_ids_is_an_error():
    rho = marker_list_to_matrix({"T": [gene_id(1), gene_id(2)], "B": [gene_id(5)]})
    with pytest.raises(InputError, match=r"the marker panel lists Ensembl gene IDs \(e.g. ENSG00000000001.*"
                                         r"but the data have no gene IDs .*Use a panel of gene symbols"):
        match_markers(rho, read_counts(DEMO / "sample1.h5ad"))


def test_symbol_panel_on_data_with_only_ids_is_an_error(tmp_path, sample):
    folder = write_mtx_folder(tmp_path / "m", sample, compressed=False, legacy=True)
    genes = folder / "genes.tsv"
    genes.write_text("".join(line.split("\t")[0] + "\n" for line in genes.read_text().splitlines()))
    rho = marker_list_to_matrix({"T": ["CD3D"], "B": ["CD79A"]})
    with pytest.raises(InputError, match="the marker panel lists gene symbols .* but the data have only gene IDs"):
        match_markers(rho, read_counts(folder))


def test_two_panel_genes_naming_one_data_gene_are_combined(tenx, sample, caplog):
    rho = marker_list_to_matrix({"T": ["CD3D"], "NK": ["cd3d", "NKG7"]})
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        matched = match_markers(rho, tenx)
    cd3d = _ids(sample, "CD3D")[0]
    assert list(matched.index) == [cd3d, _ids(sample, "NKG7")[0]]
    assert matched.loc[cd3d].tolist() == [1, 1]
    assert f"CD3D/cd3d -> {cd3d}" in caplog.text


# --- bundled panels ---------------------------------------------------------------------------------
def test_bundled_tme_panel_by_name():
    assert "tme" in bundled_panels()
    rho = read_markers("tme")
    assert rho.shape == (39, 8)
    assert list(rho.columns)[:3] == ["B cells", "T cells", "Cytotoxic T cells"]
    assert rho.loc["VIM"].sum() == 7 and rho.loc["EPCAM"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert rho.loc[["CD8A", "GZMA", "PRF1", "NKG7"], "Cytotoxic T cells"].eq(1).all()


def test_markers_list_and_show():
    r = CliRunner().invoke(main, ["--quiet", "markers", "list"])
    assert r.exit_code == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines()}
    assert rows["tme"][1:4] == ["8 cell types", "39 genes", "8 with Cell Ontology terms"]
    assert rows["pbmc_human"][1:4] == ["8 cell types", "53 genes", "8 with Cell Ontology terms"]
    assert rows["pbmc_human"][5].startswith("Human blood / PBMC, broad types")
    r = CliRunner().invoke(main, ["--quiet", "markers", "show", "tme"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert any("Apache License 2.0" in ln for ln in lines if ln.startswith("#"))
    assert any("Irrationone/cellassign" in ln for ln in lines if ln.startswith("#"))
    assert "Epithelial cells [CL:0000066]:EPCAM,CDH1,CLDN3,CLDN4" in lines
    r = CliRunner().invoke(main, ["--quiet", "markers", "show", "pbmc_human"])
    assert r.exit_code == 0
    assert "pDC [CL:0000784]:GZMB,MZB1,LILRA4,CLEC4C,IL3RA,ITM2C,PLD4,SERPINF1,TCF4" in r.stdout.splitlines()


def test_markers_show_prints_a_panel_file_that_reads_back_the_same(tmp_path):
    r = CliRunner().invoke(main, ["--quiet", "markers", "show", "pbmc_fine_human"])
    (tmp_path / "fine.txt").write_text(r.stdout)
    again, bundled = read_panel(tmp_path / "fine.txt"), read_panel("pbmc_fine_human")
    assert again.ontology == bundled.ontology
    assert again.rho.sort_index().equals(bundled.rho.sort_index())


def test_unknown_panel_name_lists_the_bundled_ones(tmp_path):
    r = CliRunner().invoke(main, ["--quiet", "markers", "show", "pbmc9"])
    assert r.exit_code == 2
    assert "pbmc9: marker file not found, and not the name of a bundled panel (bone_marrow_human, " in r.stderr


def test_comment_lines_in_txt_panels(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# my panel, CC0\nT:CD3D,CD3E\n\n# B cells next\nB:MS4A1\n")
    assert read_markers(path).to_dict() == {"T": {"CD3D": 1, "CD3E": 1, "MS4A1": 0}, "B": {"CD3D": 0, "CD3E": 0, "MS4A1": 1}}


# --- end to end: a Cell Ranger outs/ folder with a duplicated marker symbol -----------------------
def test_run_on_cell_ranger_outs_with_duplicated_symbol(tmp_path):
    s = tenx_sample(n_cells=300, seed=3)
    write_cellranger_h5(tmp_path / "PBMC_1" / "outs" / "filtered_feature_bc_matrix.h5", s)
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", str(tmp_path / "PBMC_1"), "--markers", str(DEMO / "markers.csv"),
                                  "--outdir", str(out), "--max-epochs", "25", "--n-restarts", "1", "--no-report",
                                  "--nmads", "0", "--nmads-mito", "0"])  # keep every barcode: this is about inputs
    assert r.exit_code == 0, r.output
    log = " ".join(r.stderr.split())  # the log is wrapped to the terminal width
    assert f"marker CD3E: the gene symbol names 2 genes of the data ({s['decoy_id']}:" in log
    assert f"using {s['real_id']}, the one with the most counts" in log
    assert "kept out of the model: 3 Antibody Capture features" in log
    annotated = ad.read_h5ad(out / "PBMC_1.annotated.h5ad")  # sample named after the run folder
    assert list(annotated.obs_names) == s["barcodes"]
    assert annotated.var_names[0] == s["decoy_id"] and "gene_symbols" in annotated.var
    assert not set(ADT) & set(annotated.var_names)
    predictions = pd.read_csv(out / "PBMC_1.predictions.tsv", sep="\t", index_col=0)
    assert list(predictions.index) == s["barcodes"]
    accuracy = (predictions["cellassign_celltype"] == s["truth"]).mean()
    assert accuracy > 0.9, accuracy
    summary = json.loads((out / "PBMC_1.qc_summary.json").read_text())
    assert summary["counts"]["non_gene_features"] == {"Antibody Capture": 3}
    assert summary["n_mito_genes"] == 14  # found by symbol although genes are indexed by ID
    from cellassign_nf import CellAssign

    model = CellAssign.load(out / "PBMC_1.model.pt")
    assert s["real_id"] in model.genes and s["decoy_id"] not in model.genes


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_dense_counts_is_the_selected_block_built_in_pieces(kind):
    # the model's counts: chosen rows and columns, dense float32, built a few rows at a time
    rng = np.random.default_rng(3)
    full = rng.poisson(2.0, size=(11, 6)).astype(np.float64)
    X = {"dense": full, "csr": sp.csr_matrix(full), "csc": sp.csc_matrix(full)}[kind]
    rows, cols = np.array([0, 2, 3, 5, 6, 7, 9, 10]), np.array([4, 0, 2])
    for block_values in (1, 7, 2**22):  # 1 row, 2 rows (and a ragged end), all rows at once
        x = dense_counts(X, rows, cols, block_values=block_values)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, full[rows][:, cols])


def test_dense_counts_checks_every_block_and_only_the_selected_values():
    full = np.ones((9, 4))
    full[7, 1] = 2.5  # in the last block of 2 rows
    full[1, 3] = -1.0  # in a column left out
    with pytest.raises(InputError) as err:
        dense_counts(full, np.arange(9), np.array([0, 1, 2]), path="s.h5ad", layers=["counts"], block_values=6)
    assert "counts are not integers (e.g. 2.5); the data look log-normalised" in str(err.value)
    assert "layers in this file: counts" in str(err.value)
    np.testing.assert_array_equal(dense_counts(full, np.arange(7), np.array([0, 1, 2]), block_values=6),
                                  np.ones((7, 3)))
    full[4, 0] = np.nan
    with pytest.raises(InputError, match="counts contain NaN or infinite values"):
        dense_counts(full, np.arange(6), np.array([0]), block_values=6)
