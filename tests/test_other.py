"""Cells of a type the panel lacks go to `other` by default (PanelSettings.other), not to the
nearest panel type; --no-other restores the nearest type. Measured on simulate_library (a droplet
library that is not the CellAssign model) with one type present in the data and left out of the
panel (benchmarks/out_of_panel.py gives the figures of docs/markers.md)."""
from __future__ import annotations

import anndata as ad
import pandas as pd
import pytest
from click.testing import CliRunner

from cellassign_nf.cli import main
from cellassign_nf.keys import CELLTYPE_KEY, ONTOLOGY_ID_KEY, OTHER, TRUE_CELLTYPE_KEY, UNASSIGNED
from cellassign_nf.markers import marker_list_to_matrix
from cellassign_nf.settings import PanelSettings
from cellassign_nf.simulate import simulate_library

TYPES = ("A", "B", "C", "D")
MISSING = "D"  # in the data, not in the panel
MARKERS = {t: [f"{t}{i}" for i in range(5)] for t in TYPES}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("out_of_panel")
    adata = simulate_library(MARKERS, n_cells=1200, n_other_genes=300, seed=3, marker_fold=6.0)
    path = folder / "lib.h5ad"
    adata.write_h5ad(path)
    panel = folder / "panel.csv"
    marker_list_to_matrix({t: MARKERS[t] for t in TYPES if t != MISSING}).to_csv(panel)
    return {"folder": folder, "data": path, "panel": panel, "truth": adata.obs[TRUE_CELLTYPE_KEY].astype(str)}


def _labels(library, name: str, *options: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`train` (with ``options``) and `annotate` of the library: (the labels, the probabilities)."""
    d = library["folder"]
    train = CliRunner().invoke(main, ["--quiet", "train", str(library["data"]), "--markers", str(library["panel"]),
                                      "-o", str(d / f"{name}.pt"), "--history", str(d / f"{name}.history.tsv"),
                                      "--probabilities", str(d / f"{name}.probs.tsv"), "--n-restarts", "1",
                                      "--model-info", str(d / f"{name}.info.json"), *options])
    assert train.exit_code == 0, train.output
    annotate = CliRunner().invoke(main, ["--quiet", "annotate", str(library["data"]),
                                         "-p", str(d / f"{name}.probs.tsv"), "-o", str(d / f"{name}.h5ad"),
                                         "--predictions", str(d / f"{name}.pred.tsv"),
                                         "--model-info", str(d / f"{name}.info.json")])
    assert annotate.exit_code == 0, annotate.output
    obs = ad.read_h5ad(d / f"{name}.h5ad").obs
    return obs, pd.read_csv(d / f"{name}.probs.tsv", sep="\t", index_col=0)


@pytest.fixture(scope="module")
def both(library):
    return {"default": _labels(library, "default"), "no_other": _labels(library, "no_other", "--no-other")}


def test_other_is_on_by_default_in_the_cli_and_the_steps():
    assert PanelSettings().other is True
    option = next(p for p in main.commands["train"].params if p.name == "other")
    assert option.default is True and "--no-other" in option.secondary_opts
    assert "--no-other" in next(p for p in main.commands["run"].params if p.name == "other").secondary_opts


def test_a_type_missing_from_the_panel_goes_to_other_by_default(library, both):
    obs, probs = both["default"]
    assert list(probs.columns) == ["A", "B", "C", OTHER]
    truth = library["truth"].reindex(obs.index)
    called = obs[CELLTYPE_KEY].astype(str)
    missing = truth == MISSING
    assert missing.sum() > 200
    assert (called[missing] == OTHER).mean() >= 0.9, called[missing].value_counts()
    # the panel's types keep their cells (benchmarks/out_of_panel.py: 0.997 at an 8-fold marker)
    assert (called[~missing] == truth[~missing]).mean() >= 0.95, pd.crosstab(truth, called)
    # CELLxGENE's convention for a cell of no type the panel names: CL:0000000, cell
    assert set(obs.loc[called == OTHER, ONTOLOGY_ID_KEY].astype(str)) == {"CL:0000000"}


def test_no_other_forces_every_cell_into_a_panel_type(library, both):
    obs, probs = both["no_other"]
    assert list(probs.columns) == ["A", "B", "C"]
    truth = library["truth"].reindex(obs.index)
    called = obs[CELLTYPE_KEY].astype(str)
    missing = truth == MISSING
    assert (called == OTHER).sum() == 0
    # the missing type's cells sit at the panel's types (or unassigned between them): what the default avoids
    assert called[missing].isin(["A", "B", "C", UNASSIGNED]).all()
    assert (called[missing] != UNASSIGNED).mean() >= 0.5, called[missing].value_counts()
    assert (called[~missing] == truth[~missing]).mean() >= 0.95
