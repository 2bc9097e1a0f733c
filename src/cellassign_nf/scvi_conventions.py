"""scvi-tools' calling conventions for :class:`~cellassign_nf.api.CellAssign` (docs/api.md).

Code written for ``scvi.external.CellAssign`` runs with ``from cellassign_nf import CellAssign``:
``setup_anndata`` records its arguments on the AnnData (this module's :func:`register`), ``train``
takes scvi-tools' training arguments (:func:`train_options` maps them to
:class:`~cellassign_nf.settings.TrainSettings`, refusing by name what has no meaning here), and
``history`` has scvi-tools' names (:func:`scvi_history`). The model's math is not touched.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import anndata as ad
import pandas as pd

from .errors import InputError
from .io import MAIN_MATRIX
from .keys import SETUP_KEY
from .settings import TrainSettings

SETUP_ARGS = ("size_factor_key", "batch_key", "categorical_covariate_keys", "continuous_covariate_keys", "layer")
SETUP_FIX = ("Call CellAssign.setup_anndata(adata, size_factor_key=..., batch_key=...) on it, or give those "
             "arguments to CellAssign(...) directly.")


# --- setup_anndata -------------------------------------------------------------------------------
def register(adata: ad.AnnData, size_factor_key: str | None = None, batch_key: str | None = None,
             categorical_covariate_keys: Sequence[str] | None = None,
             continuous_covariate_keys: Sequence[str] | None = None, layer: str | None = None) -> dict[str, Any]:
    """Check the setup's names against ``adata`` and record them in ``adata.uns[SETUP_KEY]``;
    returns the setup (every key of SETUP_ARGS; absent ones None)."""
    setup = {"size_factor_key": size_factor_key, "batch_key": batch_key,
             "categorical_covariate_keys": list(categorical_covariate_keys) if categorical_covariate_keys else None,
             "continuous_covariate_keys": list(continuous_covariate_keys) if continuous_covariate_keys else None,
             "layer": layer}
    check_setup(adata, setup)
    # an h5ad cannot store None: the absent keys are left out
    adata.uns[SETUP_KEY] = {k: v for k, v in setup.items() if v is not None}
    return setup


def registered(adata: ad.AnnData) -> dict[str, Any] | None:
    """The setup recorded on ``adata`` by :func:`register` (every key of SETUP_ARGS), or None."""
    stored = adata.uns.get(SETUP_KEY)
    if stored is None:
        return None
    setup: dict[str, Any] = {k: None for k in SETUP_ARGS}
    for key, value in dict(stored).items():
        setup[key] = [str(v) for v in value] if key.endswith("_keys") else str(value)
    return setup


def model_setup(adata: ad.AnnData | None, has_design: bool, **given: Any) -> dict[str, Any]:
    """The setup of a new model: the arguments ``given`` to it, or, when none is given (and no
    ready design matrix), those :func:`register` recorded on ``adata``; checked against ``adata``."""
    setup = {key: given.get(key) for key in SETUP_ARGS}
    if adata is None:
        return setup
    if not has_design and all(value is None for value in setup.values()):
        setup = registered(adata) or setup
    check_setup(adata, setup)
    return setup


def check_setup(adata: ad.AnnData, setup: Mapping[str, Any]) -> None:
    """Every obs column and layer that ``setup`` names exists in ``adata``, and the size factors
    are numbers; else one InputError naming the key."""
    columns = [(setup.get("size_factor_key"), "size_factor_key")]
    columns.append((setup.get("batch_key"), "batch_key"))
    columns += [(c, "categorical_covariate_keys") for c in setup.get("categorical_covariate_keys") or []]
    columns += [(c, "continuous_covariate_keys") for c in setup.get("continuous_covariate_keys") or []]
    for column, arg in columns:
        if column is not None and column not in adata.obs:
            raise InputError(None, f"{arg}: no column '{column}' in adata.obs (columns: "
                             f"{', '.join(map(str, adata.obs.columns[:12])) or 'none'})", SETUP_FIX)
    key = setup.get("size_factor_key")
    if key is not None and not pd.api.types.is_numeric_dtype(adata.obs[key]):
        raise InputError(None, f"size_factor_key: adata.obs['{key}'] is not numeric",
                         "Give the size factors as numbers (e.g. total counts / their mean).")
    layer = setup.get("layer")
    if layer not in (None, MAIN_MATRIX) and layer not in adata.layers:
        raise InputError(None, f"layer: no layer '{layer}' in adata.layers "
                         f"(layers: {', '.join(adata.layers) or 'none'})", SETUP_FIX)


def covariates(setup: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(categorical, continuous) covariate columns of a setup: the batch first, each column once."""
    categorical: list[str] = []
    for column in [setup.get("batch_key"), *(setup.get("categorical_covariate_keys") or [])]:
        if column is not None and column not in categorical:
            categorical.append(column)
    continuous = [c for c in dict.fromkeys(setup.get("continuous_covariate_keys") or []) if c not in categorical]
    return categorical, continuous


# --- train ---------------------------------------------------------------------------------------
_OUR_OPTIONS = {f.name for f in fields(TrainSettings)}
_ACCELERATORS = {"auto": "auto", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}


def _refuse(argument: str, why: str) -> ValueError:
    return ValueError(f"train(): {argument} is not supported by cellassign-nf: {why}")


