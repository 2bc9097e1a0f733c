"""Labels at the most specific level the probabilities support (labels.roll_up, docs/model.md
section 7): a cell that no type reaches min_prob gets the most specific Cell Ontology term shared
by two or more of the panel's types whose summed probability reaches it. The terms and their
ancestors are the Cell Ontology's (cellxgene-ontology-guide); the expected terms below were read
from it by hand."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellassign_nf import steps
from cellassign_nf.keys import (CELLTYPE_KEY, LEVEL_KEY, LEVEL_PROB_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY,
                                UNASSIGNED)
from cellassign_nf.labels import label_cells, rolled_up
from cellassign_nf.settings import AnnotateSettings

# fine blood types as the bundled pbmc_fine_human panel names their terms
TERMS = {"CD4 T naive": "CL:0000895", "CD4 T memory": "CL:0000897", "CD8 T": "CL:0000625",
         "B cell": "CL:0000236", "monocyte": "CL:0000576"}
TYPES = list(TERMS)


def _labels(rows: list[list[float]], terms=TERMS, min_prob: float = 0.5, rollup: bool = True,
            types=TYPES) -> pd.DataFrame:
    probs = pd.DataFrame(rows, columns=types, index=[f"c{i}" for i in range(len(rows))])
    return label_cells(probs, probs.index, min_prob, terms, rollup)[0]


def test_an_uncertain_fine_type_gets_the_term_both_share():
    labels = _labels([[0.48, 0.47, 0.02, 0.02, 0.01]])
    row = labels.iloc[0]
    assert row[CELLTYPE_KEY] == UNASSIGNED  # the panel type stays as it was
    assert (row[ONTOLOGY_ID_KEY], row[ONTOLOGY_LABEL_KEY]) == ("CL:0000624", "CD4-positive, alpha-beta T cell")
    assert row[LEVEL_KEY] == "ancestor" and row[LEVEL_PROB_KEY] == pytest.approx(0.95)


def test_the_most_specific_term_that_reaches_the_threshold_is_chosen():
    labels = _labels([[0.30, 0.00, 0.30, 0.30, 0.10],    # naive CD4 + CD8: not CD4 alone, not lymphocyte
                      [0.20, 0.00, 0.00, 0.40, 0.40],    # T + B reach it, but not T alone
                      [0.30, 0.20, 0.00, 0.00, 0.50],    # monocyte reaches it: a type
                      [0.25, 0.20, 0.00, 0.00, 0.45]])   # CD4 naive + memory: 0.45, not enough; + monocyte
    assert labels[ONTOLOGY_LABEL_KEY].astype(str).tolist() == [
        "mature alpha-beta T cell", "lymphocyte", "monocyte", "mononuclear leukocyte"]
    assert labels[LEVEL_KEY].astype(str).tolist() == ["ancestor", "ancestor", "type", "ancestor"]
    np.testing.assert_allclose(labels[LEVEL_PROB_KEY], [0.6, 0.6, 0.5, 0.9])


def test_types_without_a_term_never_roll_up():
    types = ["X", "Y", "CD4 T naive", "CD4 T memory"]
    rows = [[0.30, 0.25, 0.25, 0.20]]  # the CD4 types: 0.45
    without = _labels(rows, {"CD4 T naive": "CL:0000895", "CD4 T memory": "CL:0000897"}, types=types).iloc[0]
    assert (without[ONTOLOGY_ID_KEY], without[LEVEL_KEY]) == ("unknown", "none") and np.isnan(without[LEVEL_PROB_KEY])
    # the same probabilities, X a CD8 T cell: the alpha-beta T cells together reach it
    with_x = _labels(rows, {"X": "CL:0000625", "CD4 T naive": "CL:0000895", "CD4 T memory": "CL:0000897"},
                     types=types).iloc[0]
    assert (with_x[ONTOLOGY_LABEL_KEY], with_x[LEVEL_PROB_KEY]) == ("mature alpha-beta T cell", pytest.approx(0.75))


def test_no_rollup_leaves_unassigned_cells_unknown():
    labels = _labels([[0.48, 0.47, 0.02, 0.02, 0.01], [0.9, 0.1, 0, 0, 0]], rollup=False)
    assert labels[ONTOLOGY_ID_KEY].astype(str).tolist() == ["unknown", "CL:0000895"]
    assert labels[LEVEL_KEY].astype(str).tolist() == ["none", "type"]


def test_annotate_writes_the_levels_and_the_report_table_counts_them(tmp_path):
    cells = [f"c{i}" for i in range(4)]
    pd.DataFrame({"cell": cells}).set_index("cell").pipe(lambda o: ad.AnnData(obs=o)).write_h5ad(tmp_path / "in.h5ad")
    probs = pd.DataFrame([[0.48, 0.47, 0.02, 0.02, 0.01], [0.46, 0.49, 0.03, 0.01, 0.01],
                          [0.9, 0.05, 0.05, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2]], index=cells, columns=TYPES)
    probs.to_csv(tmp_path / "p.tsv", sep="\t", index_label="cell")
    (tmp_path / "info.json").write_text(json.dumps({"sha256": "x", "cell_types": TYPES, "ontology": list(TERMS.values())}))
    for rollup in (True, False):
        steps.annotate(tmp_path / "in.h5ad", tmp_path / "p.tsv", tmp_path / f"out{rollup}.h5ad",
                       tmp_path / f"pred{rollup}.tsv", AnnotateSettings(rollup=rollup),
                       model_info_path=tmp_path / "info.json")
    table = pd.read_csv(tmp_path / "predTrue.tsv", sep="\t", index_col=0)
    assert table[LEVEL_KEY].tolist() == ["ancestor", "ancestor", "type", "ancestor"]
    # the last cell: the three T cell types hold 0.6, more specific than the lymphocytes' 0.8
    assert table[ONTOLOGY_ID_KEY].tolist() == ["CL:0000624", "CL:0000624", "CL:0000895", "CL:0000791"]
    assert pd.read_csv(tmp_path / "predFalse.tsv", sep="\t", index_col=0)[LEVEL_KEY].tolist() == \
        ["none", "none", "type", "none"]
    counted = rolled_up(ad.read_h5ad(tmp_path / "outTrue.h5ad").obs)
    assert counted[["term", "label", "cells"]].values.tolist() == [
        ["CL:0000624", "CD4-positive, alpha-beta T cell", 2], ["CL:0000791", "mature alpha-beta T cell", 1]]
    assert counted["median probability"].tolist() == pytest.approx([0.95, 0.6])
    assert rolled_up(ad.read_h5ad(tmp_path / "outFalse.h5ad").obs).empty
