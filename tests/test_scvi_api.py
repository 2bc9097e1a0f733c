"""scvi-tools users' code with one import changed (docs/api.md), and the scanpy-style tl.cellassign.

The first tests are scvi-tools' own CellAssign tests (tests/external/cellassign in scvi-tools) as
its users would run them: only `from scvi.external import CellAssign` became ours, and
`scvi.data.synthetic_iid` the stand-in below (negative-binomial counts, not the CellAssign model).
The documented example itself runs in docs/api.md (tests/test_docs.py), checking its labels.
Then each call with the shapes, names, numbers and errors it must give, and three behaviours of
the API and the steps that the rest of the suite does not pin down: size factors from all genes,
the predictions table's probability, and the refit's start of beta0.
"""
from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import cellassign_nf
from cellassign_nf import CellAssign, steps
from cellassign_nf.errors import InputError
from cellassign_nf.markers import left_out_warning
from cellassign_nf.keys import (CELLTYPE_KEY, LABEL_COLUMNS, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY, PROB_KEY,
                                PROBS_KEY, SETUP_KEY, UNS_KEY)
from cellassign_nf.simulate import random_markers, simulate
from cellassign_nf.size_factors import compute_size_factors


def synthetic_iid(n_cells: int = 400, n_genes: int = 100, n_batches: int = 2, n_labels: int = 5,
                  seed: int = 0) -> ad.AnnData:
    """What scvi.data.synthetic_iid gives the tests: counts, genes gene_0..., obs batch and labels."""
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.negative_binomial(5, 0.3, size=(n_cells, n_genes)).astype(np.float32))
    adata.var_names = [f"gene_{i}" for i in range(n_genes)]
    adata.obs["batch"] = pd.Categorical([f"batch_{i % n_batches}" for i in range(n_cells)])
    adata.obs["labels"] = pd.Categorical([f"label_{i % n_labels}" for i in range(n_cells)])
    return adata


def get_test_adata_marker_mat():
    adata = synthetic_iid(n_labels=5)
    adata.obs["size_factor"] = adata.X.sum(1)
    marker_df = pd.DataFrame(data=np.random.default_rng(1).integers(2, size=(100, 5)))
    marker_df.index = pd.Index([f"gene_{i}" for i in range(100)])
    return adata, marker_df


@pytest.fixture(autouse=True)
def _quiet_training(monkeypatch):
    """No progress bars in the test log (TrainSettings.progress)."""
    from cellassign_nf.settings import TrainSettings

    monkeypatch.setattr(TrainSettings, "progress", False)


# --------------------------------------------------------------------------------------
# scvi-tools' own tests, the import changed
# --------------------------------------------------------------------------------------

def test_scvi_tools_test_cellassign():
    adata, marker_df = get_test_adata_marker_mat()
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch")
    model = CellAssign(adata, marker_df)
    model.train(max_epochs=1)
    predictions = model.predict()
    normalized = model.get_normalized_expression()
    transformed = model.get_normalized_expression(transform_batch="batch_1")
    # what the calls return
    assert predictions.shape == (400, 5) and list(predictions.index) == list(adata.obs_names)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-6)
    assert list(predictions.columns) == ["0", "1", "2", "3", "4"]  # the marker matrix's types, as names
    assert normalized.shape == (400, 100) and list(normalized.columns) == list(adata.var_names)
    # transform_batch gives every cell batch_1: its cells keep their values, batch_0's change
    in_1 = (adata.obs["batch"] == "batch_1").to_numpy()
    np.testing.assert_allclose(transformed[in_1], normalized[in_1], rtol=1e-6)
    shift = np.exp(model.beta["batch[T.batch_1]"].to_numpy())  # exp(beta) of the batch_1 column, per gene
    np.testing.assert_allclose(transformed[~in_1], normalized[~in_1] * shift, rtol=1e-5)
    assert model.is_trained and len(model.history["elbo_train"]) == 1


def test_scvi_tools_test_cellassign_error_duplicates():
    adata, marker_df = get_test_adata_marker_mat()
    marker_df = pd.concat([marker_df, marker_df.iloc[[1]]], ignore_index=False)
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch")
    with pytest.raises(AssertionError) as error:
        CellAssign(adata, marker_df)
    assert isinstance(error.value, InputError)  # our one-line message, and the error scvi-tools' users catch
    assert str(error.value) == "marker matrix lists genes more than once (gene_1). List each gene once."


