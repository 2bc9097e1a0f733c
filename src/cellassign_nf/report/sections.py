"""The sections of the per-sample page, one function each, in page order. Each returns a
``_Section`` (tables, figures, notes); figures are written as PNG files as they are made."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..io import display_names, relabel_genes
from ..keys import LEFT_OUT_TYPES_KEY, OTHER
from ..labels import ontology_by_type, rolled_up
from .base import (
    CELLTYPE_KEY, PROB_KEY, SIZE_FACTOR_KEY, UMAP_MIN_CELLS, ModelLike, QCSummary, ReportFigure, SampleSummary, flatten,
    write_bytes,
)
from .figures import (
    compute_umap, figure_png, normalise, plot_celltype_counts, plot_delta, plot_doublet_scores, plot_marker_expression,
    plot_probability_histogram, plot_size_factors, plot_specificity, plot_training_curves, plot_umap,
)
from .html import _Section, _table
from .load import qc_removed_rows
from .summary import model_info_of

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    """Everything the page is made of, loaded and checked."""

    adata: ad.AnnData  # obs, var, uns and the model's marker genes (at least)
    history: pd.DataFrame
    model: ModelLike
    qc: QCSummary
    params: dict[str, Any]
    cell_types: list[str]
    summary: SampleSummary
    diagnostics: pd.DataFrame | None = None  # marker_diagnostics.tsv (diagnostics.FLAG_COLUMNS)
    specificity: pd.DataFrame | None = None  # marker_specificity.tsv: types x assigned groups
    umap_cells: Callable[[pd.Series], np.ndarray] | None = None  # labels -> positions of the UMAP's cells
    umap_data: ad.AnnData | None = None  # those cells with all genes (default: cut from adata)

    def umap_input(self) -> ad.AnnData:
        """The UMAP's cells with all their genes (handed over once: the inputs keep no copy)."""
        data, self.umap_data = self.umap_data, None
        return data if data is not None else self.adata[self.umap_cells(self.adata.obs[CELLTYPE_KEY])].copy()


class FigureSink:
    """Renders figures to PNG, writes each as ``outdir/SAMPLE_KEY.png`` and keeps them for the page."""

    def __init__(self, outdir: Path, sample: str) -> None:
        self.outdir, self.sample = outdir, sample
        self.figures: list[ReportFigure] = []

    def add(self, section: _Section, key: str, title: str, draw: Callable[[], Figure | None], caption: str) -> bool:
        """Draw one figure into ``section``. Figures are optional: one that cannot be drawn
        becomes a note in its section and a warning in the log, and the report goes on."""
        try:
            fig = draw()
            if fig is None:
                return False
            png = figure_png(fig)
        except Exception as exc:  # noqa: BLE001 - any failure of an optional figure
            import matplotlib.pyplot as plt  # the Agg backend is already selected by .figures

            log.warning("%s: %s could not be drawn: %s: %s", self.sample, title, type(exc).__name__, exc)
            log.debug("traceback of the failed figure", exc_info=True)
            section.notes.append(f"{title} could not be drawn ({type(exc).__name__}: {exc}).")
            plt.close("all")
            return False
        path = write_bytes(self.outdir / f"{self.sample}_{key}.png", png)
        rf = ReportFigure(key, title, png, path, caption)
        self.figures.append(rf)
        section.figures.append(rf)
        return True


def build_sections(inp: ReportInputs, sink: FigureSink, versions: Mapping[str, str], *, umap: bool,
                   umap_max_cells: int) -> list[_Section]:
    """All sections of the page, in order."""
    sections = [celltypes_section(inp, sink), probability_section(inp, sink)]
    sections += [markers_section(inp, sink, normalise(inp.adata)), umap_section(inp, sink, umap, umap_max_cells)]
    sections += [training_section(inp, sink), delta_section(inp, sink), qc_section(inp, sink)]
    if inp.summary.doublets is not None:
        sections.append(doublets_section(inp, sink))
    sections += [model_section(inp), parameters_section(inp), versions_section(versions)]
    if inp.diagnostics is not None:  # first when it warns, else after the marker dot plot
        after_markers = [sec.id for sec in sections].index("markers") + 1
        sections.insert(0 if inp.summary.marker_warnings else after_markers, diagnostics_section(inp, sink))
    for key, warns in (("doublets", inp.summary.doublet_warnings), ("qc", inp.qc.warnings)):
        if warns:  # a damaged or overloaded library: its section first, before everything fitted on it
            first = next(sec for sec in sections if sec.id == key)
            sections.remove(first)
            sections.insert(0, first)
    return sections


