"""Doublets (cellassign_nf.doublets, docs/steps.md "Doublets"): found per sample with scanpy's
Scrublet on libraries that are not the CellAssign model (simulate_library: per-type expression
beyond the panel, library-size spread, dropout, doublets as two cells' summed counts), left out of
the fit, labelled 'doublet'. The targets checked are the issue's: at least 60% of the doublets
of two types found, at most 3% of the singlets flagged."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from cellassign_nf import steps
from cellassign_nf.doublets import find_doublets, otsu_threshold, read_doublets, score_of_share
from cellassign_nf.errors import InputError
from cellassign_nf.keys import (CELLTYPE_KEY, DOUBLET, DOUBLET_COLUMNS, DOUBLET_SCORE_KEY, LEVEL_KEY,
                                ONTOLOGY_ID_KEY, PREDICTED_DOUBLET_KEY, PROB_KEY, PROBS_KEY, SAMPLE_KEY, SCRUBLET_KEY,
                                TRUE_CELLTYPE_KEY, TRUE_DOUBLET_KEY)
from cellassign_nf.settings import DoubletSettings, ModelSettings, TrainSettings
from cellassign_nf.simulate import simulate_library

MARKERS = {"T cell": ["CD3D", "CD3E", "IL7R"], "B cell": ["MS4A1", "CD79A", "CD19"],
           "NK cell": ["NKG7", "GNLY", "KLRD1"], "monocyte": ["CD14", "LYZ", "FCGR3A"]}
ONTOLOGY = {"T cell": "CL:0000084", "B cell": "CL:0000236", "NK cell": "CL:0000623", "monocyte": "CL:0000576"}


def _kinds(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """(doublets of two types, singlets) as masks over the cells."""
    pair = adata.obs[TRUE_DOUBLET_KEY].astype(str)
    first, second = pair.str.split("+").str[0], pair.str.split("+").str[-1]
    return ((pair != "") & (first != second)).to_numpy(), (pair == "").to_numpy()


@pytest.fixture(scope="module")
def library() -> ad.AnnData:
    return simulate_library(MARKERS, n_cells=3000, n_other_genes=1500, doublet_rate=0.08, seed=3)


def test_simulated_doublets_are_two_cells_summed():
    adata = simulate_library(MARKERS, n_cells=1000, n_other_genes=300, doublet_rate=0.1, seed=1)
    pair = adata.obs[TRUE_DOUBLET_KEY].astype(str)
    assert (pair != "").sum() == 100
    assert set(pair[pair != ""].str.split("+").explode()) <= set(MARKERS)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    # two cells' counts: about twice a singlet's library
    assert 1.6 < np.median(totals[(pair != "").to_numpy()]) / np.median(totals[(pair == "").to_numpy()]) < 2.5
    # not the CellAssign model: types differ in genes beyond the panel
    means = pd.DataFrame(adata.X[:, len(sum(MARKERS.values(), [])):].toarray()).groupby(
        adata.obs[TRUE_CELLTYPE_KEY].to_numpy()).mean()
    assert (np.abs(np.log((means.max() + 0.05) / (means.min() + 0.05))) > 1).mean() > 0.05


def test_scrublet_finds_the_doublets_of_two_types_and_few_singlets(library):
    table, summary = find_doublets(library)
    two_types, singlets = _kinds(library)
    called = table[PREDICTED_DOUBLET_KEY].to_numpy()
    assert called[two_types].mean() >= 0.6
    assert called[singlets].mean() <= 0.03
    assert summary["method"] == "scrublet" and summary["n_doublets"] == called.sum()
    settings = DoubletSettings()
    assert summary["threshold"] >= score_of_share(settings.doublet_min_share, settings.expected_doublet_rate)
    assert sum(summary["histogram"]["observed"]) == library.n_obs
    assert summary["warnings"] == []


def test_a_large_sample_is_scored_in_parts_as_well(library):
    table, summary = find_doublets(library, DoubletSettings(doublet_chunk_cells=1500))
    two_types, singlets = _kinds(library)
    called = table[PREDICTED_DOUBLET_KEY].to_numpy()
    assert summary["parts"] == 2
    assert called[two_types].mean() >= 0.6 and called[singlets].mean() <= 0.03


def test_a_library_without_doublets_is_not_split():
    adata = simulate_library(MARKERS, n_cells=2000, n_other_genes=1000, doublet_rate=0.0, seed=4)
    table, _ = find_doublets(adata)
    assert table[PREDICTED_DOUBLET_KEY].mean() <= 0.01


def test_far_more_doublets_than_expected_is_a_warning(library):
    _, summary = find_doublets(library, DoubletSettings(expected_doublet_rate=0.02))  # 8% in the library
    assert summary["rate"] > 0.04
    assert len(summary["warnings"]) == 1 and "more than 2 x the expected 2%" in summary["warnings"][0]
    _, expected = find_doublets(library, DoubletSettings(expected_doublet_rate=0.08))
    assert expected["warnings"] == []


def test_a_small_sample_or_none_is_not_checked_with_a_note():
    adata = simulate_library(MARKERS, n_cells=60, n_other_genes=100, seed=6)
    table, summary = find_doublets(adata)
    assert not table[PREDICTED_DOUBLET_KEY].any() and table[DOUBLET_SCORE_KEY].isna().all()
    assert summary["method"] == "skipped" and "60 cells, fewer than --doublet-min-cells 100" in summary["note"]
    _, off = find_doublets(adata, DoubletSettings(doublets="none"))
    assert (off["method"], off["rate_text"]) == ("none", "not checked")


def test_otsu_splits_the_simulated_scores_between_their_modes():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.1, 0.02, 500), rng.normal(0.6, 0.05, 500)
    threshold = otsu_threshold(np.r_[low, high])
    assert (low < threshold).mean() > 0.99 and (high > threshold).all()
    assert otsu_threshold(np.full(10, 0.3)) == 0.3


def test_doublet_tables_match_cells_by_barcode_or_cohort_name(tmp_path):
    table = pd.DataFrame({DOUBLET_SCORE_KEY: [0.1, 0.7], PREDICTED_DOUBLET_KEY: [False, True],
                          SAMPLE_KEY: ["s1", "s1"]}, index=pd.Index(["AAA", "CCC"], name="cell"))
    table.to_csv(tmp_path / "s1.tsv", sep="\t")
    table.assign(**{SAMPLE_KEY: "s2"}).to_csv(tmp_path / "s2.tsv", sep="\t")
    paths = [tmp_path / "s1.tsv", tmp_path / "s2.tsv"]
    merged = read_doublets(paths, pd.Index(["s1:AAA", "s2:CCC", "s1:CCC"]))
    assert merged[PREDICTED_DOUBLET_KEY].tolist() == [False, True, True]
    assert read_doublets(paths[:1], pd.Index(["CCC"]))[PREDICTED_DOUBLET_KEY].tolist() == [True]
    with pytest.raises(InputError, match=r"has no doublet call for 1 of the 2 cells \(e.g. GGG\)"):
        read_doublets(paths[:1], pd.Index(["AAA", "GGG"]))
    (tmp_path / "bad.tsv").write_text("cell\tscore\nAAA\t1\n")
    with pytest.raises(InputError, match="is not a doublet table"):
        read_doublets([tmp_path / "bad.tsv"], pd.Index(["AAA"]))


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, library):
    """train and annotate a library with its doublet table, as the pipeline runs them."""
    d = tmp_path_factory.mktemp("doublets")
    adata = library.copy()
    adata.obs[SAMPLE_KEY] = "lib"
    adata.write_h5ad(d / "lib.h5ad")
    panel = {t: {"ontology": ONTOLOGY[t], "markers": genes} for t, genes in MARKERS.items()}
    (d / "panel.json").write_text(json.dumps(panel))
    steps.doublets(d / "lib.h5ad", d / "lib.doublets.tsv", d / "lib.doublet_summary.json")
    torch.manual_seed(0)
    model = steps.train(d / "lib.h5ad", d / "panel.json", d / "m.pt", d / "h.tsv", d / "p.tsv",
                        info_out=d / "info.json", doublets_paths=[d / "lib.doublets.tsv"], other=False,
                        model_settings=ModelSettings(), settings=TrainSettings(n_restarts=1, progress=False))
    out = steps.annotate(d / "lib.h5ad", d / "p.tsv", d / "lib.annotated.h5ad", d / "lib.predictions.tsv",
                         model_info_path=d / "info.json", doublets_path=d / "lib.doublets.tsv",
                         doublet_summary_path=d / "lib.doublet_summary.json")
    return d, model, out


def test_predicted_doublets_are_not_fitted_and_are_labelled_doublet(annotated, library):
    d, model, out = annotated
    calls = pd.read_csv(d / "lib.doublets.tsv", sep="\t", index_col=0)
    doublet = calls[PREDICTED_DOUBLET_KEY].to_numpy()
    assert model.train_params["n_cells"] == library.n_obs - doublet.sum()  # fitted on the singlets only
    probabilities = pd.read_csv(d / "p.tsv", sep="\t", index_col=0)
    assert len(probabilities) == library.n_obs  # ... and every cell scored
    obs = out.obs
    assert (obs[CELLTYPE_KEY].astype(str) == DOUBLET).to_numpy().tolist() == doublet.tolist()
    assert (obs.loc[doublet, ONTOLOGY_ID_KEY].astype(str) == "unknown").all()
    assert (obs.loc[doublet, LEVEL_KEY].astype(str) == "none").all() and obs.loc[doublet, PROB_KEY].isna().all()
    singlets = ~doublet & (library.obs[TRUE_DOUBLET_KEY] == "").to_numpy()
    truth = library.obs[TRUE_CELLTYPE_KEY].astype(str).to_numpy()
    assert (obs[CELLTYPE_KEY].astype(str).to_numpy()[singlets] == truth[singlets]).mean() > 0.9
    written = ad.read_h5ad(d / "lib.annotated.h5ad")
    assert written.obsm[PROBS_KEY].shape == (library.n_obs, len(MARKERS))  # doublets keep their probabilities
    assert written.uns[SCRUBLET_KEY]["n_doublets"] == doublet.sum()
    predictions = pd.read_csv(d / "lib.predictions.tsv", sep="\t", index_col=0)
    assert list(predictions.columns[6:8]) == list(DOUBLET_COLUMNS)
    assert predictions[PREDICTED_DOUBLET_KEY].tolist() == doublet.tolist()


def test_the_report_shows_the_doublets(annotated, tmp_path):
    from cellassign_nf.report import make_report

    d, _, out = annotated
    (d / "qc.json").write_text(json.dumps({"cells_before": out.n_obs, "cells_after": out.n_obs, "warnings": []}))
    result = make_report(d / "lib.annotated.h5ad", history=d / "h.tsv", model=d / "m.pt", qc_summary=d / "qc.json",
                         sample="lib", outdir=tmp_path, umap=False)
    n = int((out.obs[CELLTYPE_KEY].astype(str) == DOUBLET).sum())
    html = result.html.read_text()
    assert 'id="doublets"' in html and f"{n} of {out.n_obs} cells" in html
    assert (tmp_path / "lib_doublet_scores.png").exists()
    stats = (tmp_path / "lib_cellassign_general_stats_mqc.yaml").read_text()
    assert f"pct_doublets: {round(100 * n / out.n_obs, 2)}" in stats
    # doublets are neither assigned nor the top type
    assert result.summary.n_assigned == out.n_obs - n - result.summary.n_unassigned


def test_annotate_refuses_files_that_are_not_the_doublet_step_s(annotated, tmp_path):
    d, _, _ = annotated
    (tmp_path / "qc.json").write_text(json.dumps({"cells_before": 3}))
    with pytest.raises(InputError, match=r"qc.json: is not a doublet summary\. Give the --summary JSON"):
        steps.annotate(d / "lib.h5ad", d / "p.tsv", tmp_path / "a.h5ad", tmp_path / "p.tsv",
                       doublets_path=d / "lib.doublets.tsv", doublet_summary_path=tmp_path / "qc.json")
    (tmp_path / "cut.json").write_text('{"method": "scr')
    with pytest.raises(InputError, match=r"cut.json: cannot be read as a doublet summary \(JSONDecodeError\)"):
        steps.annotate(d / "lib.h5ad", d / "p.tsv", tmp_path / "a.h5ad", tmp_path / "p.tsv",
                       doublets_path=d / "lib.doublets.tsv", doublet_summary_path=tmp_path / "cut.json")
    with pytest.raises(InputError, match=r"is not a doublet table"):
        steps.annotate(d / "lib.h5ad", d / "p.tsv", tmp_path / "a.h5ad", tmp_path / "p.tsv",
                       doublets_path=d / "p.tsv")
    assert not (tmp_path / "a.h5ad").exists()  # nothing written