def test_scvi_tools_test_cellassign_covariates(caplog):
    adata, marker_df = get_test_adata_marker_mat()
    adata.obs["test"] = np.ones((adata.n_obs,))
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch", categorical_covariate_keys=["batch"],
                             continuous_covariate_keys=["test"])
    with caplog.at_level(logging.WARNING):
        model = CellAssign(adata, marker_df)
    model.train(max_epochs=1)
    assert model.predict().shape == (400, 5)
    # the batch named twice is one covariate; the constant 'test' cannot be estimated: left out, said
    assert model.design_columns == ["batch[T.batch_1]"]
    assert "test constant (0 for every cell)" in caplog.text


# --------------------------------------------------------------------------------------
# setup_anndata and the errors of an AnnData that does not fit it
# --------------------------------------------------------------------------------------

def test_setup_anndata_is_recorded_on_the_anndata_and_survives_an_h5ad(tmp_path):
    adata, _ = get_test_adata_marker_mat()
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch")
    assert adata.uns[SETUP_KEY] == {"size_factor_key": "size_factor", "batch_key": "batch"}
    adata.write_h5ad(tmp_path / "set_up.h5ad")
    back = ad.read_h5ad(tmp_path / "set_up.h5ad")
    model = CellAssign(back, get_test_adata_marker_mat()[1])
    assert model.size_factor_key == "size_factor" and model.design_columns == ["batch[T.batch_1]"]
    assert model.view_setup_args() == {"size_factor_key": "size_factor", "batch_key": "batch",
                                       "categorical_covariate_keys": None, "continuous_covariate_keys": None,
                                       "layer": None}


def test_arguments_given_to_the_model_take_the_place_of_the_setup():
    adata, marker_df = get_test_adata_marker_mat()
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch")
    model = CellAssign(adata, marker_df, size_factor_key="size_factor")
    assert model.design_columns == [] and model.setup_args["batch_key"] is None


@pytest.mark.parametrize("args, message", [
    ({"size_factor_key": "sf"}, "size_factor_key: no column 'sf' in adata.obs (columns: batch, labels, size_factor)"),
    ({"batch_key": "donor"}, "batch_key: no column 'donor' in adata.obs"),
    ({"continuous_covariate_keys": ["age"]}, "continuous_covariate_keys: no column 'age' in adata.obs"),
    ({"layer": "counts"}, "layer: no layer 'counts' in adata.layers (layers: none)"),
    ({"size_factor_key": "batch"}, "size_factor_key: adata.obs['batch'] is not numeric"),
])
def test_setup_anndata_refuses_names_the_anndata_lacks(args, message):
    adata, _ = get_test_adata_marker_mat()
    with pytest.raises(InputError, match="^" + pd.Series([message]).str.replace(r"([()\[\].])", r"\\\1", regex=True)[0]):
        CellAssign.setup_anndata(adata, **args)
    assert SETUP_KEY not in adata.uns


def test_an_anndata_changed_after_its_setup_is_refused_in_one_line():
    adata, marker_df = get_test_adata_marker_mat()
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch")
    del adata.obs["size_factor"]
    with pytest.raises(InputError) as error:
        CellAssign(adata, marker_df)
    assert str(error.value).startswith("size_factor_key: no column 'size_factor' in adata.obs (columns: batch, "
                                       "labels). Call CellAssign.setup_anndata(adata, size_factor_key=...")


def test_a_type_whose_markers_are_all_absent_from_the_anndata_is_left_out_or_refused_once_asked(caplog):
    """As the CLI does (one default, ModelSettings.require_every_type): the type is left out of the
    model with one warning naming it, or refused with require_every_type=True. Code written for
    scvi-tools never meets this: scvi-tools wants every marker gene in the AnnData."""
    adata, _ = get_test_adata_marker_mat()
    markers = pd.DataFrame({"A": [1, 1, 0, 0], "B": [0, 0, 1, 1]}, index=["gene_0", "gene_1", "CD3D", "CD3E"])
    CellAssign.setup_anndata(adata, "size_factor")
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        model = CellAssign(adata, markers)
    assert (model.cell_types, model.left_out_types, list(model.panel.columns)) == (["A"], ["B"], ["A", "B"])
    assert [r.getMessage() for r in caplog.records if "left out of the fit" in r.getMessage()] == [
        left_out_warning(["B"])]
    assert model.describe()["left_out_types"] == ["B"]
    with pytest.raises(InputError, match="cell type.* with no marker gene in the data: B"):
        CellAssign(adata, markers, require_every_type=True)


