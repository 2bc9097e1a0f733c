"""The pipeline steps as plain functions: files in, files out (docs/steps.md).

Each ``cellassign-nf`` subcommand calls one of these; Nextflow calls the subcommands. Only the
steps that use the model import torch (in the function), so that the other steps start fast.

Each step reads what it needs and writes what it adds: QC writes the filtered counts (an
uncompressed h5ad) once; size factors and the design are small tables; training and the
diagnostics read only the marker genes (block by block, ``io.read_h5ad(path, genes=...)``);
``annotate`` writes the annotated h5ad as a byte copy of its input with the new ``obs`` columns.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from . import diagnostics
from .design import make_design, read_design
from .errors import InputError
from .io import (
    BLOCK_VALUES, MAIN_MATRIX, atomic_path, copy_h5ad_with, default_sample_name, open_counts, open_h5ad, read_counts,
    read_h5ad, read_h5ad_parts, read_obs, read_table, write_h5ad_rows, write_table,
)
from .keys import (
    CELLTYPE_KEY, DOUBLET_COLUMNS, FITTED_KEY, INPUT_INFO_KEY, LABEL_COLUMNS, LEFT_OUT_TYPES_KEY, MODEL_INFO_KEY,
    MODEL_WARNINGS_KEY, ONTOLOGY_ID_KEY, ONTOLOGY_VERSION_KEY, PREDICTED_DOUBLET_KEY, PROBS_KEY, QC_WARNINGS_KEY,
    SAMPLE_KEY, SCRUBLET_KEY, SIZE_FACTOR_KEY, UNS_KEY,
)
from .markers import MarkerMatch, Panel, left_out_warning, load_panel, panel_differences, read_markers, write_panel
from .progress import stage_progress
from .qc import metrics_table, select
from .settings import (
    AnnotateSettings, DiagnosticThresholds, DoubletSettings, ModelSettings, PanelSettings, QCThresholds, RefitSettings,
    TrainSettings,
)
from .size_factors import compute_size_factors, warn_zero

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
    with stage_progress(["reading cells and genes", "QC metrics", "writing the cells kept"]) as advance:
        counts = open_counts(input, layer=layer)  # an h5ad's CSR matrix stays on disk, read block by block
        adata = counts.adata
        adata.layers.clear()
        advance()
        passed, genes, info = select(adata, thresholds or QCThresholds(), str(input), counts.blocks)
        sample = sample or default_sample_name(input)
        for warning in info[QC_WARNINGS_KEY]:  # the library as a whole looks damaged
            log.warning("QC of %s: %s", sample, warning)
        obs = adata.obs[passed].drop(columns="qc_failed")  # empty for every kept cell; the metrics table keeps it
        obs[SAMPLE_KEY] = pd.Categorical([sample] * len(obs))
        for key, value in (obs_values or {}).items():  # sample-level metadata, e.g. from a samplesheet
            if key in obs:
                log.warning("obs['%s'] of %s is replaced by the given value '%s'", key, input, value)
            obs[key] = pd.Categorical([value] * len(obs))
        var = adata.var if genes is None else adata.var[genes]
        n_values = int(var["n_cells"].sum()) if genes is not None else int(adata.obs["n_genes_by_counts"][passed].sum())
        info = {"sample": sample, "input": str(input), **info,
                "counts": adata.uns.get(INPUT_INFO_KEY, {})}  # file read, gene index, non-gene features left out
        advance()
        write_table(metrics_table(adata), metrics)
        write_json(info, summary)
        write_h5ad_rows(output, obs, var, adata.uns, counts.blocks(), passed, genes, n_values)
    return info


def merge(inputs: Sequence[str | Path], output: str | Path) -> tuple[int, int]:
    """Concatenate per-sample h5ad files (cohort mode) on disk, block by block (anndata's
    ``concat_on_disk``: memory holds one block, not the cohort); cells are renamed
    ``SAMPLE:BARCODE``, genes are those every sample has. Returns (cells, genes)."""
    from anndata.experimental import concat_on_disk
    from anndata.io import read_elem, write_elem
    import h5py

    samples = []
    for path in inputs:
        obs = read_obs(path)
        if SAMPLE_KEY not in obs:
            raise InputError(path, f"has no obs['{SAMPLE_KEY}']", "Give files written by 'cellassign-nf qc --sample NAME'.")
        samples += [str(s) for s in pd.unique(obs[SAMPLE_KEY].astype(str))]
    if len(set(samples)) != len(samples):
        raise InputError(None, f"the same sample is given more than once ({', '.join(samples)})", "Merge each sample once.")
    with atomic_path(output) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Observation names are not unique")  # renamed below
        concat_on_disk([str(p) for p in inputs], str(tmp), join="inner", merge="same",
                       max_loaded_elems=BLOCK_VALUES)
        with h5py.File(tmp, "r+") as f:
            obs = read_elem(f["obs"])
            obs.index = [f"{s}:{c}" for s, c in zip(obs[SAMPLE_KEY].astype(str), obs.index)]
            obs[SAMPLE_KEY] = pd.Categorical(obs[SAMPLE_KEY].astype(str))
            del f["obs"]
            write_elem(f, "obs", obs)
            n_obs, n_vars = len(obs), len(read_elem(f["var"]))
    log.info("merged %d samples: %d cells, %d shared genes", len(samples), n_obs, n_vars)
    return n_obs, n_vars


def doublets(input: str | Path, output: str | Path, summary: str | Path,
             settings: DoubletSettings | None = None, seed: int = 0) -> dict:
    """Find the doublets of one sample (``doublets.find_doublets``); write the per-cell table
    (``cell``, ``DOUBLET_COLUMNS``, and the cells' sample) and the summary JSON. Reads all genes
    with Scrublet on; only ``obs`` with ``--doublets none`` or a sample too small. Returns the summary."""
    from .doublets import find_doublets

    settings = settings or DoubletSettings()
    obs = read_obs(input)
    if settings.doublets == "none" or len(obs) < settings.doublet_min_cells:
        cells = ad.AnnData(obs=obs)
    else:
        cells = read_h5ad(input)
    table, result = find_doublets(cells, settings, seed=seed)
    if SAMPLE_KEY in obs:
        table[SAMPLE_KEY] = obs[SAMPLE_KEY].astype(str).to_numpy()
    write_table(table, output)
    write_json(result, summary)
    (log.warning if result[QC_WARNINGS_KEY] else log.info)("doublets: %s", result["note"])
    for warning in result[QC_WARNINGS_KEY]:
        log.warning("doublets: %s", warning)
    return result


def singlets(adata: ad.AnnData, design: pd.DataFrame | None,
             doublets_paths: Sequence[str | Path]) -> tuple[ad.AnnData, pd.DataFrame | None]:
    """The cells a model is fitted on, and their rows of the design: all but the predicted
    doublets of the tables (``adata`` itself when none is left out)."""
    if not doublets_paths:
        return adata, design
    from .doublets import read_doublets

    keep = ~read_doublets(doublets_paths, adata.obs_names)[PREDICTED_DOUBLET_KEY].to_numpy()
    log.info("%d predicted doublets are not fitted (%d cells are)", int((~keep).sum()), int(keep.sum()))
    if keep.all():
        return adata, design
    fitted = adata[keep].copy()
    return fitted, None if design is None else design.loc[fitted.obs_names]


def probabilities_of(model: CellAssign, adata: ad.AnnData, fitted: ad.AnnData, design: pd.DataFrame | None,
                     device: str) -> pd.DataFrame:
    """Every cell's probabilities: the fitted cells' as prepared, or all of ``adata`` when the fit
    left some (the doublets) out."""
    return model.predict(device=device) if fitted is adata else model.predict(adata, design=design, device=device)


def size_factors(input: str | Path, output: str | Path, key: str = SIZE_FACTOR_KEY) -> pd.DataFrame:
    """Size factors from all genes (total counts / their mean), read block by block; written as
    the table ``cell, <key>``."""
    cells = read_h5ad(input, genes=[])
    table = pd.DataFrame({key: compute_size_factors(cells)}, index=cells.obs_names)
    warn_zero(table[key].to_numpy())
    write_table(table, output, exact=True)  # the model uses them: a fit from the table equals one from obs
    return table


def read_size_factors(path: str | Path, cells: pd.Index, sample: str | None = None) -> pd.Series:
    """The size factors of ``cells`` from a table of ``size_factors`` (its one column, or the
    column ``SIZE_FACTOR_KEY``); rows ``SAMPLE:BARCODE`` of a cohort's table with ``sample``."""
    table = _rows_of(read_table(path), path, sample, "size factors")
    if table.shape[1] != 1 and SIZE_FACTOR_KEY not in table:
        raise InputError(path, f"has {table.shape[1]} columns and none is '{SIZE_FACTOR_KEY}'",
                         "Give the table written by 'cellassign-nf size-factors'.")
    column = table[SIZE_FACTOR_KEY] if SIZE_FACTOR_KEY in table else table.iloc[:, 0]
    missing = cells.difference(table.index)
    if len(missing):
        raise InputError(path, f"has no size factors of {len(missing)} of the {len(cells)} cells (e.g. "
                         f"{', '.join(map(str, missing[:3]))})", "Give the size factors computed for these data.")
    return pd.to_numeric(column.reindex(cells), errors="coerce").astype(np.float64)


def _rows_of(table: pd.DataFrame, path: str | Path, sample: str | None, what: str) -> pd.DataFrame:
    """A table's rows (cells) as barcodes: all of them, or a cohort table's rows ``SAMPLE:BARCODE``
    of ``sample`` with the prefix taken off."""
    table.index = table.index.astype(str)
    if sample is None:
        return table
    prefix = f"{sample}:"
    table = table[table.index.str.startswith(prefix)]
    table.index = table.index.str.slice(len(prefix))
    if table.empty:
        raise InputError(path, f"has no {what} of sample '{sample}' (rows named '{prefix}BARCODE')",
                         f"Give the cohort {what} of the merged samples, or leave --sample out.")
    return table


def design(input: str | Path, output: str | Path, covariates: Sequence[str] = (), formula: str | None = None) -> pd.DataFrame:
    """Write the design matrix (cells x covariate columns, no intercept) as TSV; reads only ``obs``."""
    obs = read_obs(input)
    matrix, _ = make_design(obs, covariates, formula, source=input)
    write_table(matrix, output)
    log.info("design: %d covariate columns (%s)", matrix.shape[1], ", ".join(matrix.columns) or "none")
    return matrix


def train(input: str | Path, markers: str | Path, model_out: str | Path, history_out: str | Path,
          probabilities_out: str | Path, design_path: str | Path | None = None,
          size_factor_key: str = SIZE_FACTOR_KEY, layer: str | None = None, other: bool = PanelSettings.other,
          model_settings: ModelSettings | None = None, settings: TrainSettings | None = None,
          size_factors_path: str | Path | None = None, info_out: str | Path | None = None,
          doublets_paths: Sequence[str | Path] = ()) -> CellAssign:
    """Fit CellAssign; write the model file, training history and probabilities (and, with
    ``info_out``, the model's description for ``annotate``). Returns the model.

    With ``other`` (the default, as the CLI's) the model has an extra type ``other`` without
    markers, unless the panel names one: a cell that none of the panel's types explains better
    than a cell with no marker up is labelled ``other``, not forced into the nearest type.

    With ``doublets_paths`` (the tables of ``doublets``, one per sample), the predicted doublets
    are left out of the fit; every cell, doublets included, gets its probabilities.

    Only the marker genes are read (the main matrix, block by block; all of a ``layer``). Size
    factors: the table ``size_factors_path``, else ``obs[size_factor_key]``, else computed from
    all genes. The panel is read, checked and matched to the data's genes once; the marker check
    before training and the model use that one match. A type of the panel with no marker gene in
    the data is left out of the fit with one warning (kept in ``info_out``: :func:`model_info`), or
    refused with ``model_settings.require_every_type``. Fewer cells than ``min_cells_fit`` fail
    first (``TooFewCellsError``), before the panel is read."""
    from .api import CellAssign, require_cells_to_fit

    model_settings = model_settings or ModelSettings()
    backed = open_h5ad(input)
    try:
        require_cells_to_fit(backed.n_obs, model_settings, input)  # before the panel, the marker check and the fit
        match = load_panel(markers, backed, data_path=input, layer=layer, other=other)
    finally:
        backed.file.close()
    partial = layer in (None, MAIN_MATRIX)
    adata = read_h5ad(input, genes=list(match.rho.index)) if partial else read_h5ad(input)
    # the totals over all genes came with the marker genes; a layer's are the model's to sum
    _add_size_factors(adata, size_factors_path, size_factor_key, input, from_totals=partial)
    _check_before_training(adata, match)
    key = size_factor_key if size_factor_key in adata.obs else None
    design_matrix = read_design(design_path, adata.obs_names) if design_path else None
    settings = settings or TrainSettings()
    fitted, fitted_design = singlets(adata, design_matrix, doublets_paths)
    try:
        model = CellAssign(fitted, match, size_factor_key=key, layer=layer, design=fitted_design,
                           settings=model_settings)
    except InputError as exc:  # name both files in errors about the data the model was given
        if exc.path is None:
            exc.path = f"{markers} vs {input}"
        raise
    model.train(settings=settings)
    probabilities = probabilities_of(model, adata, fitted, design_matrix, settings.device)
    model.save(model_out)
    write_table(model.history_table, history_out, index_label=None)
    write_table(probabilities, probabilities_out)
    if info_out is not None:
        write_json(model_info(model.describe(), None, model.train_params["n_cells"], fitted=model.fitted_parameters()),
                   info_out)
    return model


def model_info(description: dict, refit: str | None, n_cells: int, epochs: int | None = None,
               fitted: dict | None = None) -> dict:
    """Which model made the labels and how (``uns[UNS_KEY][MODEL_INFO_KEY]`` of the annotated h5ad):
    the model's ``CellAssign.describe()`` (file, sha256, version, panel, types, the panel's types it
    left out) and ``use``: trained on these cells (``refit`` None), or a saved model reused with
    ``refit`` batch or none; the fit's warnings (:func:`model_warnings`), which the pipeline puts
    in pipeline_info/samples.tsv; and, under ``FITTED_KEY``, the ``fitted`` parameters of the model
    used (``CellAssign.fitted_parameters()``), which the report draws."""
    use = {None: f"trained on these {n_cells} cells",
           "batch": f"saved model reused: baseline beta0, covariate effects beta and proportions pi refitted on these "
                    f"{n_cells} cells ({epochs} epochs); delta and the dispersion as saved",
           "none": f"saved model reused as saved (--refit none) on these {n_cells} cells"}[refit]
    info = {**description, "use": use, "refit": refit or "", MODEL_WARNINGS_KEY: model_warnings(description)}
    return info if fitted is None else {**info, FITTED_KEY: fitted}


def model_warnings(description: dict) -> list[str]:
    """The warnings of a model's fit, one sentence each, from its ``CellAssign.describe()``: the
    panel's types it left out for want of a marker gene in the data (none in older descriptions)."""
    left_out = [str(t) for t in description.get(LEFT_OUT_TYPES_KEY, [])]
    return [left_out_warning(left_out)] if left_out else []


def load_model(path: str | Path, markers: str | Path | None = None) -> CellAssign:
    """Read a saved model; with ``markers``, check that they are the model's panel (one error line
    naming the differences otherwise)."""
    from .api import CellAssign

    model = CellAssign.load(path)
    if markers is not None:
        differences = panel_differences(read_markers(markers), model.panel)
        if differences:
            raise InputError(markers, f"is not the panel of the model {Path(path).name} ({'; '.join(differences)})",
                             "Leave --markers out to use the model's own panel, or give the panel the model was "
                             "trained with.")
    return model


def check_model(model: str | Path, panel_out: str | Path, markers: str | Path | None = None) -> CellAssign:
    """Check a saved model file (and ``markers`` against its panel); write its panel as a marker
    table (genes x types, with its Cell Ontology terms) for the steps that read a panel."""
    loaded = load_model(model, markers)
    write_panel(Panel(loaded.panel, loaded.ontology), panel_out)
    log.info("model %s: %d cell types, %d marker genes, panel %s", Path(model).name, len(loaded.cell_types),
             len(loaded.genes), loaded.panel_name or "(unnamed)")
    return loaded


def predict(input: str | Path, model: str | Path, model_out: str | Path, history_out: str | Path,
            probabilities_out: str | Path, info_out: str | Path | None = None, design_path: str | Path | None = None,
            size_factors_path: str | Path | None = None, size_factor_key: str = SIZE_FACTOR_KEY,
            markers: str | Path | None = None, refit: RefitSettings | None = None,
            model_settings: ModelSettings | None = None, settings: TrainSettings | None = None,
            doublets_paths: Sequence[str | Path] = ()) -> CellAssign:
    """Annotate with a saved model (docs/model.md section 8): refit the batch (beta0, beta, pi;
    delta and the dispersion fixed) or, with ``refit="none"``, predict as saved. Writes what
    ``train`` writes: the model used (refitted, or the saved one), its history, the probabilities
    and the model's description. Reads only the marker genes. The refit leaves out the predicted
    doublets of ``doublets_paths``; every cell gets its probabilities."""
    mode = (refit or RefitSettings()).refit
    saved = load_model(model, markers)
    backed = open_h5ad(input)
    try:
        if mode == "batch":
            from .api import require_cells_to_fit

            require_cells_to_fit(backed.n_obs, model_settings or ModelSettings(), input)
        genes = list(saved.match(backed, input).rho.index)  # every marker gene of the model, or one error
    finally:
        backed.file.close()
    adata = read_h5ad(input, genes=genes)
    _add_size_factors(adata, size_factors_path, size_factor_key, input)
    settings = settings or TrainSettings()
    if mode == "batch":
        design_matrix = read_design(design_path, adata.obs_names) if design_path else None
        fitted, fitted_design = singlets(adata, design_matrix, doublets_paths)
        used = saved.refit(fitted, design=fitted_design, size_factor_key=size_factor_key, settings=settings)
        probabilities = probabilities_of(used, adata, fitted, design_matrix, settings.device)
        epochs = int(used.history_table["epoch"].max()) if len(used.history_table) else 0
    else:
        if design_path:
            log.info("--refit none: the design is the model's own (%s), rebuilt from the cells' obs; %s is not used",
                     saved.design_spec.formula or "no covariates", design_path)
        saved.size_factor_key = size_factor_key
        probabilities = saved.predict(adata, device=settings.device, unseen_levels="reference")
        used, epochs = saved, None
        used.reference = saved.describe()  # its copy names the file it was copied from, as a refit does
    info = model_info(used.reference, mode, len(probabilities), epochs,  # the saved model's file
                      fitted=used.fitted_parameters())
    used.save(model_out)
    write_table(used.history_table, history_out, index_label=None)
    write_table(probabilities, probabilities_out)
    if info_out is not None:
        write_json(info, info_out)
    return used


def _add_size_factors(adata: ad.AnnData, size_factors_path: str | Path | None, key: str, input: str | Path,
                      from_totals: bool = True) -> None:
    """``obs[key]``: from the table ``size_factors_path``, else as it is, else (``from_totals``) from
    the totals over all genes that ``io.read_h5ad(path, genes=...)`` read with the marker genes."""
    if size_factors_path is not None:
        adata.obs[key] = read_size_factors(size_factors_path, adata.obs_names)
    elif key not in adata.obs:
        log.info("no obs['%s'] in %s: size factors computed from all genes", key, input)
        if from_totals:
            adata.obs[key] = compute_size_factors(adata)


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
             settings: AnnotateSettings | None = None, sample: str | None = None,
             size_factors_path: str | Path | None = None, model_info_path: str | Path | None = None,
             doublets_path: str | Path | None = None, doublet_summary_path: str | Path | None = None) -> ad.AnnData:
    """Add labels, their Cell Ontology terms and probabilities (and size factors, and the model's
    description of ``train`` or ``predict``, when given) to the h5ad; write it and a predictions
    TSV. The terms are the model's (its description's ``ontology``; none without one). With the
    doublet table of ``doublets`` (and its summary, kept in ``uns["scrublet"]``), each cell's
    ``DOUBLET_COLUMNS`` are added and a predicted doublet is labelled ``doublet``. Columns of the
    input named like the ones written here are kept with the suffix ``_input``. The h5ad's
    matrices are copied as they are, never read. Returns the cells' annotations (an AnnData of
    ``obs`` only)."""
    from .labels import label_cells, mark_doublets

    settings = settings or AnnotateSettings()
    min_prob = settings.min_prob
    obs = read_obs(input)
    probs = _rows_of(read_table(probabilities), probabilities, sample, "probabilities")
    missing = obs.index.difference(probs.index)
    if len(missing) == len(obs):
        raise InputError(probabilities, f"shares no cell with {input}", "Give the probabilities computed for this data.")
    if len(missing):
        log.warning("%d cells have no probabilities (zero counts): labelled unassigned", len(missing))
    description = _read_model_info(model_info_path) if model_info_path is not None else None
    terms = terms_of(description) if description else {}
    labels, probs = label_cells(probs, obs.index, min_prob, terms, rollup=settings.rollup)
    columns, uns = list(LABEL_COLUMNS), {}
    if doublets_path is not None:
        from .doublets import read_doublets

        calls = read_doublets([doublets_path], obs.index)
        labels = pd.concat([mark_doublets(labels, calls[PREDICTED_DOUBLET_KEY]), calls], axis=1)
        columns += DOUBLET_COLUMNS
        if doublet_summary_path is not None:
            uns[SCRUBLET_KEY] = read_doublet_summary(doublet_summary_path)
    info = annotation_info(list(probs.columns), min_prob, description)
    if not terms:
        log.info("no Cell Ontology terms (the panel gives none%s): %s is 'unknown' for every type",
                 "" if model_info_path else ", or no --model-info", ONTOLOGY_ID_KEY)
    keep_input_columns(obs, columns, input)
    if size_factors_path is not None:
        obs[SIZE_FACTOR_KEY] = read_size_factors(size_factors_path, obs.index, sample=sample)
    for key in columns:
        obs[key] = labels[key]
    copy_h5ad_with(input, output, obs, obsm={PROBS_KEY: probs}, uns={UNS_KEY: info, **uns})
    write_table(pd.concat([labels[columns], probs], axis=1), predictions)
    return ad.AnnData(obs=obs, uns=uns)