def diagnostics_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    """The marker diagnostics: each warning as a sentence, the specificity heat map, candidates."""
    table = inp.diagnostics
    warnings = table[table["severity"] == "warning"]
    s = _Section("marker-diagnostics", "Marker diagnostics",
                 "Can the marker panel separate the cell types in these data? Each warning names the markers to "
                 "blame and what to do (docs/markers.md). Candidates are genes that mark the assigned cells in "
                 "these data and are not in the panel: add them to refine the panel, then run again.")
    s.notes += list(warnings["message"]) or ["No marker problems found: every check passed."]
    if inp.specificity is not None and not inp.specificity.empty:
        sink.add(s, "marker_specificity", "Marker specificity", lambda: plot_specificity(inp.specificity),
                 "Mean log-normalised expression of each type's markers (rows) in the cells assigned to each "
                 "group (columns). A good panel is brightest in the outlined cells.")
    if len(warnings):
        s.tables.append(_table(["flag", "about", "markers to blame", "candidates"],
                               [[r.flag, r.name, r.markers or "–", r.candidates or "–"]
                                for r in warnings.itertuples()], "Warnings"))
    candidates = table[(table["flag"] == "candidates") & (table["candidates"] != "")]
    if len(candidates):
        s.tables.append(_table(["assigned type", "candidate markers (not in the panel)"],
                               [[r.name, r.candidates] for r in candidates.itertuples()], "Candidate markers"))
    return s


def celltypes_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    summary = inp.summary
    counts = summary.counts
    s = _Section("celltypes", "Cell types",
                 "Cells per assigned type. Cells whose top probability is below the threshold are "
                 "'unassigned'. The Cell Ontology term of each type comes from the panel (docs/inputs.md): "
                 "'unknown' where the panel gives none and for unassigned cells, CL:0000000 (cell) for 'other'.")
    s.warnings += summary.model_warnings  # e.g. a type of the panel left out of the fit
    terms = ontology_by_type(inp.adata.obs)
    rows = [[t, int(n), round(100 * n / max(summary.n_cells, 1), 2)] for t, n in counts.items()]
    if terms:
        rows = [row + list(terms.get(str(row[0]), ("–", "–"))) for row in rows]
    s.tables.append(_table(["cell type", "cells", "% of cells"] + (["Cell Ontology term", "label"] if terms else []),
                           rows))
    if not terms:
        s.notes.append("The annotated data have no Cell Ontology columns (annotated before they existed).")
    if OTHER in counts.index:
        s.notes.append(other_note(int(counts[OTHER]), summary.n_cells))
    ancestors = rolled_up(inp.adata.obs)
    if len(ancestors):
        s.notes.append(f"{int(ancestors['cells'].sum())} unassigned cells were labelled at a broader Cell Ontology "
                       "term: no single type reached the threshold, but the types under that term together did "
                       "(their summed probability; --no-rollup turns this off).")
        s.tables.append(_table(list(ancestors.columns),
                               [[term, name, int(n), round(float(median), 3)]
                                for term, name, n, median in ancestors.itertuples(index=False, name=None)],
                               "Labelled at an ancestor term"))
    sink.add(s, "celltype_counts", "Cell-type counts", lambda: plot_celltype_counts(counts),
             "Number (and share) of cells assigned to each type.")
    return s


def other_note(n_other: int, n_cells: int) -> str:
    """One sentence: how many cells went to the model's ``other`` type, and why."""
    return (f"{n_other:,} of {n_cells:,} cells ({100 * n_other / max(n_cells, 1):.1f}%) are '{OTHER}': their "
            "markers fit none of the panel's types better than a cell with no marker up (a type the panel does "
            "not list, or a panel type whose markers these cells barely express); --no-other gives each its "
            "nearest panel type instead.")


def probability_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    summary = inp.summary
    s = _Section("probability", "Assignment probability",
                 "Each cell's highest posterior type probability (gamma). A mass near 1 means confident "
                 "assignments; many cells near 1/number-of-types means the markers do not separate them.")
    probs = inp.adata.obs[PROB_KEY].to_numpy(dtype=float)
    thr = summary.min_prob
    s.tables.append(_table(["statistic", "value"], [
        ["threshold (min_prob)", thr],
        ["cells below threshold (unassigned)", summary.n_unassigned],
        ["% unassigned", round(100 * summary.n_unassigned / max(summary.n_cells, 1), 2)],
        ["median probability", float(np.nanmedian(probs)) if np.isfinite(probs).any() else None],
        ["cells with probability ≥ 0.9", int((probs >= 0.9).sum())],
    ]))
    if not np.isfinite(probs).all():
        s.notes.append(f"{int((~np.isfinite(probs)).sum()):,} cells have no probability (not scored by the model).")
    sink.add(s, "probability", "Assignment probability", lambda: plot_probability_histogram(probs, thr),
             "Distribution of the top assignment probability; dashed line: threshold.")
    return s