# --------------------------------------------------------------------------------------
# train: scvi-tools' arguments
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated():
    """Counts of the CellAssign model with known types, two batches, and their marker matrix."""
    markers = random_markers(30, 4, seed=2)
    adata = simulate(markers, n_cells=600, n_other_genes=50, batches=("b1", "b2"), batch_effect=0.5, seed=5)
    return adata, markers


def test_train_maps_scvi_tools_arguments(simulated):
    adata, markers = simulated
    model = CellAssign(adata.copy(), markers, size_factor_key="size_factor")
    model.train(max_epochs=7, train_size=0.8, early_stopping=False, accelerator="cpu", devices=1,
                plan_kwargs={"lr": 0.05}, batch_size=128, early_stopping_patience=3, n_restarts=1)
    params = model.train_params
    assert (params["max_epochs"], params["validation_fraction"], params["early_stopping"], params["device"],
            params["lr"], params["batch_size"], params["patience"]) == (7, pytest.approx(0.2), False, "cpu", 0.05,
                                                                        128, 3)
    assert len(model.history["elbo_train"]) == 7  # early stopping off: every epoch runs
    assert len(model.validation_indices) == 120 and len(model.train_indices) == 480
    assert not set(model.train_indices) & set(model.validation_indices)
    assert sorted([*model.train_indices, *model.validation_indices]) == list(range(600))


@pytest.mark.parametrize("kwargs, message", [
    ({"plan_kwargs": {"optimizer": "AdamW"}}, "plan_kwargs['optimizer'] is not supported by cellassign-nf: the "
                                              "optimiser (Adam with a plateau schedule) is fixed"),
    ({"plan_kwargs": {"weight_decay": 0.01}}, "plan_kwargs['weight_decay'] is not supported"),
    ({"early_stopping_min_delta": 0.5}, "early_stopping_min_delta is not supported by cellassign-nf: an improvement "
                                        "counts when it is rel_tol times"),
    ({"train_size": 0.8, "validation_size": 0.1}, "train_size=0.8 with validation_size=0.1 is not supported by "
                                                  "cellassign-nf: every cell is a training or a validation cell"),
    ({"accelerator": "mps"}, "accelerator='mps' is not supported"),
    ({"devices": 2}, "devices=2 is not supported by cellassign-nf: it trains on one device"),
    ({"shuffle_set_split": False}, "shuffle_set_split=False is not supported"),
    ({"datasplitter_kwargs": {"drop_last": True}}, "datasplitter_kwargs['drop_last'] is not supported"),
    ({"check_val_every_n_epoch": 5}, "check_val_every_n_epoch is not supported"),
    ({"gradient_clip_val": 1.0}, "gradient_clip_val is not supported by cellassign-nf: there is no Lightning "
                                 "Trainer here"),
])
def test_train_refuses_by_name_what_has_no_meaning_here(simulated, kwargs, message):
    adata, markers = simulated
    model = CellAssign(adata.copy(), markers, size_factor_key="size_factor")
    with pytest.raises(ValueError) as error:
        model.train(max_epochs=1, **kwargs)
    assert str(error.value).startswith(f"train(): {message}"), str(error.value)
    assert not model.is_trained


def test_train_still_takes_a_settings_object(simulated):
    from cellassign_nf.settings import TrainSettings

    adata, markers = simulated
    model = CellAssign(adata.copy(), markers, size_factor_key="size_factor")
    model.train(TrainSettings(max_epochs=2, n_restarts=1, early_stopping=False, progress=False))
    assert model.train_params["max_epochs"] == 2 and len(model.history_table) == 2


# --------------------------------------------------------------------------------------
# history, predict, get_normalized_expression: numbers
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(simulated):
    adata, markers = simulated
    adata = adata.copy()
    CellAssign.setup_anndata(adata, "size_factor", batch_key="batch")
    model = CellAssign(adata, markers)
    model.train(max_epochs=15, early_stopping=False, n_restarts=2, seed=3, progress=False)
    return model


