"""Per-sample numbers (cells per type, threshold, training outcome) shared by the page, the
MultiQC files and the cohort table."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..keys import LEFT_OUT_TYPES_KEY, MODEL_INFO_KEY, MODEL_WARNINGS_KEY, SCRUBLET_KEY, UNS_KEY
from .base import CELLTYPE_KEY, UNASSIGNED, QCSummary, SampleSummary

if TYPE_CHECKING:
    import anndata as ad


def celltype_counts(adata: ad.AnnData, cell_types: Sequence[str] | None = None) -> pd.Series:
    """Cells per assigned type: ``cell_types`` order (then any others), ``unassigned`` last."""
    labels = adata.obs[CELLTYPE_KEY].astype(str)
    counts = labels.value_counts()
    order: list[str] = [str(t) for t in (cell_types or []) if str(t) != UNASSIGNED]
    cats = adata.obs[CELLTYPE_KEY].cat.categories if hasattr(adata.obs[CELLTYPE_KEY], "cat") else []
    uns_types = _uns_cell_types(adata)
    for t in [*uns_types, *map(str, cats), *counts.index]:
        if t != UNASSIGNED and t not in order:
            order.append(t)
    order.append(UNASSIGNED)
    out = counts.reindex(order, fill_value=0).astype(int)
    out.index.name = "cell_type"
    out.name = "cells"
    return out


def _uns_cell_types(adata: ad.AnnData) -> list[str]:
    info = adata.uns.get(UNS_KEY, {})
    types = info.get("cell_types", []) if isinstance(info, Mapping) else []
    return [str(t) for t in np.asarray(types).ravel()]


def model_info_of(adata: ad.AnnData) -> dict:
    """The description of the model that made the labels (``uns[UNS_KEY][MODEL_INFO_KEY]``,
    ``steps.model_info``); ``{}`` when the data do not say."""
    info = adata.uns.get(UNS_KEY, {})
    model = info.get(MODEL_INFO_KEY) if isinstance(info, Mapping) else None
    return dict(model) if isinstance(model, Mapping) else {}


def _strings(value: object) -> list[str]:
    """A list of strings as written (a list) or read back from an h5ad (an array; an empty one may be float)."""
    if value is None or isinstance(value, str):
        return [] if value is None else [value]
    return [str(v) for v in np.asarray(value).ravel()]


def min_prob_of(adata: ad.AnnData) -> float | None:
    """The probability threshold used by ``annotate`` (``uns[UNS_KEY]["min_prob"]``)."""
    info = adata.uns.get(UNS_KEY, {})
    value = info.get("min_prob") if isinstance(info, Mapping) else None
    try:
        return None if value is None else float(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None


def summarise(sample: str, adata: ad.AnnData, history: pd.DataFrame, qc: QCSummary,
              cell_types: Sequence[str] | None = None) -> SampleSummary:
    """Numbers for one sample, used by the page, the MultiQC files and the cohort table."""
    selected = history[history["selected"]]
    sel_restart = int(selected["restart"].iloc[0]) if not selected.empty else None
    if selected.empty and not history.empty:  # no flag: take the best final validation likelihood
        finals = history.groupby("restart").tail(1).set_index("restart")
        col = "val_loglik" if finals["val_loglik"].notna().any() else "train_loglik"
        sel_restart = int(finals[col].idxmax())
        selected = history[history["restart"] == sel_restart]
    final_val = final_train = None
    n_epochs = None
    val_curve = pd.Series(dtype=float)
    if not selected.empty:
        last = selected.iloc[-1]
        final_val = None if pd.isna(last["val_loglik"]) else float(last["val_loglik"])
        final_train = None if pd.isna(last["train_loglik"]) else float(last["train_loglik"])
        n_epochs = int(selected["epoch"].max())
        val_curve = selected.set_index("epoch")["val_loglik"].dropna()
    if qc.cells_after is None:
        qc.cells_after = int(adata.n_obs)
    model = model_info_of(adata)
    return SampleSummary(
        sample=sample,
        counts=celltype_counts(adata, cell_types),
        min_prob=min_prob_of(adata),
        qc=qc,
        final_val_loglik=final_val,
        final_train_loglik=final_train,
        selected_restart=sel_restart,
        n_restarts=int(history["restart"].nunique()) if not history.empty else 0,
        n_epochs=n_epochs,
        val_curve=val_curve,
        doublets=dict(adata.uns[SCRUBLET_KEY]) if SCRUBLET_KEY in adata.uns else None,
        model_warnings=_strings(model.get(MODEL_WARNINGS_KEY)),
        left_out_types=_strings(model.get(LEFT_OUT_TYPES_KEY)),
    )
