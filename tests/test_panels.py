"""Marker panels and Cell Ontology terms (docs/inputs.md, docs/markers.md).

The bundled panels: each loads, every type has a current Cell Ontology term, each panel covers the
types of its tissue (checked through the ontology's own hierarchy), passes the pre-flight check on
data that hold its types, and the blood panel annotates real PBMCs by lineage. The panel formats
carry terms; a bad term is refused by its message; every output carries each cell's term and label
with the CELLxGENE schema's conventions (unassigned: unknown; other: CL:0000000).
"""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellassign_nf import ontology
from cellassign_nf.cli import main
from cellassign_nf.diagnostics import check_markers
from cellassign_nf.errors import InputError
from cellassign_nf.keys import DOUBLET, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY, OTHER, UNASSIGNED, UNS_KEY
from cellassign_nf.labels import assign_labels
from cellassign_nf.markers import Panel, bundled_panels, marker_list_to_matrix, panel_header, read_panel, write_panel
from cellassign_nf.simulate import simulate

from conftest import DEMO

BUNDLED = sorted(bundled_panels())
TISSUES = ("pbmc", "pbmc_fine", "bone_marrow", "lung")
SPECIES = ("human", "mouse")


def _descends(term: str, ancestor: str) -> bool:
    return ancestor in ontology._parser().get_term_ancestors(term, include_self=True)


def _types_under(panel: Panel, ancestor: str) -> list[str]:
    return [t for t, term in panel.ontology.items() if _descends(term, ancestor)]


# --- the bundled panels -------------------------------------------------------------------------------
def test_bundled_panels_cover_blood_bone_marrow_and_lung_in_human_and_mouse():
    assert set(BUNDLED) == {f"{t}_{s}" for t in TISSUES for s in SPECIES} | {"tme"}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_panel_loads_with_a_current_term_for_every_type(name):
    panel = read_panel(name)
    assert set(panel.ontology) == set(panel.rho.columns), "a type without a Cell Ontology term"
    assert all(ontology.term_problem(term) is None for term in panel.ontology.values())
    assert (panel.rho.sum(axis=0) >= 4).all(), "a type with fewer than 4 markers"
    if name != "tme":  # the original's Monocyte/Macrophage is kept: a '/' in a type name nests the h5ad's
        assert not [t for t in panel.rho.columns if "/" in t]  # obsm probability columns, which anndata will refuse
    header = " ".join(panel_header(bundled_panels()[name]))
    assert "Licence: Apache License 2.0" in header and ("Sources:" in header or "Origin:" in header)
    assert "2026-12-02" in header and "Cell Ontology v2026-03-26" in header
    genes = [str(g) for g in panel.rho.index]
    if name.endswith("_mouse"):  # MGI symbols: a capital, then lower case (Cd3e, Hba-a1, Tcrg-C1)
        assert all(g[0].isupper() and g[1:] != g[1:].upper() for g in genes), genes
    else:  # HGNC symbols: upper case
        assert all(g == g.upper() for g in genes), genes


@pytest.mark.parametrize("species", SPECIES)
def test_fine_blood_types_refine_the_broad_ones(species):
    """Labels of the two levels mean the same thing: every fine type's term is (under) a broad type's."""
    broad, fine = read_panel(f"pbmc_{species}"), read_panel(f"pbmc_fine_{species}")
    unplaced = [t for t, term in fine.ontology.items() if not any(_descends(term, b) for b in broad.ontology.values())]
    assert unplaced == (["HSPC"] if species == "human" else []), unplaced  # progenitors: only the fine level
    terms = set(fine.ontology.values())
    # CD4 and CD8 T naive and memory, NK, CD14 (classical) and CD16 (non-classical) monocytes, pDC, platelets
    assert terms >= {"CL:0000895", "CL:0000897", "CL:0000900", "CL:0000909", "CL:0000623", "CL:0000860",
                     "CL:0000875", "CL:0000784", "CL:0000233"}, terms
    assert _types_under(fine, "CL:0000990") and _types_under(fine, "CL:0000236")  # conventional DC; B cells