def test_history_has_scvi_tools_names_and_the_kept_restarts_numbers(fitted):
    history = fitted.history
    assert set(history) >= {"elbo_train", "elbo_validation", "train_loss", "validation_loss"}
    kept = fitted.history_table[fitted.history_table["selected"]]
    for key, frame in history.items():
        assert list(frame.columns) == [key] and frame.index.name == "epoch", key
        assert list(frame.index) == list(range(1, 16)), key
    np.testing.assert_allclose(history["reconstruction_loss_train"]["reconstruction_loss_train"],
                               -kept["train_loglik"])
    np.testing.assert_allclose(history["elbo_validation"]["elbo_validation"],
                               -kept["val_loglik"] - kept["log_prior"])
    np.testing.assert_allclose(history["elbo_train"], history["train_loss"])
    # log_prior: the log prior over the training cells; after the last epoch, that of the kept model
    n_train = len(fitted.train_indices)
    assert kept["log_prior"].iloc[-1] == pytest.approx(float(fitted.module.log_prior().detach()) / n_train,
                                                         rel=1e-6)
    # the validation ELBO is the held-out cells' negative log likelihood per cell plus the prior's share
    from cellassign_nf.predict import marginal_log_likelihood

    data = fitted._data
    val = torch.as_tensor(fitted.adata.obs_names.get_indexer(fitted.data_cells[fitted.validation_indices]))
    expected = -marginal_log_likelihood(fitted.module, data, val) / len(val) - float(fitted.module.log_prior().detach()) / n_train
    assert history["elbo_validation"]["elbo_validation"].iloc[-1] == pytest.approx(expected, rel=1e-5)
    ax = history["elbo_validation"].plot()  # the documented example's last line
    assert ax.get_lines()


def test_predict_with_and_without_the_anndata(fitted):
    own = fitted.predict()
    again = fitted.predict(fitted.adata[:100].copy())
    assert list(own.index) == list(fitted.adata.obs_names)
    np.testing.assert_allclose(again.to_numpy(), own.iloc[:100].to_numpy(), rtol=1e-6)
    truth = fitted.adata.obs["true_celltype"].astype(str).to_numpy()
    assert (own.idxmax(axis=1).to_numpy() == truth).mean() >= 0.95


def test_normalized_expression_is_the_model_mean_by_hand(fitted):
    """sum_c gamma[n,c] exp(beta0 + beta D[n] + delta rho) (docs/model.md section 9), from the
    fitted parameters and probabilities as the public API gives them."""
    adata = fitted.adata
    gamma = fitted.predict().to_numpy()
    beta = fitted.beta
    design = (adata.obs["batch"] == "b2").to_numpy(dtype=float)[:, None]
    base = beta["beta0"].to_numpy()[None, :] + design * beta["batch[T.b2]"].to_numpy()[None, :]
    by_hand = np.exp(base) * (gamma @ np.exp(fitted.delta.to_numpy()).T)
    got = fitted.get_normalized_expression()
    np.testing.assert_allclose(got.to_numpy(), by_hand, rtol=1e-4)
    # library_size: a common one scales everything; "latent" gives each cell its own size factor
    np.testing.assert_allclose(fitted.get_normalized_expression(library_size=1e4), by_hand * 1e4, rtol=1e-4)
    latent = fitted.get_normalized_expression(library_size="latent")
    np.testing.assert_allclose(latent.to_numpy() / by_hand, np.repeat(adata.obs["size_factor"].to_numpy()[:, None],
                                                                      by_hand.shape[1], axis=1), rtol=1e-4)
    # indices, gene_list, return_numpy; two batches averaged
    part = fitted.get_normalized_expression(indices=[3, 1], gene_list=["marker_0002", "marker_0000"], return_numpy=True)
    np.testing.assert_allclose(part, by_hand[[3, 1]][:, [2, 0]], rtol=1e-4)
    both = fitted.get_normalized_expression(transform_batch=["b1", "b2"]).to_numpy()
    b1, b2 = (fitted.get_normalized_expression(transform_batch=b).to_numpy() for b in ("b1", "b2"))
    np.testing.assert_allclose(both, (b1 + b2) / 2, rtol=1e-6)


