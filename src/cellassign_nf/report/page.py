"""``make_report``: the per-sample report from the outputs of the earlier steps."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..sampling import stratified_cells
from .base import DEFAULT_UMAP_MAX_CELLS, ModelLike, QCSummary, ReportResult, SampleSummary, _fmt, write_text
from .html import render_html, software_versions
from .load import (
    check_history, check_sample_name, fitted_model, load_annotated_parts, load_fitted_model, load_history, load_model,
    load_params, load_qc_summary,
)
from .multiqc import write_multiqc_files
from .sections import FigureSink, ReportInputs, build_sections
from .summary import model_info_of, summarise

log = logging.getLogger(__name__)


def make_report(
    annotated: str | Path,
    *,
    history: str | Path | pd.DataFrame,
    model: str | Path | ModelLike | None = None,
    qc_summary: str | Path | QCSummary,
    sample: str,
    outdir: str | Path,
    umap: bool = True,
    umap_max_cells: int = DEFAULT_UMAP_MAX_CELLS,
    params: str | Path | Mapping[str, Any] | None = None,
    multiqc: bool = True,
    diagnostics: str | Path | pd.DataFrame | None = None,
    specificity: str | Path | pd.DataFrame | None = None,
) -> ReportResult:
    """Write ``outdir/SAMPLE.report.html``, its PNG figures and the MultiQC files.

    ``history``, ``model``, ``qc_summary``, ``params`` and the marker ``diagnostics`` and
    ``specificity`` tables are paths to the step outputs, or the already loaded objects. Without
    ``model``, what the report draws of the fit (marker genes, delta, training settings) comes from
    the annotated data's description of the model that made its labels (``annotate --model-info``),
    and neither the model file nor torch is loaded. The HTML page is written last.
    """
    sample = check_sample_name(sample)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(outdir, "exists and is not a folder", "Give a folder for --outdir.")
    inp = load_inputs(annotated, history, model, qc_summary, params, sample, umap_max_cells if umap else None)
    add_diagnostics(inp, diagnostics, specificity)
    outdir.mkdir(parents=True, exist_ok=True)
    sink = FigureSink(outdir, sample)
    versions = software_versions()
    sections = build_sections(inp, sink, versions, umap=umap, umap_max_cells=umap_max_cells)
    notes = [n for sec in sections for n in sec.notes]
    mqc_files = write_multiqc_files(inp.summary, outdir) if multiqc else []
    page = render_html(sample, sections, summary_cards(inp.summary, inp.cell_types), versions)
    html_path = write_text(outdir / f"{sample}.report.html", page)
    log.info("report written to %s", html_path)
    return ReportResult(html_path, [f.path for f in sink.figures], mqc_files, inp.summary, notes)


def load_inputs(annotated: Any, history: Any, model: Any, qc_summary: Any, params: Any, sample: str,
                umap_max_cells: int | None = DEFAULT_UMAP_MAX_CELLS) -> ReportInputs:
    """Load what is given as paths, check what is given as objects, and summarise the sample
    (``umap_max_cells`` None: no UMAP, so no cell is read with all its genes)."""
    if model is None:  # the fit as the annotated data describe it
        mdl = fitted_model(model_info_of(annotated), "the annotated AnnData") if _is_anndata(annotated) \
            else load_fitted_model(annotated)
    else:
        mdl = load_model(model) if isinstance(model, (str, Path)) else model
    umap_cells = None if umap_max_cells is None else partial(stratified_cells, max_cells=umap_max_cells)
    if _is_anndata(annotated):
        adata, umap_data = annotated, None
    else:  # the model's marker genes of every cell, all genes of the UMAP's cells: one pass
        adata, umap_data = load_annotated_parts(annotated, [str(g) for g in mdl.rho.index], umap_cells)
    hist = load_history(history) if not isinstance(history, pd.DataFrame) else check_history(history)
    qc = load_qc_summary(qc_summary) if isinstance(qc_summary, (str, Path)) else qc_summary
    run_params = load_params(params) if isinstance(params, (str, Path)) or params is None else dict(params)
    cell_types = [str(t) for t in mdl.cell_types]
    summary = summarise(sample, adata, hist, qc, cell_types)
    return ReportInputs(adata, hist, mdl, qc, run_params, cell_types, summary, umap_cells=umap_cells,
                        umap_data=umap_data)


def add_diagnostics(inp: ReportInputs, diagnostics: Any, specificity: Any) -> None:
    """Load the marker diagnostics tables (when given) and count their warnings."""
    from ..diagnostics import read_diagnostics, read_specificity

    if diagnostics is not None:
        inp.diagnostics = diagnostics if isinstance(diagnostics, pd.DataFrame) else read_diagnostics(diagnostics)
        inp.summary.marker_warnings = int((inp.diagnostics["severity"] == "warning").sum())
    if specificity is not None:
        inp.specificity = specificity if isinstance(specificity, pd.DataFrame) else read_specificity(specificity)


def summary_cards(summary: SampleSummary, cell_types: list[str]) -> list[tuple[str, str]]:
    """The numbers shown first, as cards at the top of the page."""
    cards = [
        ("cells after QC", f"{summary.n_cells:,}"),
        ("assigned", f"{summary.pct_assigned:.1f}%"),
        ("most frequent type", summary.top_type or "–"),
        ("cell types in model", str(len(cell_types))),
        ("final validation log lik.", _fmt(summary.final_val_loglik)),
    ]
    if summary.doublets is not None:
        cards.append(("doublets", str(summary.doublets.get("rate_text", "–"))))  # the step's own words
    if summary.marker_warnings is not None:
        cards.append(("marker warnings", str(summary.marker_warnings)))
    if summary.qc.warnings is not None:  # older QC summaries have none
        cards.append(("QC warnings", str(len(summary.qc.warnings))))
    if summary.left_out_types:  # the panel's types without a marker gene in these data
        cards.append(("types left out of the fit", ", ".join(summary.left_out_types)))
    return cards


def _is_anndata(obj: Any) -> bool:
    return type(obj).__name__ == "AnnData"