@pytest.mark.parametrize("species", SPECIES)
def test_lung_panels_hold_every_compartment_with_immune_cells(species):
    panel = read_panel(f"lung_{species}")
    for compartment, ancestors in {"epithelial": ["CL:0000066"], "endothelial": ["CL:0000115"],
                                   "stromal": ["CL:0000057", "CL:0000192", "CL:0000669"],
                                   "immune": ["CL:0000738"]}.items():
        assert all(_types_under(panel, a) for a in ancestors), compartment
    assert len(_types_under(panel, "CL:0000738")) >= 7  # macrophages, monocytes, DCs, T, NK, B, plasma cells


@pytest.mark.parametrize("species", SPECIES)
def test_bone_marrow_panels_hold_progenitors_and_their_progeny(species):
    panel = read_panel(f"bone_marrow_{species}")
    progenitors = _types_under(panel, "CL:0008001")  # hematopoietic precursor cell
    assert {"HSC-MPP", "early myeloid progenitor", "erythroid progenitor"} <= set(progenitors), progenitors
    for progeny in ("CL:0000775", "CL:0000765", "CL:0000556", "CL:0000817"):  # neutrophil ... precursor B cell
        assert _types_under(panel, progeny), progeny


def _holding_its_types(panel: Panel, seed: int = 1) -> ad.AnnData:
    """5,000 cells of every type of the panel, in unequal shares (at least 25 cells each), each
    marker five-fold above its base."""
    return simulate(panel.rho, n_cells=5000, n_other_genes=300, proportion_sd=1.0, min_cells_per_type=25,
                    fold_change=5, seed=seed)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_panel_passes_the_preflight_check_on_data_that_hold_its_types(name):
    """The check that the pre-flight makes of the panel itself: two usable markers per type, no two
    types sharing most of their markers. The original TME panel keeps its known flaw (its
    myofibroblast markers are all vascular smooth muscle markers), which the check names."""
    panel = read_panel(name)
    table = check_markers(_holding_its_types(panel), panel.rho, quiet=True).table()
    warnings = set(zip(table.loc[table.severity == "warning", "name"], table.loc[table.severity == "warning", "flag"]))
    assert warnings == ({("Myofibroblast vs Vascular smooth muscle cells", "overlap")} if name == "tme" else set())


def test_blood_panel_on_real_pbmcs():
    """700 real PBMCs (10x; counts of 765 genes): the pre-flight flags only the markers these 765
    genes lack and the type they leave empty (platelets); without that type, the default fit labels
    each sorted population's cells with its lineage."""
    from cellassign_nf import CellAssign
    from cellassign_nf.datasets import pbmc68k_counts

    adata = pbmc68k_counts()
    panel = read_panel("pbmc_human")
    table = check_markers(adata, panel.rho, quiet=True).table()
    flags = table[table.severity == "warning"]
    assert set(flags.flag) == {"missing", "few_markers"}, flags
    assert list(flags.loc[flags.flag == "few_markers", "name"]) == ["platelet"]
    model = CellAssign(adata, panel.rho.drop(columns="platelet"), ontology=panel.ontology)
    labels = assign_labels(model.train(seed=0).predict(), 0.5, ontology=model.ontology)
    truth = adata.obs["bulk_labels"].astype(str).reindex(labels.index)
    lineages = {"T cell": truth.str.startswith("CD4+") | (truth == "CD8+/CD45RA+ Naive Cytotoxic"),
                "B cell": truth == "CD19+ B", "NK cell": truth == "CD56+ NK", "monocyte": truth == "CD14+ Monocyte"}
    for cell_type, cells in lineages.items():
        called = labels.loc[cells.to_numpy(), "cellassign_celltype"].astype(str)
        share = called.isin([cell_type, "plasmablast"] if cell_type == "B cell" else [cell_type]).mean()
        assert share >= 0.9, (cell_type, share, called.value_counts().to_dict())
    t_cells = labels[labels["cellassign_celltype"] == "T cell"]
    assert set(zip(t_cells[ONTOLOGY_ID_KEY], t_cells[ONTOLOGY_LABEL_KEY])) == {("CL:0000084", "T cell")}