def read_doublet_summary(path: str | Path) -> dict:
    """The summary JSON of ``doublets``, without its empty values (as ``uns`` can hold it)."""
    summary = _read_step_json(path, "a doublet summary", "method",
                              "Give the --summary JSON written by 'cellassign-nf doublets'.")
    return {k: v for k, v in summary.items() if v is not None and v != []}


def _read_step_json(path: str | Path, what: str, key: str, fix: str) -> dict:
    """The JSON object an earlier step wrote (one that has ``key``), or one clear error."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as {what} ({type(exc).__name__})", fix) from exc
    if not isinstance(data, dict) or key not in data:
        raise InputError(path, f"is not {what}", fix)
    return data


def annotation_info(cell_types: list[str], min_prob: float, description: dict | None) -> dict:
    """``uns[UNS_KEY]`` of annotated cells: the types, the threshold, the model's description
    (``model_info``) and, when the model has Cell Ontology terms, the ontology's release."""
    info: dict = {"cell_types": [str(t) for t in cell_types], "min_prob": float(min_prob)}
    if description is not None:
        info[MODEL_INFO_KEY] = description
        if terms_of(description):
            from .ontology import version

            info[ONTOLOGY_VERSION_KEY] = version()
    return info


def keep_input_columns(obs: pd.DataFrame, keys: Sequence[str], source: str | Path) -> None:
    """Columns of ``obs`` named like ``keys`` (about to be written) move to ``<key>_input``, with a warning."""
    for key in keys:
        if key in obs:
            log.warning("obs['%s'] of %s is kept as obs['%s_input']", key, source, key)
            obs[f"{key}_input"] = obs.pop(key)