def test_normalized_expression_refuses_what_it_cannot_do(fitted, simulated):
    with pytest.raises(InputError, match=r"transform_batch: 'b9' is not a level of 'batch' \(b1, b2\)"):
        fitted.get_normalized_expression(transform_batch="b9")
    with pytest.raises(ValueError, match="n_samples=5: the expected expression is computed exactly"):
        fitted.get_normalized_expression(n_samples=5)
    with pytest.raises(InputError, match="gene_list names genes that are not marker genes of the model: GENE0001"):
        fitted.get_normalized_expression(gene_list=["GENE0001"])
    adata, markers = simulated
    plain = CellAssign(adata.copy(), markers, size_factor_key="size_factor")
    plain.train(max_epochs=1, n_restarts=1)
    with pytest.raises(InputError, match="transform_batch needs a batch covariate, and the model has none"):
        plain.get_normalized_expression(transform_batch="b1")


# --------------------------------------------------------------------------------------
# save(dir) / load(dir, adata), and the pipeline's model files
# --------------------------------------------------------------------------------------

def test_save_and_load_a_folder_as_scvi_tools_does(fitted, tmp_path):
    folder = tmp_path / "model_dir"
    fitted.save(folder, save_anndata=True, prefix="pbmc_")
    assert sorted(p.name for p in folder.iterdir()) == ["pbmc_adata.h5ad", "pbmc_model.pt"]
    with pytest.raises(FileExistsError, match="pbmc_model.pt exists; pass overwrite=True"):
        fitted.save(folder, overwrite=False, prefix="pbmc_")
    fitted.save(folder, overwrite=True, prefix="pbmc_")
    expected = fitted.predict()
    given = CellAssign.load(folder, adata=fitted.adata.copy(), prefix="pbmc_")
    saved = CellAssign.load(folder, prefix="pbmc_")  # the AnnData saved beside it
    for loaded in (given, saved):
        assert loaded.is_trained and loaded.adata is not None
        np.testing.assert_allclose(loaded.predict().to_numpy(), expected.to_numpy(), rtol=1e-6)
        assert loaded.setup_args["batch_key"] == "batch"
        np.testing.assert_allclose(loaded.get_normalized_expression(transform_batch="b2").to_numpy(),
                                   fitted.get_normalized_expression(transform_batch="b2").to_numpy(), rtol=1e-5)
    with pytest.raises(RuntimeError, match="loaded from a file"):
        saved.train()


def test_a_model_file_still_saves_and_loads_as_the_pipeline_uses_it(fitted, tmp_path):
    path = tmp_path / "sample.model.pt"
    fitted.save(path)
    fitted.save(path)  # a file path is replaced, as the steps expect
    loaded = CellAssign.load(path)
    np.testing.assert_allclose(loaded.predict(fitted.adata).to_numpy(), fitted.predict().to_numpy(), rtol=1e-6)
    assert list(tmp_path.iterdir()) == [path]


