"""Per-sample HTML report, MultiQC custom-content files and the cohort cell-type table.

``make_report`` reads the outputs of the earlier steps (annotated h5ad, training history, model
file, QC summary) and writes into ``outdir``:

* ``NAME.report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS,
  no JavaScript), written last, so its presence means the report is complete;
* ``NAME_<figure>.png``: every figure of the page as a PNG file;
* ``NAME_*_mqc.*``: MultiQC custom-content files (see ``write_multiqc_files``).

``cohort_table`` turns per-sample cell-type counts (``NAME_celltype_counts_mqc.tsv``, or
predictions TSVs) into one samples x cell types table.

The package, one module per thing: ``base`` (names, records, small helpers), ``load`` (reading
and checking the inputs), ``summary`` (per-sample numbers), ``figures`` (one function per
figure, each returning a matplotlib figure, reusable from a notebook), ``sections`` (the page's
sections), ``template`` and ``html`` (the page), ``page`` (``make_report``), ``multiqc`` and
``cohort``. Everything public is importable from ``cellassign_nf.report``.
"""
from __future__ import annotations

from importlib import import_module

# name -> the module that defines it, imported on first use: the cohort table starts without
# matplotlib and scanpy, which only the page's figures need
_EXPORTS = {
    **dict.fromkeys([
        "CELLTYPE_KEY", "COUNTS_SUFFIX", "DEFAULT_UMAP_MAX_CELLS", "DPI", "HISTORY_COLUMNS", "HVG_THRESHOLD",
        "PREDICTIONS_SUFFIX", "PROB_KEY", "PROBS_KEY", "SAMPLE_NAME_RE", "SIZE_FACTOR_KEY", "UMAP_EPOCHS",
        "UMAP_MIN_CELLS", "UNASSIGNED", "UNASSIGNED_COLOUR", "ModelLike", "QCSummary", "ReportFigure",
        "ReportResult", "SampleSummary", "flatten", "write_bytes", "write_text"], "base"),
    **dict.fromkeys(["cohort_table", "read_counts_mqc", "read_predictions_counts", "write_cohort_table"], "cohort"),
    **dict.fromkeys([
        "compute_umap", "figure_png", "markers_by_type", "normalise", "plot_celltype_counts", "plot_delta",
        "plot_marker_expression", "plot_probability_histogram", "plot_size_factors", "plot_specificity",
        "plot_training_curves", "plot_umap", "type_colours"], "figures"),
    **dict.fromkeys(["render_html", "software_versions"], "html"),
    **dict.fromkeys([
        "check_history", "check_sample_name", "load_annotated", "load_annotated_parts", "load_history",
        "load_model", "load_params", "load_qc_summary", "parse_qc_summary"], "load"),
    "write_multiqc_files": "multiqc",
    "make_report": "page",
    **dict.fromkeys(["celltype_counts", "min_prob_of", "summarise"], "summary"),
}

__all__ = [
    "ModelLike", "QCSummary", "ReportResult", "SampleSummary", "celltype_counts", "cohort_table",
    "compute_umap", "load_annotated", "load_history", "load_model", "load_params", "load_qc_summary",
    "make_report", "parse_qc_summary", "plot_celltype_counts", "plot_delta", "plot_marker_expression",
    "plot_probability_histogram", "plot_size_factors", "plot_specificity", "plot_training_curves", "plot_umap", "read_counts_mqc",
    "read_predictions_counts", "summarise", "write_cohort_table", "write_multiqc_files",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cellassign_nf.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_EXPORTS)
