"""The pipeline on inputs as core facilities have them (one real `-profile test` run, CPU).

Two samples simulated from the bundled TME panel, handed over as Cell Ranger output folders in
the samplesheet: PBMC_1 as a run folder holding outs/filtered_feature_bc_matrix.h5 (plus the raw
matrix and a BAM that must not be read), with a second low-count gene named CD3E (a marker)
and a second MT-G0, as in real references, and antibody-capture features; PBMC_2 as an outs/
folder holding the filtered_feature_bc_matrix/ mtx folder. Markers: `--markers tme`. PBMC_2 holds
no epithelial cells and its counts lack the four epithelial markers (no other type lists them), so
its fit leaves that type out with one warning, which reaches the terminal, its report, MultiQC and
pipeline_info/samples.tsv; PBMC_1's fit has every type.
"""
from __future__ import annotations

import csv
import json
import re

import anndata as ad
import pandas as pd
import pytest

from cellassign_nf.keys import DOUBLET, ONTOLOGY_ID_KEY, OTHER, UNASSIGNED
from cellassign_nf.markers import left_out_warning, read_markers, read_panel
from cellassign_nf.ontology import CELL, UNKNOWN
from cellassign_nf.simulate import simulate

from tenx_files import ADT, tenx_sample, write_cellranger_h5, write_mtx_folder
from nextflow_helpers import REPO, nextflow, run_pipeline, stopped_before_any_task

SAMPLES = ("PBMC_1", "PBMC_2")
LEFT_OUT = "Epithelial cells"  # of the TME panel: PBMC_2's counts lack all its markers


def _without_genes(sample: dict, genes: set[str]) -> dict:
    """A sample of `tenx_sample` without the features named `genes` (the others keep their IDs)."""
    keep = [i for i, name in enumerate(sample["names"]) if name not in genes]
    return {**sample, "X": sample["X"][:, keep], **{k: [sample[k][i] for i in keep] for k in ("ids", "names", "types")}}


@pytest.fixture(scope="module")
def facility_run(tmp_path_factory, nxf_home):
    launch = tmp_path_factory.mktemp("facility")
    tme = read_markers("tme")
    data = {}
    for i, name in enumerate(SAMPLES):
        lacking = name == "PBMC_2"  # no epithelial cells, and not one of their markers among its genes
        proportions = [0.0 if t == LEFT_OUT else 1.0 for t in tme.columns] if lacking else None
        sim = simulate(tme, n_cells=400, n_other_genes=120, n_mito_genes=5, seed=20 + i, gene_seed=5,
                       proportions=proportions)
        data[name] = tenx_sample(sim, dup_symbol="CD3E", seed=i)
        if lacking:
            data[name] = _without_genes(data[name], set(tme.index[tme[LEFT_OUT] > 0]))
    run1 = launch / "cellranger" / "PBMC_1"
    write_cellranger_h5(run1 / "outs" / "filtered_feature_bc_matrix.h5", data["PBMC_1"])
    write_cellranger_h5(run1 / "outs" / "raw_feature_bc_matrix.h5", data["PBMC_2"])  # must not be read
    (run1 / "outs" / "possorted_genome_bam.bam").write_bytes(b"")
    write_mtx_folder(launch / "cellranger" / "PBMC_2" / "outs" / "filtered_feature_bc_matrix", data["PBMC_2"])
    (launch / "samplesheet.csv").write_text("sample,counts\nPBMC_1,cellranger/PBMC_1\nPBMC_2,cellranger/PBMC_2/outs\n")
    (launch / "no_covariates.config").write_text("params.covariates = null\n")
    run = run_pipeline(launch, nxf_home, ["-profile", "test", "-c", "no_covariates.config",
                                          "--input", "samplesheet.csv", "--markers", "tme"])
    print(f"facility inputs run: {run['result'].wall_s:.0f} s wall")
    return {**run, "data": data}


def test_counts_folders_resolve_to_the_filtered_matrix(facility_run):
    out = facility_run["result"].stdout
    launch = facility_run["launch"]
    assert (f"Sample 'PBMC_1': counts folder {launch}/cellranger/PBMC_1 is Cell Ranger/STARsolo output; "
            f"using {launch}/cellranger/PBMC_1/outs/filtered_feature_bc_matrix.h5") in out, out
    assert (f"Sample 'PBMC_2': counts folder {launch}/cellranger/PBMC_2/outs is Cell Ranger/STARsolo output; "
            f"using {launch}/cellranger/PBMC_2/outs/filtered_feature_bc_matrix") in out, out
    assert "Markers: bundled panel 'tme'" in out