def test_load_with_an_anndata_that_lacks_the_setup_columns_is_refused(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    adata = fitted.adata.copy()
    del adata.obs["batch"]
    with pytest.raises(InputError, match="batch_key: no column 'batch' in adata.obs"):
        CellAssign.load(tmp_path / "m", adata=adata)


# --------------------------------------------------------------------------------------
# cellassign_nf.tl.cellassign: one call, the annotate step's columns
# --------------------------------------------------------------------------------------

def test_tl_cellassign_writes_what_annotate_writes(simulated, tmp_path):
    adata, markers = simulated
    adata = adata.copy()
    adata.obs["cell_type"] = "from the submitter"  # a CELLxGENE column of the input
    panel = tmp_path / "panel.yaml"
    terms = {"type_00": "CL:0000084", "type_01": "CL:0000236", "type_02": "CL:0000576", "type_03": "CL:0000623"}
    panel.write_text("".join(f"{t}:\n  markers: [{', '.join(markers.index[markers[t] == 1])}]\n  ontology: {terms[t]}\n"
                             for t in markers.columns))
    model = cellassign_nf.tl.cellassign(adata, str(panel), size_factor_key="size_factor", batch_key="batch",
                                        max_epochs=30, seed=1)
    probs = model.predict()
    assert model.adata is adata
    np.testing.assert_allclose(adata.obsm[PROBS_KEY].to_numpy(), probs.to_numpy())
    assert list(adata.obsm[PROBS_KEY].columns) == list(markers.columns)
    np.testing.assert_allclose(adata.obs[PROB_KEY], probs.max(axis=1))
    best = probs.idxmax(axis=1).where(probs.max(axis=1) >= 0.5, "unassigned")
    assert (adata.obs[CELLTYPE_KEY].astype(str) == best).all()
    assert (adata.obs[CELLTYPE_KEY].astype(str) == adata.obs["true_celltype"].astype(str)).mean() >= 0.95
    assert dict(zip(adata.obs[CELLTYPE_KEY].astype(str), adata.obs[ONTOLOGY_ID_KEY].astype(str))) == \
        {t: terms[t] for t in set(adata.obs[CELLTYPE_KEY].astype(str))}
    assert set(adata.obs[ONTOLOGY_LABEL_KEY].astype(str)) <= {"T cell", "B cell", "monocyte", "natural killer cell"}
    assert (adata.obs["cell_type_input"] == "from the submitter").all()
    info = adata.uns[UNS_KEY]
    assert list(info["cell_types"]) == list(markers.columns) and info["min_prob"] == 0.5
    assert info["cell_ontology"].startswith("CL v") and info["model"]["use"] == "trained on these 600 cells"
    adata.write_h5ad(tmp_path / "annotated.h5ad")  # what it wrote can be saved
    # a second call replaces its own columns: nothing more is set aside as *_input
    cellassign_nf.tl.cellassign(adata, markers, size_factor_key="size_factor", max_epochs=2, n_restarts=1)
    assert [c for c in adata.obs if c.endswith("_input")] == ["cell_type_input"]
    assert (adata.obs[ONTOLOGY_ID_KEY] == "unknown").all()  # a matrix without terms


def test_tl_cellassign_copy_and_key_added(simulated):
    adata, markers = simulated
    before = adata.obs.columns.tolist()
    model = cellassign_nf.tl.cellassign(adata, markers, key_added="ca", copy=True, size_factor_key="size_factor",
                                        max_epochs=2, n_restarts=1)
    assert adata.obs.columns.tolist() == before and "ca" not in adata.uns  # the input is untouched
    out = model.adata
    assert {"ca_celltype", "ca_prob", "ca_cell_type_ontology_term_id", "ca_cell_type"} <= set(out.obs)
    assert "ca_probabilities" in out.obsm and "ca" in out.uns
    assert not set(LABEL_COLUMNS) & set(out.obs)


# --------------------------------------------------------------------------------------
# three behaviours: size factors from all genes, the predictions' probability, the refit's start
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unproportional():
    """Counts whose marker genes are NOT a fixed share of each cell's total: half of the cells get
    five times the counts of the other genes (so size factors from the markers alone differ)."""
    markers = random_markers(24, 3, seed=4)
    adata = simulate(markers, n_cells=500, n_other_genes=300, seed=8)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.array(adata.X)
    other = ~adata.var_names.isin(markers.index)
    x[np.ix_(np.arange(adata.n_obs) % 2 == 0, other)] *= 5
    adata.X = x
    del adata.obs["size_factor"]
    totals = x.sum(axis=1)
    on_markers = x[:, ~other].sum(axis=1)
    return {"adata": adata, "markers": markers, "all_genes": totals / totals.mean(),
            "markers_only": on_markers / on_markers.mean()}


def _size_factors_used(model: CellAssign) -> np.ndarray:
    """Each cell's size factor as the fitted model uses it (the mean with the cell's own library over the mean with 1)."""
    ratio = model.get_normalized_expression(library_size="latent") / model.get_normalized_expression()
    return ratio.iloc[:, 0].to_numpy()


def test_size_factors_come_from_all_genes_when_none_are_given(unproportional):
    data = unproportional
    assert np.abs(data["all_genes"] / data["markers_only"] - 1).max() > 0.5  # the two really differ
    model = CellAssign(data["adata"].copy(), data["markers"])
    model.train(max_epochs=2, n_restarts=1)
    np.testing.assert_allclose(_size_factors_used(model), data["all_genes"], rtol=1e-4)
    np.testing.assert_allclose(compute_size_factors(data["adata"]), data["all_genes"], rtol=1e-6)


def test_train_and_predict_steps_take_size_factors_from_all_genes(unproportional, tmp_path):
    data = unproportional
    data["adata"].write_h5ad(tmp_path / "cells.h5ad")
    data["markers"].to_csv(tmp_path / "markers.csv")
    from cellassign_nf.settings import RefitSettings, TrainSettings

    settings = TrainSettings(max_epochs=3, n_restarts=1, seed=2, progress=False)
    # other=False: the step fits the panel's types, as the API's CellAssign it is compared with
    steps.train(tmp_path / "cells.h5ad", tmp_path / "markers.csv", tmp_path / "m.pt", tmp_path / "h.tsv",
                tmp_path / "p.tsv", other=False, settings=settings)
    explicit = data["adata"].copy()
    fits = {}
    for name in ("all_genes", "markers_only"):
        explicit.obs["sf"] = data[name]
        reference = CellAssign(explicit.copy(), data["markers"], size_factor_key="sf")
        fits[name] = reference.train(settings=settings).predict().to_numpy()
    from_step = pd.read_csv(tmp_path / "p.tsv", sep="\t", index_col=0).to_numpy()
    np.testing.assert_allclose(from_step, fits["all_genes"], atol=1e-4)  # the TSV's 6 digits, float32 sums
    assert np.abs(from_step - fits["markers_only"]).max() > 0.05
    explicit.obs["sf"] = data["all_genes"]
    # predict --refit none: the saved model scores the cells with the same size factors
    steps.predict(tmp_path / "cells.h5ad", tmp_path / "m.pt", tmp_path / "m2.pt", tmp_path / "h2.tsv",
                  tmp_path / "p2.tsv", refit=RefitSettings(refit="none"))
    loaded = CellAssign.load(tmp_path / "m.pt")
    loaded.size_factor_key = "sf"
    as_saved = pd.read_csv(tmp_path / "p2.tsv", sep="\t", index_col=0).to_numpy()
    np.testing.assert_allclose(as_saved, loaded.predict(explicit).to_numpy(), atol=1e-4)
    explicit.obs["sf"] = data["markers_only"]
    assert np.abs(as_saved - loaded.predict(explicit).to_numpy()).max() > 0.05


def test_predictions_table_probability_is_the_row_maximum(simulated, tmp_path):
    adata, markers = simulated
    adata.write_h5ad(tmp_path / "cells.h5ad")
    model = CellAssign(adata.copy(), markers, size_factor_key="size_factor")
    model.train(max_epochs=3, n_restarts=1)
    probs = model.predict()
    probs.to_csv(tmp_path / "probs.tsv", sep="\t")
    steps.annotate(tmp_path / "cells.h5ad", tmp_path / "probs.tsv", tmp_path / "out.h5ad", tmp_path / "pred.tsv")
    table = pd.read_csv(tmp_path / "pred.tsv", sep="\t", index_col=0)
    types = list(markers.columns)
    np.testing.assert_allclose(table[PROB_KEY], table[types].max(axis=1))
    assert (table[types].min(axis=1) < table[PROB_KEY] - 1e-3).any()  # the minimum would differ
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "out.h5ad").obs[PROB_KEY].to_numpy(), table[PROB_KEY], rtol=1e-6)


