"""The pipeline steps as plain functions: files in, files out (docs/steps.md).

Each ``cellassign-nf`` subcommand calls one of these; Nextflow calls the subcommands. Only the
steps that use the model import torch (in the function), so that the other steps start fast.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from . import diagnostics
from .design import make_design, read_design
from .errors import InputError
from .io import atomic_path, default_sample_name, read_counts, read_h5ad, read_table, write_h5ad, write_table
from .keys import (
    CELLTYPE_KEY, INPUT_INFO_KEY, PROB_KEY, PROBS_KEY, QC_WARNINGS_KEY, SAMPLE_KEY, SIZE_FACTOR_KEY, UNASSIGNED,
    UNS_KEY,
)
from .markers import MarkerMatch, load_panel
from .progress import stage_progress
from .qc import filter_cells, metrics_table
from .settings import AnnotateSettings, DiagnosticThresholds, ModelSettings, QCThresholds, TrainSettings
from .size_factors import add_size_factors

if TYPE_CHECKING:
    from .api import CellAssign

log = logging.getLogger(__name__)


def write_json(data: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def qc(input: str | Path, output: str | Path, metrics: str | Path, summary: str | Path,
       sample: str | None = None, layer: str | None = None, thresholds: QCThresholds | None = None,
       obs_values: dict[str, str] | None = None) -> dict:
    """Read counts, compute QC metrics, filter cells; write the filtered h5ad, metrics and summary.

    The summary's ``warnings`` (one sentence each: most cells removed, or a high median %
    mitochondrial counts before QC) are also logged as warnings."""
    with stage_progress(["reading counts", "QC metrics and filtering", "writing outputs"]) as advance:
        adata = read_counts(input, layer=layer)
        adata.layers.clear()
        advance()
        sample = sample or default_sample_name(input)
        filtered, info = filter_cells(adata, thresholds or QCThresholds(), str(input))
        for warning in info[QC_WARNINGS_KEY]:  # the library as a whole looks damaged
            log.warning("QC of %s: %s", sample, warning)
        filtered.obs[SAMPLE_KEY] = pd.Categorical([sample] * filtered.n_obs)
        for key, value in (obs_values or {}).items():  # sample-level metadata, e.g. from a samplesheet
            if key in filtered.obs:
                log.warning("obs['%s'] of %s is replaced by the given value '%s'", key, input, value)
            filtered.obs[key] = pd.Categorical([value] * filtered.n_obs)
        info = {"sample": sample, "input": str(input), **info,
                "counts": adata.uns.get(INPUT_INFO_KEY, {})}  # file read, gene index, non-gene features left out
        advance()
        write_table(metrics_table(adata), metrics)
        write_json(info, summary)
        write_h5ad(filtered, output)
    return info


def merge(inputs: Sequence[str | Path], output: str | Path) -> ad.AnnData:
    """Concatenate per-sample h5ad files (cohort mode); cells are renamed ``SAMPLE:BARCODE``."""
    parts = []
    for path in inputs:
        a = read_h5ad(path)
        if SAMPLE_KEY not in a.obs:
            raise InputError(path, f"has no obs['{SAMPLE_KEY}']", "Give files written by 'cellassign-nf qc --sample NAME'.")
        a.obs_names = [f"{s}:{c}" for s, c in zip(a.obs[SAMPLE_KEY].astype(str), a.obs_names)]
        parts.append(a)
    samples = [str(p.obs[SAMPLE_KEY].iloc[0]) for p in parts if p.n_obs]
    if len(set(samples)) != len(samples):
        raise InputError(None, f"the same sample is given more than once ({', '.join(samples)})", "Merge each sample once.")
    merged = ad.concat(parts, join="inner", merge="same")
    merged.obs[SAMPLE_KEY] = pd.Categorical(merged.obs[SAMPLE_KEY].astype(str))
    write_h5ad(merged, output)
    log.info("merged %d samples: %d cells, %d shared genes", len(parts), merged.n_obs, merged.n_vars)
    return merged


def size_factors(input: str | Path, output: str | Path, key: str = SIZE_FACTOR_KEY) -> None:
    """Add size factors from all genes to ``obs[key]``."""
    adata = read_h5ad(input)
    add_size_factors(adata, key)
    write_h5ad(adata, output)


def design(input: str | Path, output: str | Path, covariates: Sequence[str] = (), formula: str | None = None) -> pd.DataFrame:
    """Write the design matrix (cells x covariate columns, no intercept) as TSV."""
    adata = read_h5ad(input)
    matrix, _ = make_design(adata.obs, covariates, formula, source=input)
    write_table(matrix, output)
    log.info("design: %d covariate columns (%s)", matrix.shape[1], ", ".join(matrix.columns) or "none")
    return matrix


def train(input: str | Path, markers: str | Path, model_out: str | Path, history_out: str | Path,
          probabilities_out: str | Path, design_path: str | Path | None = None,
          size_factor_key: str = SIZE_FACTOR_KEY, layer: str | None = None, other: bool = False,
          model_settings: ModelSettings | None = None, settings: TrainSettings | None = None) -> CellAssign:
    """Fit CellAssign; write the model file, training history and probabilities. Returns the model.

    The panel is read, checked and matched to the data's genes once; the marker check before
    training and the model use that one match. Fewer cells than ``min_cells_fit`` fail first
    (``TooFewCellsError``), before the panel is read."""
    from .api import CellAssign, require_cells_to_fit

    adata = read_h5ad(input)
    model_settings = model_settings or ModelSettings()
    require_cells_to_fit(adata.n_obs, model_settings, input)  # before the panel, the marker check and the fit
    match = load_panel(markers, adata, data_path=input, layer=layer, other=other)
    _check_before_training(adata, match)
    key = size_factor_key if size_factor_key in adata.obs else None
    if key is None:
        log.info("no obs['%s'] in %s: size factors computed from all genes", size_factor_key, input)
    design_matrix = read_design(design_path, adata.obs_names) if design_path else None
    settings = settings or TrainSettings()
    try:
        model = CellAssign(adata, match, size_factor_key=key, layer=layer, design=design_matrix,
                           settings=model_settings)
    except InputError as exc:  # name both files in errors about the data the model was given
        if exc.path is None:
            exc.path = f"{markers} vs {input}"
        raise
    model.train(settings)
    probabilities = model.predict(device=settings.device)
    model.save(model_out)
    write_table(model.history, history_out, index_label=None)
    write_table(probabilities, probabilities_out)
    return model


def _check_before_training(adata: ad.AnnData, match: MarkerMatch) -> None:
    """The marker check before training, logged as warnings. It never stops training: a failure
    of the check itself is one warning."""
    try:
        diag = diagnostics.check_markers(adata, match)
    except Exception as exc:  # noqa: BLE001 - the check is advice, not a step
        log.warning("marker check before training skipped: %s: %s", type(exc).__name__, exc)
        return
    diagnostics.log_findings(diag, label="marker check before training")


def annotate(input: str | Path, probabilities: str | Path, output: str | Path, predictions: str | Path,
             settings: AnnotateSettings | None = None, sample: str | None = None) -> ad.AnnData:
    """Add labels and probabilities to the h5ad; write it and a predictions TSV."""
    from .predict import assign_labels

    min_prob = (settings or AnnotateSettings()).min_prob
    adata = read_h5ad(input)
    probs = read_table(probabilities)
    probs.index = probs.index.astype(str)
    if sample is not None:
        prefix = f"{sample}:"
        probs = probs[probs.index.str.startswith(prefix)]
        probs.index = probs.index.str.slice(len(prefix))
        if probs.empty:
            raise InputError(probabilities, f"has no cells of sample '{sample}' (rows named '{prefix}BARCODE')",
                             "Give the cohort probabilities of the merged samples, or leave --sample out.")
    missing = adata.obs_names.difference(probs.index)
    if len(missing) == adata.n_obs:
        raise InputError(probabilities, f"shares no cell with {input}", "Give the probabilities computed for this data.")
    if len(missing):
        log.warning("%d cells have no probabilities (zero counts): labelled unassigned", len(missing))
    probs = probs.reindex(adata.obs_names)
    labels = assign_labels(probs.fillna(0.0), min_prob)
    no_probs = probs.isna().any(axis=1)
    labels.loc[no_probs, CELLTYPE_KEY] = UNASSIGNED
    labels.loc[no_probs, PROB_KEY] = np.nan
    adata.obs[CELLTYPE_KEY] = labels[CELLTYPE_KEY]
    adata.obs[PROB_KEY] = labels[PROB_KEY]
    adata.obsm[PROBS_KEY] = probs
    adata.uns[UNS_KEY] = {"cell_types": list(probs.columns), "min_prob": float(min_prob)}
    write_h5ad(adata, output)
    write_table(pd.concat([labels, probs], axis=1), predictions)
    return adata


def celltype_summary(adata: ad.AnnData) -> pd.DataFrame:
    """Cells and share per assigned type (for the terminal summary)."""
    counts = adata.obs[CELLTYPE_KEY].value_counts(sort=False)
    return pd.DataFrame({"cells": counts, "percent": 100.0 * counts / max(adata.n_obs, 1)})


def check_markers(input: str | Path, markers: str | Path, output: str | Path, layer: str | None = None,
                  thresholds: DiagnosticThresholds | None = None) -> diagnostics.Diagnostics:
    """Pre-flight marker diagnostics of raw counts (any input ``qc`` reads); write the flags TSV."""
    adata = read_counts(input, layer=layer)
    match = load_panel(markers, adata, data_path=input, layer=layer)
    diag = diagnostics.check_markers(adata, match, thresholds)
    diagnostics.write_diagnostics(diag, output)
    diagnostics.log_findings(diag, label=None)
    return diag


def diagnose(input: str | Path, markers: str | Path, output: str | Path, specificity: str | Path,
             thresholds: DiagnosticThresholds | None = None) -> diagnostics.Diagnostics:
    """All marker diagnostics of an annotated h5ad; write the flags and specificity TSVs."""
    adata = read_h5ad(input)
    if CELLTYPE_KEY not in adata.obs:
        raise InputError(input, f"has no obs['{CELLTYPE_KEY}'] (assigned cell types)",
                         "Give the annotated h5ad written by 'cellassign-nf annotate', or use 'cellassign-nf "
                         "check-markers' on unannotated counts.")
    match = load_panel(markers, adata, data_path=input)
    diag = diagnostics.diagnose(adata, match, thresholds)
    diagnostics.write_diagnostics(diag, output, specificity)
    diagnostics.log_findings(diag, label=None)
    return diag
