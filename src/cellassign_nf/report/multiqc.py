"""MultiQC custom-content files of one sample: general statistics, cell-type counts, training
curve and QC table. Each file carries a fixed section ``id``, so MultiQC merges all samples into
one section."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import COUNTS_SUFFIX, SampleSummary, _is_number, flatten, write_text


def write_multiqc_files(summary: SampleSummary, outdir: str | Path) -> list[Path]:
    """Write the MultiQC custom-content files of one sample into ``outdir``.

    * ``NAME_cellassign_general_stats_mqc.yaml``: general statistics row (cells in, cells after
      QC, % assigned, most frequent type, final validation log likelihood, marker warnings, QC
      warnings, the panel's types left out of the fit);
    * ``NAME_celltype_counts_mqc.tsv``: cells per type (stacked bar graph; also read by
      ``cohort_table``);
    * ``NAME_cellassign_training_mqc.yaml``: validation log likelihood by epoch of the selected
      restart (line graph);
    * ``NAME_cellassign_qc_mqc.yaml``: QC summary (table), with the text of the QC warnings.

    Each file carries a fixed section ``id``, so MultiQC merges all samples into one section.
    """
    outdir = Path(outdir)
    s = summary.sample
    written = [
        write_text(outdir / f"{s}_cellassign_general_stats_mqc.yaml", _yaml_dump(general_stats(summary))),
        write_text(outdir / f"{s}{COUNTS_SUFFIX}", celltype_counts_tsv(summary)),
    ]
    if not summary.val_curve.empty:
        written.append(write_text(outdir / f"{s}_cellassign_training_mqc.yaml", _yaml_dump(training_curve(summary))))
    written.append(write_text(outdir / f"{s}_cellassign_qc_mqc.yaml", _yaml_dump(qc_table(summary))))
    return written


def general_stats(summary: SampleSummary) -> dict[str, Any]:
    """The General Statistics row: the numbers present, each with its column header."""
    gs_data: dict[str, Any] = {
        "cells_in": summary.qc.cells_before,
        "cells_after_qc": summary.qc.cells_after,
        "pct_assigned": round(summary.pct_assigned, 2),
        "pct_doublets": (round(100 * float(summary.doublets["rate"]), 2)
                         if summary.doublets and summary.doublets.get("method") == "scrublet" else None),
        "top_celltype": summary.top_type,
        "final_val_loglik": None if summary.final_val_loglik is None else round(summary.final_val_loglik, 4),
        "marker_warnings": summary.marker_warnings,
        "qc_warnings": None if summary.qc.warnings is None else len(summary.qc.warnings) + len(summary.doublet_warnings),
        "types_left_out": ", ".join(summary.left_out_types) or None,
    }
    gs_headers = [
        {"cells_in": {"title": "Cells in", "description": "Cells before QC filtering", "format": "{:,.0f}",
                      "scale": "Blues", "min": 0}},
        {"cells_after_qc": {"title": "Cells after QC", "description": "Cells that passed QC (annotated)",
                            "format": "{:,.0f}", "scale": "Greens", "min": 0}},
        {"pct_assigned": {"title": "% assigned", "description": "Cells with top probability at or above the "
                          "threshold (not 'unassigned')", "suffix": "%", "min": 0, "max": 100,
                          "scale": "RdYlGn", "format": "{:,.1f}"}},
        {"pct_doublets": {"title": "% doublets", "description": "Cells predicted to be doublets (Scrublet), left "
                          "out of the fit and labelled 'doublet'", "suffix": "%", "min": 0, "scale": "OrRd",
                          "format": "{:,.1f}"}},
        {"top_celltype": {"title": "Top type", "description": "Most frequent assigned cell type"}},
        {"final_val_loglik": {"title": "Val. log lik.", "description": "Final validation log likelihood per "
                              "cell of the selected restart", "format": "{:,.3f}", "scale": "Purples"}},
        {"marker_warnings": {"title": "Marker warnings", "description": "Warnings of the marker diagnostics "
                             "(see the sample's report and marker_diagnostics.tsv)", "format": "{:,.0f}",
                             "scale": "OrRd", "min": 0}},
        {"qc_warnings": {"title": "QC warnings", "description": "Sample-level QC warnings: most cells removed, or "
                         "a high median % mitochondrial counts (a damaged library), or far more doublets than expected (the "
                         "text is in the CellAssign: QC table and the sample's report)", "format": "{:,.0f}", "scale": "OrRd", "min": 0}},
        {"types_left_out": {"title": "Types left out", "description": "Cell types of the panel with no marker gene "
                            "in these data, left out of the fit: no cell is labelled with them (the warning is in "
                            "the sample's report and pipeline_info/samples.tsv)"}},
    ]
    gs_data = {k: v for k, v in gs_data.items() if v is not None}
    gs_headers = [h for h in gs_headers if next(iter(h)) in gs_data]
    return {
        "id": "cellassign_general_stats",
        "plot_type": "generalstats",
        "namespace": "CellAssign",
        "pconfig": gs_headers,
        "data": {summary.sample: gs_data},
    }


def celltype_counts_tsv(summary: SampleSummary) -> str:
    """Cells per type as a bar graph: the section header as ``#`` comment lines, then a table."""
    header = {
        "id": "cellassign_celltype_counts",
        "section_name": "CellAssign: cell types",
        "description": "Cells assigned to each cell type per sample ('unassigned': top probability below "
                       "the threshold). Switch between counts and percentages with the buttons.",
        "plot_type": "bargraph",
        "pconfig": {
            "id": "cellassign_celltype_counts_plot",
            "title": "CellAssign: cell-type proportions",
            "ylab": "Cells",
            "cpswitch_counts_label": "Cells",
            "cpswitch_c_active": False,
        },
    }
    lines = ["# " + line for line in _yaml_dump(header).splitlines()]
    lines.append("\t".join(["Sample", *(_tsv_cell(t) for t in summary.counts.index)]))
    lines.append("\t".join([_tsv_cell(summary.sample), *(str(int(n)) for n in summary.counts.values)]))
    return "\n".join(lines) + "\n"


def training_curve(summary: SampleSummary) -> dict[str, Any]:
    """The validation log likelihood by epoch of the selected restart, as a line graph."""
    return {
        "id": "cellassign_training",
        "section_name": "CellAssign: training",
        "description": "Validation log likelihood per cell by epoch, for the restart selected in each "
                       "sample. Curves should rise and flatten; a still-rising curve at the last epoch "
                       "suggests more epochs.",
        "plot_type": "linegraph",
        "pconfig": {
            "id": "cellassign_training_plot",
            "title": "CellAssign: validation log likelihood (selected restart)",
            "xlab": "Epoch",
            "ylab": "Validation log likelihood per cell",
            "x_decimals": False,
        },
        "data": {summary.sample: {int(e): round(float(v), 5) for e, v in summary.val_curve.items()}},
    }


def qc_table(summary: SampleSummary) -> dict[str, Any]:
    """The QC numbers and thresholds of the sample, as a table row."""
    qc = summary.qc
    qc_row: dict[str, Any] = {
        "cells_before": qc.cells_before,
        "cells_after": qc.cells_after,
        "genes_before": qc.genes_before,
        "genes_after": qc.genes_after,
    }
    for k, v in flatten(qc.other).items():  # e.g. cells removed per filter
        if _is_number(v):
            qc_row[k] = v
    for k, v in flatten(qc.thresholds).items():
        if _is_number(v) or isinstance(v, str):
            qc_row[k] = v
    if summary.doublets is not None:
        qc_row["doublets"] = summary.doublets.get("rate_text")
    if qc.warnings is not None:  # older QC summaries have none
        qc_row["qc_warnings"] = " | ".join(qc.warnings + summary.doublet_warnings) or "none"
    qc_row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in qc_row.items() if v is not None}
    headers: dict[str, dict[str, Any]] = {
        "cells_before": {"title": "Cells before", "format": "{:,.0f}"},
        "cells_after": {"title": "Cells after", "format": "{:,.0f}"},
        "genes_before": {"title": "Genes before", "format": "{:,.0f}"},
        "genes_after": {"title": "Genes after", "format": "{:,.0f}"},
        "doublets": {"title": "Doublets", "description": "Share of cells predicted to be doublets (Scrublet)"},
        "qc_warnings": {"title": "QC warnings", "description": "Sample-level QC warnings (a damaged library, far "
                        "more doublets than expected), separated by |"},
    }
    return {
        "id": "cellassign_qc",
        "section_name": "CellAssign: QC",
        "description": "Cells and genes before and after QC filtering, the thresholds used, the predicted doublets, "
                       "and the sample-level QC warnings (a library whose majority is damaged, or far more doublets "
                       "than expected).",
        "plot_type": "table",
        "pconfig": {"id": "cellassign_qc_table", "title": "CellAssign: QC summary", "col1_header": "Sample"},
        "headers": {k: headers.get(k, {"title": k}) for k in qc_row},
        "data": {summary.sample: qc_row},
    }


def _yaml_dump(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _tsv_cell(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in "\t\n\r"):
        raise InputError(None, f"name '{text}' contains a tab or newline", "Rename the cell type or sample.")
    return text
