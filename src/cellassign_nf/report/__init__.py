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

from .base import (
    CELLTYPE_KEY, COUNTS_SUFFIX, DEFAULT_UMAP_MAX_CELLS, DPI, HISTORY_COLUMNS, HVG_THRESHOLD, PREDICTIONS_SUFFIX,
    PROB_KEY, PROBS_KEY, SAMPLE_NAME_RE, SIZE_FACTOR_KEY, UMAP_MIN_CELLS, UNASSIGNED, UNASSIGNED_COLOUR, ModelLike,
    QCSummary, ReportFigure, ReportResult, SampleSummary, flatten, write_bytes, write_text,
)
from .cohort import cohort_table, read_counts_mqc, read_predictions_counts, write_cohort_table
from .figures import (
    compute_umap, figure_png, markers_by_type, normalise, plot_celltype_counts, plot_delta, plot_marker_expression,
    plot_probability_histogram, plot_size_factors, plot_specificity, plot_training_curves, plot_umap, type_colours,
)
from .html import render_html, software_versions
from .load import (
    check_history, check_sample_name, load_annotated, load_history, load_model, load_params, load_qc_summary,
    parse_qc_summary,
)
from .multiqc import write_multiqc_files
from .page import make_report
from .summary import celltype_counts, min_prob_of, summarise

__all__ = [
    "ModelLike", "QCSummary", "ReportResult", "SampleSummary", "celltype_counts", "cohort_table",
    "compute_umap", "load_annotated", "load_history", "load_model", "load_params", "load_qc_summary",
    "make_report", "parse_qc_summary", "plot_celltype_counts", "plot_delta", "plot_marker_expression",
    "plot_probability_histogram", "plot_size_factors", "plot_specificity", "plot_training_curves", "plot_umap", "read_counts_mqc",
    "read_predictions_counts", "summarise", "write_cohort_table", "write_multiqc_files",
]