def terms_of(description: dict) -> dict[str, str]:
    """The Cell Ontology term of each type that has one, from a model's description (``CellAssign.describe``)."""
    return {str(t): str(term) for t, term in zip(description.get("cell_types", []), description.get("ontology") or [])
            if term}


def _read_model_info(path: str | Path) -> dict:
    return _read_step_json(path, "a model description", "sha256",
                           "Give the --model-info JSON written by 'cellassign-nf train' or 'predict'.")


def celltype_summary(adata: ad.AnnData) -> pd.DataFrame:
    """Cells, share and Cell Ontology term per assigned type (for the terminal summary)."""
    from .labels import ontology_by_type

    counts = adata.obs[CELLTYPE_KEY].value_counts(sort=False)
    terms = ontology_by_type(adata.obs)
    return pd.DataFrame({"cells": counts, "percent": 100.0 * counts / max(adata.n_obs, 1),
                         "ontology": [" ".join(terms.get(str(t), ("", ""))).strip() for t in counts.index]})


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
    """All marker diagnostics of an annotated h5ad; write the flags and specificity TSVs. Reads the
    marker genes of every cell, and all genes only of the cells the candidate markers come from."""
    backed = open_h5ad(input)
    try:
        if CELLTYPE_KEY not in backed.obs:
            raise InputError(input, f"has no obs['{CELLTYPE_KEY}'] (assigned cell types)",
                             "Give the annotated h5ad written by 'cellassign-nf annotate', or use 'cellassign-nf "
                             "check-markers' on unannotated counts.")
        match = load_panel(markers, backed, data_path=input)
        thresholds = thresholds or DiagnosticThresholds()
        cells = diagnostics.candidate_cells(backed.obs[CELLTYPE_KEY], thresholds)
    finally:
        backed.file.close()
    adata, candidate_data = read_h5ad_parts(input, list(match.rho.index), cells)  # one pass over the matrix
    diag = diagnostics.diagnose(adata, match, thresholds, candidate_data=candidate_data)
    diagnostics.write_diagnostics(diag, output, specificity)
    diagnostics.log_findings(diag, label=None)
    return diag