def test_refit_starts_beta0_where_the_data_mean_meets_the_saved_mixture(simulated, tmp_path):
    """beta0 starts at log(mean_n x/s + 0.01) - log sum_c pi_c exp(delta) (docs/model.md section 8):
    a refit that takes no step (lr ~ 0) ends where it started, and a refit on the model's own
    cells starts at the fitted likelihood."""
    adata, markers = simulated
    model = CellAssign(adata.copy(), markers, size_factor_key="size_factor")
    model.train(max_epochs=60, n_restarts=1, seed=1)
    model.save(tmp_path / "ref.pt")
    saved = CellAssign.load(tmp_path / "ref.pt")
    x = np.asarray(adata[:, markers.index].X.toarray() if hasattr(adata.X, "toarray") else adata[:, markers.index].X)
    s = adata.obs["size_factor"].to_numpy()[:, None]
    mixture = np.exp(saved.delta.to_numpy()) @ saved.pi.to_numpy()
    start = np.log((x / s).mean(axis=0) + 1e-2) - np.log(mixture)
    still = saved.refit(adata.copy(), size_factor_key="size_factor", max_epochs=1, lr=1e-12)
    np.testing.assert_allclose(still.beta["beta0"].to_numpy(), start, rtol=1e-5, atol=1e-5)
    refitted = saved.refit(adata.copy(), size_factor_key="size_factor", max_epochs=30)
    first, last = refitted.history_table["train_loglik"].iloc[[0, -1]]
    assert abs(first - last) < 0.02 * abs(last), (first, last)  # a start of zeros is far below
