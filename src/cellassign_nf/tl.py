"""Scanpy-style tools: one call that annotates an AnnData in place (``cellassign_nf.tl.cellassign``).

The labels, probabilities and Cell Ontology columns are those the ``annotate`` step writes
(:func:`~cellassign_nf.labels.label_cells`, :func:`~cellassign_nf.steps.annotation_info`), under
the names of :func:`annotation_keys`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import pandas as pd

from .keys import LABEL_COLUMNS, ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY, PROBS_KEY, UNS_KEY
from .settings import AnnotateSettings

if TYPE_CHECKING:
    from .api import CellAssign


def annotation_keys(key_added: str = UNS_KEY) -> dict[str, str]:
    """Where an annotation goes: for the default ``key_added`` the names ``annotate`` writes
    (``obs["cellassign_celltype"]``, ``obs["cell_type"]``, ``obsm["cellassign_probabilities"]``,
    ``uns["cellassign"]``, ...), else each prefixed by ``key_added`` (``<key_added>_celltype``,
    ``<key_added>_cell_type``, ``obsm["<key_added>_probabilities"]``, ``uns[key_added]``)."""
    if key_added == UNS_KEY:
        return {key: key for key in (*LABEL_COLUMNS, PROBS_KEY, UNS_KEY)}
    ours = {key: f"{key_added}{key.removeprefix(UNS_KEY)}" for key in (*LABEL_COLUMNS, PROBS_KEY)
            if key.startswith(UNS_KEY)}  # cellassign_celltype -> <key_added>_celltype, ...
    schema = {key: f"{key_added}_{key}" for key in (ONTOLOGY_ID_KEY, ONTOLOGY_LABEL_KEY)}  # CELLxGENE's names
    return {**ours, **schema, UNS_KEY: key_added}


def cellassign(adata: ad.AnnData, markers: pd.DataFrame | str | Path, *, size_factor_key: str | None = None,
               batch_key: str | None = None, categorical_covariate_keys: list[str] | None = None,
               continuous_covariate_keys: list[str] | None = None, layer: str | None = None,
               min_prob: float = AnnotateSettings.min_prob, rollup: bool = AnnotateSettings.rollup,
               key_added: str = UNS_KEY, copy: bool = False,
               model_kwargs: Mapping[str, Any] | None = None, **train_kwargs: Any) -> CellAssign:
    """Fit CellAssign to ``adata`` and write its labels into it; returns the fitted model.

    ``markers``: a marker matrix (genes x types, 0/1), a panel file or a bundled panel's name
    (docs/inputs.md; a panel's Cell Ontology terms are written too). Size factors:
    ``obs[size_factor_key]``, else computed from all genes. Covariates and ``layer`` as in
    ``CellAssign.setup_anndata``; ``model_kwargs`` are ModelSettings fields, ``train_kwargs``
    the arguments of ``CellAssign.train`` (``max_epochs=``, ``seed=``, scvi-tools' ``train_size=``...).

    Written (names of :func:`annotation_keys`; with ``copy``, into a copy, which is ``model.adata``):
    ``obs`` the assigned type (``unassigned`` below ``min_prob``), its probability, its Cell
    Ontology term and label (with ``rollup``, an unassigned cell's broader term when the types
    under it reach ``min_prob`` together), the level of that term and its probability; ``obsm``
    the cells x types probabilities; ``uns`` the types, the
    threshold, the model's description and the ontology's release. Columns of these names that
    an earlier call did not write (e.g. a CELLxGENE ``cell_type``) are kept as ``<name>_input``.

    >>> model = cellassign_nf.tl.cellassign(adata, "pbmc_human", batch_key="sample", seed=1)
    >>> adata.obs["cellassign_celltype"].value_counts()
    """
    from .api import CellAssign
    from .markers import load_panel

    adata = adata.copy() if copy else adata
    match = load_panel(markers, adata, layer=layer) if not isinstance(markers, pd.DataFrame) else markers
    model = CellAssign(adata, match, size_factor_key=size_factor_key, batch_key=batch_key,
                       categorical_covariate_keys=categorical_covariate_keys,
                       continuous_covariate_keys=continuous_covariate_keys, layer=layer, **dict(model_kwargs or {}))
    model.train(**train_kwargs)
    write_annotation(adata, model, model.predict(), min_prob, key_added, rollup)
    return model


def write_annotation(adata: ad.AnnData, model: CellAssign, probabilities: pd.DataFrame,
                     min_prob: float = AnnotateSettings.min_prob, key_added: str = UNS_KEY,
                     rollup: bool = AnnotateSettings.rollup) -> None:
    """Write ``model``'s labels of ``adata`` from its ``probabilities`` as :func:`cellassign` says."""
    from .labels import label_cells
    from .steps import annotation_info, keep_input_columns, model_info

    keys = annotation_keys(key_added)
    labels, probs = label_cells(probabilities, adata.obs_names, min_prob, model.ontology, rollup)
    if keys[UNS_KEY] not in adata.uns:  # not an earlier annotation of ours: keep what the input had
        keep_input_columns(adata.obs, [keys[k] for k in LABEL_COLUMNS], "the AnnData")
    for key in LABEL_COLUMNS:
        adata.obs[keys[key]] = labels[key]
    adata.obsm[keys[PROBS_KEY]] = probs
    description = model_info(model.describe(), None, int(model.train_params.get("n_cells", 0) or 0),
                             fitted=model.fitted_parameters())
    adata.uns[keys[UNS_KEY]] = annotation_info(list(probs.columns), min_prob, description)