@pytest.mark.parametrize("sample", SAMPLES)
def test_outputs_keep_barcodes_and_gene_ids_and_annotate_correctly(facility_run, sample):
    s = facility_run["data"][sample]
    outdir = facility_run["outdir"] / sample
    annotated = ad.read_h5ad(outdir / f"{sample}.annotated.h5ad")
    assert set(annotated.obs_names) <= set(s["barcodes"]) and annotated.n_obs >= 0.95 * len(s["barcodes"])
    assert annotated.var_names[0] == s["decoy_id"] and s["real_id"] in annotated.var_names
    assert list(annotated.var["gene_symbols"][:2]) == ["CD3E", "VIM"]
    assert not set(ADT) & set(annotated.var_names)
    predictions = pd.read_csv(outdir / f"{sample}.predictions.tsv", sep="\t", index_col=0)
    accuracy = (predictions["cellassign_celltype"] == s["truth"].reindex(predictions.index)).mean()
    assert accuracy > 0.85, accuracy
    terms = read_panel("tme").ontology  # the bundled panel's Cell Ontology terms, by its name
    called = predictions[predictions["cellassign_celltype"] != UNASSIGNED]
    # 'other' (added by default, no term of its own): CL:0000000, cell, the schema's convention; a
    # predicted doublet is no cell type: unknown
    expected = called["cellassign_celltype"].map({**terms, OTHER: CELL[0], DOUBLET: UNKNOWN})
    assert called[ONTOLOGY_ID_KEY].equals(expected), called[ONTOLOGY_ID_KEY]
    model = annotated.uns["cellassign"]["model"]  # 'Monocyte/Macrophage' is no key of the h5ad: a list by type
    fitted = {t: term for t, term in terms.items() if sample == "PBMC_1" or t != LEFT_OUT}
    assert dict(zip(model["cell_types"], model["ontology"])) == {**fitted, OTHER: ""}
    summary = json.loads((outdir / f"{sample}.qc_summary.json").read_text())
    assert summary["counts"]["non_gene_features"] == {"Antibody Capture": 3}
    assert summary["counts"]["gene_index"] == "gene_ids"
    assert summary["n_mito_genes"] == 6  # MT- genes found by symbol; genes are indexed by ID


def test_duplicated_marker_symbol_is_logged_and_resolved_to_the_expressed_gene(facility_run):
    logs = [" ".join(p.read_text().split()) for p in (facility_run["launch"] / "work").glob("*/*/.command.log")]
    train_logs = [t for t in logs if "markers matched by gene symbol" in t and "marker check before training" in t]
    assert len(train_logs) == 2, "expected one TRAIN log per sample"
    s = facility_run["data"]["PBMC_1"]  # both samples have the same gene IDs
    found = []
    for text in train_logs:
        assert f"marker CD3E: the gene symbol names 2 genes of the data ({s['decoy_id']}:" in text
        assert f"using {s['real_id']}, the one with the most counts" in text
        found += re.findall(r"markers matched by gene symbol \(data's var\['gene_symbols'\]\): (\d+) of 39 panel "
                            r"genes found", text)
    assert sorted(found) == ["35", "39"]  # PBMC_2 lacks the four epithelial markers