def markers_section(inp: ReportInputs, sink: FigureSink, norm: ad.AnnData) -> _Section:
    s = _Section("markers", "Marker expression by assigned type",
                 "Marker genes of the model (grouped by the type they mark) on normalised data "
                 "(normalize_total to 10,000, log1p). Colour: mean expression scaled 0-1 per gene; "
                 "size: fraction of cells expressing. Each type should over-express its own block.")
    drawn = sink.add(s, "marker_expression", "Marker expression",
                     lambda: plot_marker_expression(norm, inp.model.rho, inp.cell_types),
                     "Dot plot of marker genes by assigned type (scanpy).")
    if not drawn and not s.notes:
        s.notes.append("None of the model's marker genes are in the annotated data; no dot plot.")
    return s


def umap_section(inp: ReportInputs, sink: FigureSink, umap: bool, umap_max_cells: int) -> _Section:
    n_obs = inp.adata.n_obs
    s = _Section("umap", "UMAP", "2-D UMAP of the normalised data (all genes; top 2,000 highly variable genes "
                 "when there are more), PCA, 15-nearest-neighbour graph; coloured by assigned type and by "
                 "assignment probability.")
    if not umap:
        s.notes.append("UMAP skipped (--no-umap).")
    elif n_obs < UMAP_MIN_CELLS:
        s.notes.append(f"UMAP skipped: only {n_obs} cells.")
    else:
        norm = normalise(inp.umap_input())  # the counts of the UMAP's cells are not kept
        caption = "Left: assigned type; right: top assignment probability (low-probability cells drawn on top)."
        if norm.n_obs < n_obs:
            caption += (f" Drawn on {norm.n_obs:,} of the {n_obs:,} cells (--umap-max-cells {umap_max_cells:,}): a "
                        "random subsample within each assigned type, every type kept, a rare type with more than "
                        "its share.")

        def draw_umap() -> Figure:
            t0 = time.perf_counter()
            emb = compute_umap(norm, copy=False)
            log.info("UMAP of %d of %d cells in %.1f s", emb.n_obs, n_obs, time.perf_counter() - t0)
            return plot_umap(emb, inp.cell_types)

        sink.add(s, "umap", "UMAP", draw_umap, caption)
    return s


def training_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    hist = inp.history
    s = _Section("training", "Training",
                 "Mean log likelihood per cell on the training and held-out validation cells, per epoch; "
                 "one line per random restart, the selected restart (best final likelihood) in bold.")
    fin = hist.groupby("restart").tail(1)
    s.tables.append(_table(["restart", "epochs", "final train log lik.", "final validation log lik.", "selected"],
                           [[int(r.restart), int(r.epoch), r.train_loglik, r.val_loglik, bool(hist.loc[
                               hist.restart == r.restart, "selected"].any())] for r in fin.itertuples()]))
    if hist.empty:
        s.notes.append("The training history is empty.")
    else:
        sink.add(s, "training", "Training curves", lambda: plot_training_curves(hist),
                 "Log likelihood per cell by epoch; bold: selected restart.")
    return s


def delta_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    s = _Section("delta", "Fitted over-expression (delta)",
                 "delta[g, c]: the fitted log fold over-expression of marker g in type c relative to "
                 "types it does not mark (exp(delta) = fold change). Grey cells: g is not a marker of c.")
    delta, rho = inp.model.delta.copy(), inp.model.rho.copy()
    delta.index = rho.index = relabel_genes(delta.index, display_names(inp.adata))  # symbols for ID-indexed data
    sink.add(s, "delta", "Delta heat map", lambda: plot_delta(delta, rho), "Fitted delta per marker gene and type.")
    return s


def qc_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    qc, adata = inp.qc, inp.adata
    s = _Section("qc", "Quality control", "Cells and genes before and after QC filtering, the thresholds used, "
                 "and the size factors (total counts over all genes, divided by the mean) used by the model.")
    # sample-level warnings (a damaged library: docs/steps.md); the section then comes first
    s.warnings += qc.warnings or []
    s.tables.append(_table(["", "before QC", "after QC"], [
        ["cells", qc.cells_before, qc.cells_after],
        ["genes", qc.genes_before, qc.genes_after],
    ], "Cells and genes"))
    removed = qc_removed_rows(qc.other)
    if removed:
        s.tables.append(_table(["reason", "rule", "cells removed"], removed,
                               "Cells removed by QC, by reason (a cell failing several rules counts in each)"))
    if qc.thresholds:
        s.tables.append(_table(["threshold", "value"], [[k, v] for k, v in flatten(qc.thresholds).items()],
                               "Thresholds"))
    other = {k: v for k, v in qc.other.items() if not (removed and k in ("removed", "rules"))}
    if other:
        s.tables.append(_table(["metric", "value"], [[k, v] for k, v in flatten(other).items()],
                               "Other QC numbers"))
    if SIZE_FACTOR_KEY in adata.obs:
        sink.add(s, "size_factors", "Size factors", lambda: plot_size_factors(adata.obs[SIZE_FACTOR_KEY]),
                 "Distribution of size factors (log scale); dotted line: median.")
    else:
        s.notes.append(f"obs['{SIZE_FACTOR_KEY}'] is not in the annotated data; no size-factor plot.")
    return s