def train_options(max_epochs: int | None = None, lr: float | None = None, accelerator: str | None = None,
                  devices: int | str | Sequence[int] | None = None, train_size: float | None = None,
                  validation_size: float | None = None, shuffle_set_split: bool = True,
                  batch_size: int | None = None, datasplitter_kwargs: Mapping[str, Any] | None = None,
                  plan_kwargs: Mapping[str, Any] | None = None, early_stopping: bool | None = None,
                  early_stopping_patience: int | None = None, early_stopping_min_delta: float | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """scvi-tools' ``CellAssign.train`` arguments as :class:`~cellassign_nf.settings.TrainSettings`
    fields. ``None`` keeps this package's default. Fields of TrainSettings pass through; an
    argument with no meaning here raises ValueError naming it (docs/api.md lists each)."""
    out: dict[str, Any] = {}
    if max_epochs is not None:
        out["max_epochs"] = int(max_epochs)
    plan = dict(plan_kwargs or {})
    if "lr" in plan:
        out["lr"] = float(plan.pop("lr"))
    if plan.pop("weight_decay", 0.0) not in (0, 0.0, 1e-10):  # scvi-tools' CellAssign always sets 1e-10
        raise _refuse("plan_kwargs['weight_decay']", "the M step is Adam on the log posterior, without weight decay")
    if plan:
        raise _refuse(f"plan_kwargs[{sorted(plan)[0]!r}]", "the optimiser (Adam with a plateau schedule) is fixed; "
                      "of plan_kwargs only 'lr' is taken")
    if lr is not None:
        out["lr"] = float(lr)
    if batch_size is not None:
        out["batch_size"] = int(batch_size)
    out.update(_split(train_size, validation_size))
    if not shuffle_set_split:
        raise _refuse("shuffle_set_split=False", "the validation cells are a random draw (set seed= to repeat it)")
    if datasplitter_kwargs:
        raise _refuse(f"datasplitter_kwargs[{sorted(datasplitter_kwargs)[0]!r}]",
                      "the split is set by train_size / validation_size and seed")
    if early_stopping is not None:
        out["early_stopping"] = bool(early_stopping)
    if early_stopping_patience is not None:
        out["patience"] = int(early_stopping_patience)
    if early_stopping_min_delta is not None:
        raise _refuse("early_stopping_min_delta", "an improvement counts when it is rel_tol times the validation "
                      "likelihood (relative, not absolute): give rel_tol= instead")
    if accelerator is not None:
        if str(accelerator) not in _ACCELERATORS:
            raise _refuse(f"accelerator={accelerator!r}", "it trains on 'cpu' or 'gpu' (CUDA), or 'auto'")
        out["device"] = _ACCELERATORS[str(accelerator)]
    if devices is not None and devices not in ("auto", 1, "1", [0], (0,), -1):
        raise _refuse(f"devices={devices!r}", "it trains on one device; choose the GPU with CUDA_VISIBLE_DEVICES")
    if "enable_progress_bar" in kwargs:
        out["progress"] = bool(kwargs.pop("enable_progress_bar"))
    if kwargs.pop("check_val_every_n_epoch", 1) != 1:
        raise _refuse("check_val_every_n_epoch", "the validation likelihood is computed after every epoch")
    for name in list(kwargs):
        if name in _OUR_OPTIONS:
            out[name] = kwargs.pop(name)
    if kwargs:
        name = sorted(kwargs)[0]
        raise _refuse(name, "there is no Lightning Trainer here; the options are scvi-tools' train() arguments "
                      f"above and {', '.join(sorted(_OUR_OPTIONS))}")
    return out


def _split(train_size: float | None, validation_size: float | None) -> dict[str, float]:
    """scvi-tools' train_size / validation_size as validation_fraction (no test set)."""
    if train_size is None and validation_size is None:
        return {}
    if validation_size is None:
        validation_size = 1.0 - float(train_size)  # type: ignore[arg-type]
    if train_size is not None and abs(float(train_size) + float(validation_size) - 1.0) > 1e-9:
        raise _refuse(f"train_size={train_size} with validation_size={validation_size}",
                      "every cell is a training or a validation cell (no test set): give sizes that add up to 1")
    return {"validation_fraction": float(validation_size)}


# --- history -------------------------------------------------------------------------------------
HISTORY_KEYS = ("elbo_train", "elbo_validation", "train_loss", "validation_loss",
                "reconstruction_loss_train", "reconstruction_loss_validation")


def scvi_history(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The training record of the kept restart in scvi-tools' form: one DataFrame per key of
    HISTORY_KEYS, indexed by epoch, with one column of the key's name (docs/model.md section 9):
    ``reconstruction_loss_*`` is the negative marginal log likelihood per cell, ``elbo_*`` and
    ``*_loss`` add the negative log prior per training cell (the objective the fit minimises)."""
    kept = table[table["selected"].astype(bool)] if "selected" in table and len(table) else table
    epoch = pd.Index(kept["epoch"].astype(int), name="epoch") if len(kept) else pd.Index([], name="epoch")
    prior = kept["log_prior"].to_numpy(dtype=float) if "log_prior" in kept else 0.0
    values = {
        "reconstruction_loss_train": -kept["train_loglik"].to_numpy(dtype=float),
        "reconstruction_loss_validation": -kept["val_loglik"].to_numpy(dtype=float),
    }
    values["elbo_train"] = values["train_loss"] = values["reconstruction_loss_train"] - prior
    values["elbo_validation"] = values["validation_loss"] = values["reconstruction_loss_validation"] - prior
    return {key: pd.DataFrame({key: values[key]}, index=epoch) for key in HISTORY_KEYS}