def test_a_type_without_markers_in_one_samples_data_is_left_out_there_with_one_warning_everywhere(facility_run):
    """PBMC_2's fit leaves the epithelial type out and the sample goes on; the one warning reaches
    the terminal, its report, MultiQC and pipeline_info/samples.tsv. PBMC_1's fit has every type."""
    out, stdout = facility_run["outdir"], facility_run["result"].stdout
    warning = left_out_warning([LEFT_OUT])
    assert stdout.count(warning) == 1 and f"PBMC_2: TRAIN: {warning}" in stdout, stdout
    with open(out / "pipeline_info" / "samples.tsv", newline="") as fh:
        status = {row["sample"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert {s: (status[s]["status"], status[s]["model_warnings"]) for s in SAMPLES} == {
        "PBMC_1": ("annotated", ""), "PBMC_2": ("annotated", warning)}
    with open(out / "multiqc" / "multiqc_data" / "multiqc_cellassign_nf_samples_table.txt", newline="") as fh:
        table = {row["Sample"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert (table["PBMC_1"]["model_warnings"], table["PBMC_2"]["model_warnings"]) == ("-", warning)
    stats = pd.read_csv(out / "multiqc" / "multiqc_data" / "multiqc_general_stats.txt", sep="\t", index_col=0,
                        keep_default_na=False)
    column = next(c for c in stats.columns if c.endswith("types_left_out"))
    assert (stats.loc["PBMC_1", column], stats.loc["PBMC_2", column]) == ("", LEFT_OUT)
    for sample in SAMPLES:
        html = (out / sample / "report" / f"{sample}.report.html").read_text()
        assert html.count(f"Warning: {warning}") == (sample == "PBMC_2")
        predictions = pd.read_csv(out / sample / f"{sample}.predictions.tsv", sep="\t", index_col=0)
        assert (LEFT_OUT in predictions.columns) == (sample == "PBMC_1")
    assert LEFT_OUT not in set(pd.read_csv(out / "PBMC_2" / "PBMC_2.predictions.tsv", sep="\t")["cellassign_celltype"])


def test_counts_folder_without_a_matrix_stops_before_any_task(tmp_path, nxf_home):
    (tmp_path / "cellranger" / "S1" / "outs").mkdir(parents=True)
    (tmp_path / "sheet.csv").write_text("sample,counts\nS1,cellranger/S1\n")
    result = nextflow(["run", str(REPO), "--input", "sheet.csv", "--markers", "tme", "--outdir", "results",
                       "-w", "work"], tmp_path, nxf_home)
    line = stopped_before_any_task(result, tmp_path / "work", "counts folder 'cellranger/S1'")
    assert ("line 2: counts folder 'cellranger/S1' of sample 'S1' holds no matrix.mtx(.gz) and no Cell Ranger/STARsolo "
            "filtered matrix") in line, line


def test_unknown_marker_panel_name_stops_before_any_task(tmp_path, nxf_home):
    result = nextflow(["run", str(REPO), "-profile", "test", "--markers", "pbmc9", "--outdir", "results",
                       "-w", "work"], tmp_path, nxf_home)
    line = stopped_before_any_task(result, tmp_path / "work", "Parameter --markers")
    assert "Parameter --markers: file" in line and "'pbmc9' is not a bundled panel (bone_marrow_human, " in line, line
    assert ", pbmc_human, pbmc_mouse, tme)" in line, line


def test_a_panel_with_a_bad_cell_ontology_term_stops_the_run_at_check_panel(tmp_path, nxf_home):
    """The panel is checked once, before any model: one line names the type and the term, and
    no sample is trained (or set aside: the panel is the run's, not a sample's)."""
    (tmp_path / "bad.txt").write_text("T cell [CL:0000084]:CD3D,CD3E,CD2,IL7R\nB cell [CL:0000003]:CD79A,MS4A1,CD19\n")
    result = nextflow(["run", str(REPO), "-profile", "test", "--markers", "bad.txt", "--outdir", "results",
                       "-w", "work"], tmp_path, nxf_home)
    assert result.returncode != 0
    line = ("error: bad.txt: Cell Ontology term refused ('B cell': CL:0000003 (obsolete native cell) is obsolete; "
            "its replacement is CL:0000000 (cell); checked against CL v2026-03-26")
    assert line in result.stdout + result.stderr, result.stdout[-3000:]
    assert "CHECK_PANEL" in result.stdout + result.stderr
    assert not list((tmp_path / "results").glob("*/*.model.pt")) and "set aside" not in result.stdout


def test_marker_diagnostics_flag_the_panels_subset_type_by_symbol_everywhere_a_user_looks(facility_run):
    """The TME panel's Myofibroblast markers are all markers of Vascular smooth muscle cells too:
    the pre-flight flags the pair (genes named by symbol, though the data are indexed by Ensembl
    ID), the run still succeeds, and the warning reaches the terminal, the report and MultiQC."""
    out = facility_run["outdir"]
    stats = (out / "multiqc" / "multiqc_data" / "multiqc_general_stats.txt").read_text().splitlines()
    column = next(i for i, c in enumerate(stats[0].split("\t")) if "marker_warnings" in c)
    for sample in SAMPLES:
        table = pd.read_csv(out / sample / f"{sample}.marker_diagnostics.tsv", sep="\t", keep_default_na=False)
        pair = table[(table["flag"] == "overlap") & (table["name"] == "Myofibroblast vs Vascular smooth muscle cells")]
        assert len(pair) == 1, table[["name", "flag"]]
        assert set(pair["markers"].iloc[0].split(", ")) >= {"ACTA2", "COL1A1", "COL3A1", "SERPINH1"}
        assert "Myofibroblast has no marker of its own" in pair["message"].iloc[0]
        n_warnings = int((table["severity"] == "warning").sum())
        assert f"{sample}: marker diagnostics: {n_warnings} warning" in facility_run["result"].stdout
        html = (out / sample / "report" / f"{sample}.report.html").read_text()
        assert html.index('id="marker-diagnostics"') < html.index('id="celltypes"'), "flagged: the section comes first"
        row = next(r.split("\t") for r in stats[1:] if r.split("\t")[0] == sample)
        assert float(row[column]) == n_warnings