def doublets_section(inp: ReportInputs, sink: FigureSink) -> _Section:
    """The doublet step: what it found, its threshold, the score histograms; its warnings first."""
    d = inp.summary.doublets or {}
    s = _Section("doublets", "Doublets",
                 "Droplets that held two cells, found by Scrublet (scanpy): it simulates doublets from pairs of "
                 "this sample's cells and scores each cell by the share of simulated doublets among its nearest "
                 "neighbours. Predicted doublets are left out of the fit and labelled 'doublet' (CELLxGENE: "
                 "unknown); their probabilities are still written. Two cells of one type look like one cell and "
                 "cannot be found this way (docs/steps.md).")
    s.warnings += inp.summary.doublet_warnings
    s.notes.append(str(d.get("note", "")) + ".")
    threshold = d.get("threshold")
    rows = [["method", d.get("method")], ["expected doublet rate", d.get("expected_rate")],
            ["threshold", None if threshold is None else round(float(threshold), 4)],
            ["predicted doublets", d.get("n_doublets")], ["% of cells", round(100 * float(d.get("rate", 0.0)), 2)]]
    if "detectable" in d:
        rows.append(["simulated doublets above the threshold (detectable share)", round(float(d["detectable"]), 3)])
    if "parts" in d:
        rows.append(["parts the sample was scored in", d["parts"]])
    s.tables.append(_table(["", "value"], rows))
    if "histogram" in d:
        sink.add(s, "doublet_scores", "Doublet scores",
                 lambda: plot_doublet_scores(d["histogram"], None if threshold is None else float(threshold)),
                 "Doublet scores of the cells (filled) and of the simulated doublets (line), each as a share of "
                 "its total; dashed line: the threshold (Otsu's threshold of the simulated doublets' scores, at "
                 "least the score of a cell with --doublet-min-share of simulated doublets among its "
                 "neighbours). Cells to its right are predicted doublets.")
    return s


# the rows of the model table: key of uns[UNS_KEY][MODEL_INFO_KEY] (api.CellAssign.describe, steps.model_info) -> row name
MODEL_ROWS = {"use": "how it made these labels", "file": "model file", "sha256": "SHA-256 of the file",
              "version": "written by cellassign-nf", "panel": "panel", "cell_types": "cell types",
              LEFT_OUT_TYPES_KEY: "panel types left out (no marker gene in the data)",
              "marker_genes": "marker genes", "covariates": "covariate columns", "fitted_cells": "cells it was fitted on"}


def model_section(inp: ReportInputs) -> _Section:
    """Which model made the labels (trained here, or a saved one reused) and how."""
    s = _Section("model", "Model")
    info = model_info_of(inp.adata)
    if not info:
        s.notes.append("The annotated data do not say which model made the labels (annotate --model-info).")
        return s

    def text(value: Any) -> str:
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
        return (", ".join(map(str, values)) or "none") if values is not None else str(value)

    s.tables.append(_table(["model", "value"], [[name, text(info[k])] for k, name in MODEL_ROWS.items() if k in info]))
    if info.get("refit"):
        s.notes.append("A saved model was reused: its cell types are the same in every batch it annotates "
                       "(the same file, by its SHA-256).")
    return s


def parameters_section(inp: ReportInputs) -> _Section:
    s = _Section("parameters", "Parameters")
    train_params = dict(getattr(inp.model, "train_params", {}) or {})
    s.tables.append(_table(["training setting (model file)", "value"], [[k, v] for k, v in flatten(train_params).items()])
                    if train_params else _table(["training setting (model file)", "value"], [["–", "none recorded"]]))
    if inp.params:
        s.tables.append(_table(["run parameter (--params)", "value"], [[k, v] for k, v in flatten(inp.params).items()]))
    else:
        s.notes.append("No --params file was given; only the model's training settings are shown.")
    return s


def versions_section(versions: Mapping[str, str]) -> _Section:
    return _Section("versions", "Software versions", tables=[_table(["software", "version"], list(versions.items()))])