@pytest.fixture(scope="module")
def fine_pbmc_run(tmp_path_factory) -> dict:
    """`cellassign-nf run` of the fine blood panel on the 700 real PBMCs, whose 765 genes hold none
    of the platelet markers."""
    from cellassign_nf.datasets import pbmc68k_counts

    folder = tmp_path_factory.mktemp("fine_pbmc")
    pbmc68k_counts().write_h5ad(folder / "pbmc68k.h5ad")
    result = CliRunner().invoke(main, ["run", str(folder / "pbmc68k.h5ad"), "--markers", "pbmc_fine_human",
                                       "--outdir", str(folder / "out"), "--no-umap"])
    return {"folder": folder, "out": folder / "out", "result": result}


def test_fine_blood_panel_on_real_pbmcs_leaves_platelets_out_with_one_warning(fine_pbmc_run):
    """The run goes on without the platelet type: one warning naming it in the log, the model's
    description, the report and MultiQC; no cell is labelled platelet, every other type is fitted."""
    from cellassign_nf.markers import left_out_warning

    result, out = fine_pbmc_run["result"], fine_pbmc_run["out"]
    assert result.exit_code == 0, result.output
    warning = left_out_warning(["platelet"])
    log = " ".join(result.stderr.split())  # the log's lines joined: a long message wraps
    assert log.count("left out of the fit") == 1 and warning in log, log
    predictions = pd.read_csv(out / "pbmc68k.predictions.tsv", sep="\t", index_col=0)
    assert "platelet" not in set(predictions["cellassign_celltype"]) and "platelet" not in predictions.columns
    fitted = [t for t in read_panel("pbmc_fine_human").rho.columns if t != "platelet"]
    assert [c for c in predictions.columns if c in fitted] == fitted  # a probability for every other type
    info = json.loads((out / "pbmc68k.model_info.json").read_text())
    assert (info["left_out_types"], info["warnings"]) == (["platelet"], [warning])
    annotated = ad.read_h5ad(out / "pbmc68k.annotated.h5ad", backed="r")
    assert list(annotated.uns[UNS_KEY]["model"]["warnings"]) == [warning]
    html = (out / "report" / "pbmc68k.report.html").read_text()
    assert html.count(f"Warning: {warning}") == 1  # in the cell-type section
    assert "types left out of the fit" in html and "panel types left out (no marker gene in the data)" in html
    stats = (out / "report" / "pbmc68k_cellassign_general_stats_mqc.yaml").read_text()
    assert "types_left_out: platelet" in stats and "title: Types left out" in stats


def test_fine_blood_panel_on_real_pbmcs_is_refused_with_require_every_type(fine_pbmc_run):
    folder = fine_pbmc_run["folder"]
    result = CliRunner().invoke(main, ["--quiet", "run", str(folder / "pbmc68k.h5ad"), "--markers",
                                       "pbmc_fine_human", "--outdir", str(folder / "strict"), "--no-umap",
                                       "--require-every-type"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: pbmc_fine_human: cell type(s) with no marker gene in the data: platelet. "), result.stderr
    assert not (folder / "strict" / "pbmc68k.model.pt").exists()


# --- terms in the panel formats -----------------------------------------------------------------------
def test_every_panel_format_gives_types_their_terms(tmp_path):
    expected = {"T cell": "CL:0000084", "B cell": "CL:0000236"}
    files = {
        "p.yaml": "T cell:\n  ontology: CL:0000084\n  markers: [CD3D, CD3E]\nB cell:\n  markers: [MS4A1]\n"
                  "  ontology: CL:0000236\nNK cell: [NKG7]\n",
        "p.json": json.dumps({"T cell": {"markers": ["CD3D", "CD3E"], "ontology": "CL:0000084"},
                              "B cell": {"markers": ["MS4A1"], "ontology": "CL:0000236"}, "NK cell": ["NKG7"]}),
        "p.txt": "# a panel\nT cell [CL:0000084]:CD3D,CD3E\nB cell [ CL:0000236 ]: MS4A1\nNK cell:NKG7\n",
        "p.csv": "gene,T cell,B cell,NK cell\nontology,CL:0000084,CL:0000236,\nCD3D,1,0,0\nCD3E,1,0,0\nMS4A1,0,1,0\n"
                 "NKG7,0,0,1\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        panel = read_panel(tmp_path / name)
        assert panel.ontology == expected, name
        assert list(panel.rho.columns) == ["T cell", "B cell", "NK cell"], name
        assert panel.rho.loc["CD3E"].tolist() == [1, 0, 0] and panel.rho.loc["NKG7"].tolist() == [0, 0, 1], name
    for out in ("w.tsv", "w.csv"):  # what check-model writes for the pipeline reads back the same
        write_panel(panel, tmp_path / out)
        again = read_panel(tmp_path / out)
        assert again.ontology == expected and again.rho.equals(panel.rho), out


def test_a_bracketed_name_that_is_no_term_stays_in_the_type_name(tmp_path):
    (tmp_path / "p.txt").write_text("T cells [activated]:CD3D,CD69\n")
    panel = read_panel(tmp_path / "p.txt")
    assert list(panel.rho.columns) == ["T cells [activated]"] and panel.ontology == {}


@pytest.mark.parametrize("term, message", [
    ("CL:9999999", "'B cell': CL:9999999 is not a term of the Cell Ontology"),
    ("CL:0000003", "'B cell': CL:0000003 (obsolete native cell) is obsolete; its replacement is CL:0000000 (cell)"),
    ("UBERON:0002048", "'B cell': 'UBERON:0002048' is not a Cell Ontology ID (CL: and seven digits)"),
    ("CL:236", "'B cell': 'CL:236' is not a Cell Ontology ID"),
    ("CL:0000255", "'B cell': CL:0000255 (eukaryotic cell) is too general for a cell type"),
])
def test_a_panel_with_a_bad_term_is_refused_by_its_message(tmp_path, term, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"T cell:\n  ontology: CL:0000084\n  markers: [CD3D]\nB cell:\n  ontology: '{term}'\n"
                    "  markers: [MS4A1]\n")
    for command in (["markers", "show", str(path)],
                    ["check-markers", str(DEMO / "sample1.h5ad"), "--markers", str(path), "-o", str(tmp_path / "d.tsv")]):
        r = CliRunner().invoke(main, ["--quiet", *command])
        assert r.exit_code == 2, r.output
        assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr  # one line
        assert r.stderr.startswith(f"error: {path}: Cell Ontology term refused ({message}"), r.stderr
        assert "checked against CL v2026-03-26" in r.stderr and "https://www.ebi.ac.uk/ols4/ontologies/cl" in r.stderr
    assert not (tmp_path / "d.tsv").exists()
    with pytest.raises(InputError, match="is not a term of the Cell Ontology"):
        ontology.check_terms({"x": "CL:9999999"})


def test_panel_mistakes_are_refused_by_their_message(tmp_path):
    (tmp_path / "typo.yaml").write_text("T cell:\n  ontolgy: CL:0000084\n  markers: [CD3D]\n")
    with pytest.raises(InputError, match=r"cell type 'T cell' has unknown keys \(ontolgy\)"):
        read_panel(tmp_path / "typo.yaml")
    (tmp_path / "reserved.txt").write_text("cell_type:CD3D\nB:MS4A1\n")
    with pytest.raises(InputError, match="cell type\\(s\\) named like a label or column of the outputs: cell_type"):
        read_panel(tmp_path / "reserved.txt")


# --- terms in the outputs -----------------------------------------------------------------------------
def test_labels_follow_the_schema_conventions():
    """A type's own term; unknown below the threshold and for a type without a term; CL:0000000 (cell)
    for other."""
    probs = pd.DataFrame([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1], [0.05, 0.9, 0.05]],
                         index=list("abcd"), columns=["T cell", "NK cell", OTHER])
    labels = assign_labels(probs, 0.6, ontology={"T cell": "CL:0000084"})
    assert labels[ONTOLOGY_ID_KEY].astype(str).tolist() == ["CL:0000084", "CL:0000000", "unknown", "unknown"]
    assert labels[ONTOLOGY_LABEL_KEY].astype(str).tolist() == ["T cell", "cell", "unknown", "unknown"]
    assert labels["cellassign_celltype"].astype(str).tolist() == ["T cell", OTHER, UNASSIGNED, "NK cell"]
    assert ONTOLOGY_ID_KEY not in assign_labels(probs, 0.6)  # without ontology: as before


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    demo = ad.read_h5ad(DEMO / "sample1.h5ad")
    demo.obs["cell_type"] = "from the authors"  # e.g. a CELLxGENE file's own labels
    demo.write_h5ad(out / "s1.h5ad")
    r = CliRunner().invoke(main, ["run", str(out / "s1.h5ad"), "--markers", str(DEMO / "markers.csv"), "--outdir",
                                  str(out), "--max-epochs", "60", "--n-restarts", "1", "--no-umap"])
    assert r.exit_code == 0, r.output
    return out, r


def test_every_output_carries_each_cells_term(demo_run):
    out, result = demo_run
    panel = read_panel(DEMO / "markers.csv")
    annotated = ad.read_h5ad(out / "s1.annotated.h5ad")
    obs = annotated.obs
    for cell_type, term in panel.ontology.items():
        cells = obs["cellassign_celltype"] == cell_type
        assert cells.sum() > 50
        assert set(obs.loc[cells, ONTOLOGY_ID_KEY].astype(str)) == {term}
        assert set(obs.loc[cells, ONTOLOGY_LABEL_KEY].astype(str)) == {ontology.label(term)}
    assert ontology.label("CL:0000623") == "natural killer cell"
    assert obs["cell_type_input"].astype(str).unique().tolist() == ["from the authors"]  # kept, not overwritten
    assert "obs['cell_type'] of" in " ".join(result.stderr.split()) and "kept as obs['cell_type_input']" in " ".join(
        result.stderr.split())
    assert annotated.uns[UNS_KEY]["cell_ontology"] == "CL v2026-03-26 (cellxgene-ontology-guide 1.11.1)"
    predictions = pd.read_csv(out / "s1.predictions.tsv", sep="\t", index_col=0)
    assert list(predictions.columns[:4]) == ["cellassign_celltype", "cellassign_prob", ONTOLOGY_ID_KEY,
                                             ONTOLOGY_LABEL_KEY]
    assert predictions[ONTOLOGY_ID_KEY].equals(obs[ONTOLOGY_ID_KEY].astype(str).reindex(predictions.index))
    html = (out / "report" / "s1.report.html").read_text()
    assert "Cell Ontology term" in html and "CL:0000623" in html and "natural killer cell" in html
    info = json.loads((out / "s1.model_info.json").read_text())
    assert info["cell_types"] == [*panel.rho.columns, OTHER]  # run adds 'other' by default; it has no term
    assert info["ontology"] == [panel.ontology.get(t, "") for t in info["cell_types"]]
    r = CliRunner().invoke(main, ["cohort-table", str(out / "s1.predictions.tsv"), "-o", str(out / "c.tsv")])
    assert r.exit_code == 0, r.output
    doublets = [DOUBLET] if (obs["cellassign_celltype"].astype(str) == DOUBLET).any() else []  # a label, not a type
    assert pd.read_csv(out / "c.tsv", sep="\t").columns.tolist() == ["sample", *panel.rho.columns, OTHER, *doublets,
                                                                     UNASSIGNED]


def test_a_saved_model_keeps_its_terms_for_new_batches(demo_run, tmp_path):
    out, _ = demo_run
    r = CliRunner().invoke(main, ["--quiet", "predict", str(DEMO / "sample2.h5ad"), "--model", str(out / "s1.model.pt"),
                                  "-o", str(tmp_path / "s2.model.pt"), "--history", str(tmp_path / "h.tsv"),
                                  "--probabilities", str(tmp_path / "p.tsv"), "--model-info", str(tmp_path / "i.json"),
                                  "--max-epochs", "30"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["--quiet", "annotate", str(DEMO / "sample2.h5ad"), "-p", str(tmp_path / "p.tsv"),
                                  "-o", str(tmp_path / "s2.h5ad"), "--predictions", str(tmp_path / "s2.tsv"),
                                  "--model-info", str(tmp_path / "i.json")])
    assert r.exit_code == 0, r.output
    obs = ad.read_h5ad(tmp_path / "s2.h5ad").obs
    nk = obs["cellassign_celltype"] == "NK cell"
    assert nk.any() and set(obs.loc[nk, ONTOLOGY_ID_KEY].astype(str)) == {"CL:0000623"}
    r = CliRunner().invoke(main, ["--quiet", "check-model", str(tmp_path / "s2.model.pt"), "--panel",
                                  str(tmp_path / "panel.tsv")])
    assert r.exit_code == 0, r.output
    assert read_panel(tmp_path / "panel.tsv").ontology == read_panel(DEMO / "markers.csv").ontology


def test_a_panel_without_terms_labels_every_type_unknown(tmp_path):
    rho = marker_list_to_matrix({"T": ["CD3D", "CD3E", "IL7R"], "B": ["CD79A", "MS4A1", "CD19"]})
    rho.to_csv(tmp_path / "plain.csv")
    r = CliRunner().invoke(main, ["run", str(DEMO / "sample1.h5ad"), "--markers", str(tmp_path / "plain.csv"),
                                  "--outdir", str(tmp_path), "--max-epochs", "30", "--n-restarts", "1", "--no-report"])
    assert r.exit_code == 0, r.output
    obs = ad.read_h5ad(tmp_path / "sample1.annotated.h5ad").obs
    # the demo's monocytes and NK cells, which this panel lacks, are 'other' (CL:0000000, cell, by
    # the schema's convention); every other cell is unknown
    other = (obs["cellassign_celltype"] == OTHER).to_numpy()
    lacking = obs["true_celltype"].isin(["Monocyte", "NK cell"]).to_numpy()
    assert (other & lacking).sum() >= 0.9 * lacking.sum() and (other & ~lacking).sum() <= 0.02 * (~lacking).sum()
    assert set(obs.loc[other, ONTOLOGY_ID_KEY].astype(str)) == {"CL:0000000"}
    assert set(obs.loc[other, ONTOLOGY_LABEL_KEY].astype(str)) == {"cell"}
    assert set(obs.loc[~other, ONTOLOGY_ID_KEY].astype(str)) == {"unknown"}
    assert set(obs.loc[~other, ONTOLOGY_LABEL_KEY].astype(str)) == {"unknown"}
    assert "no Cell Ontology terms (the panel gives none)" in " ".join(r.stderr.split())
    assert "cell_ontology" not in ad.read_h5ad(tmp_path / "sample1.annotated.h5ad").uns[UNS_KEY]


def test_type_names_with_a_slash_keep_their_terms_in_the_h5ad(tmp_path):
    """'Monocyte/Macrophage' (tme), 'T/NK cell': a key of an h5ad cannot hold '/', so
    the model's description keeps its terms as a list in the order of its types."""
    (tmp_path / "p.txt").write_text("T/NK cell [CL:0000542]:CD3D,CD3E,CD2,NKG7,GNLY\nB cell [CL:0000236]:CD79A,MS4A1,CD19\n"
                                    "Monocyte/Macrophage [CL:0000113]:CD14,LYZ,S100A8\n")
    r = CliRunner().invoke(main, ["--quiet", "run", str(DEMO / "sample1.h5ad"), "--markers", str(tmp_path / "p.txt"),
                                  "--outdir", str(tmp_path), "--max-epochs", "30", "--n-restarts", "1", "--no-report"])
    assert r.exit_code == 0, r.output
    annotated = ad.read_h5ad(tmp_path / "sample1.annotated.h5ad")
    info = annotated.uns[UNS_KEY]["model"]
    terms = read_panel(tmp_path / "p.txt").ontology
    assert dict(zip(info["cell_types"], info["ontology"])) == {**terms, OTHER: ""}  # 'other': no term
    mono = annotated.obs["cellassign_celltype"] == "Monocyte/Macrophage"
    assert mono.sum() > 50 and set(annotated.obs.loc[mono, ONTOLOGY_LABEL_KEY].astype(str)) == {"mononuclear phagocyte"}


def test_the_api_model_takes_and_keeps_terms(tmp_path):
    from cellassign_nf import CellAssign

    adata = ad.read_h5ad(DEMO / "sample1.h5ad")
    panel = read_panel(DEMO / "markers.csv")
    with pytest.raises(InputError, match="'T cell': CL:9999999 is not a term"):
        CellAssign(adata, panel.rho, ontology={"T cell": "CL:9999999"})
    model = CellAssign(adata, panel.rho, ontology=panel.ontology).train(max_epochs=20, n_restarts=1)
    model.save(tmp_path / "m.pt")
    loaded = CellAssign.load(tmp_path / "m.pt")
    assert loaded.ontology == panel.ontology
    assert loaded.describe()["ontology"] == [panel.ontology[t] for t in loaded.cell_types]
    labels = assign_labels(loaded.predict(adata), ontology=loaded.ontology)
    assert np.isin(labels[ONTOLOGY_ID_KEY].astype(str), [*panel.ontology.values(), "unknown"]).all()
