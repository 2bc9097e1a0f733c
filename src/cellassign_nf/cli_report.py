"""Click commands ``report`` and ``cohort-table`` (registered in ``cellassign_nf.cli:main``).

Bad input raises :class:`cellassign_nf.errors.InputError`; the main group turns it into one
``error: <file>: <problem>. <fix>`` line and exit code 2.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from .cli_options import options_of
from .errors import InputError
from .settings import ReportSettings

log = logging.getLogger(__name__)

_PATH = click.Path(path_type=Path, dir_okay=True, file_okay=True)


@click.command(
    "report",
    short_help="Per-sample HTML report and MultiQC files.",
    epilog="Writes DIR/NAME.report.html (self-contained), DIR/NAME_*.png and DIR/NAME_*_mqc.* "
           "(MultiQC custom content). See docs/report.md.",
)
@click.argument("annotated", type=_PATH)
@click.option("--history", "history", type=_PATH, required=True, help="history.tsv of `cellassign-nf train`.")
@click.option("--model", "model", type=_PATH, default=None,
              help="Model file of `cellassign-nf train`; default: the fitted parameters that ANNOTATED carries "
                   "(annotate --model-info), read without loading torch.")
@click.option("--qc-summary", "qc_summary", type=_PATH, required=True,
              help="SAMPLE.qc_summary.json of `cellassign-nf qc`.")
@click.option("--sample", "sample", required=True, help="Sample name (used in file names and MultiQC).")
@click.option("--outdir", "outdir", type=_PATH, required=True, help="Folder for the report files.")
@click.option("--no-umap", "no_umap", is_flag=True, help="Skip the UMAP (the slowest part).")
@options_of(ReportSettings)
@click.option("--params", "params", type=_PATH, default=None,
              help="JSON of the run's parameters, shown in the report.")
@click.option("--diagnostics", "diagnostics", type=_PATH, default=None,
              help="SAMPLE.marker_diagnostics.tsv of `cellassign-nf diagnose`: the 'Marker diagnostics' section.")
@click.option("--specificity", "specificity", type=_PATH, default=None,
              help="SAMPLE.marker_specificity.tsv of `cellassign-nf diagnose`: its heat map.")
def report_command(annotated: Path, history: Path, model: Path | None, qc_summary: Path, sample: str, outdir: Path,
                   no_umap: bool, umap_max_cells: int, params: Path | None, diagnostics: Path | None,
                   specificity: Path | None) -> None:
    """Per-sample HTML report of ANNOTATED (the h5ad of `cellassign-nf annotate`) and MultiQC files.

    \b
    Example:
      cellassign-nf report s1.annotated.h5ad --history s1.history.tsv \\
          --qc-summary s1.qc_summary.json --sample s1 --outdir s1_report
    """
    from .report import make_report

    result = make_report(annotated, history=history, model=model, qc_summary=qc_summary, sample=sample,
                         outdir=outdir, umap=not no_umap, umap_max_cells=umap_max_cells, params=params,
                         diagnostics=diagnostics, specificity=specificity)
    for note in result.notes:
        log.info("%s", note)
    s = result.summary
    log.info("%s: %d cells, %.1f%% assigned, most frequent type %s", s.sample, s.n_cells, s.pct_assigned,
             s.top_type or "none")
    click.echo(str(result.html))


@click.command(
    "cohort-table",
    short_help="Samples x cell types counts table.",
    epilog="Each INPUT is a report folder (its *_celltype_counts_mqc.tsv files), a "
           "NAME_celltype_counts_mqc.tsv file, or a NAME.predictions.tsv file.",
)
@click.argument("inputs", nargs=-1, type=_PATH)
@click.option("-o", "--output", "output", type=_PATH, required=True, help="Output TSV (sample, then one column per type).")
def cohort_table_command(inputs: tuple[Path, ...], output: Path) -> None:
    """Cells per assigned type for every sample, in one table (samples x cell types).

    \b
    Example:
      cellassign-nf cohort-table s1_report/ s2_report/ -o celltype_counts.tsv
    """
    from .report import cohort_table, write_cohort_table

    if not inputs:
        raise InputError(None, "no inputs given",
                         "Give report folders, *_celltype_counts_mqc.tsv or *.predictions.tsv files.")
    table = cohort_table(list(inputs))
    write_cohort_table(table, output)
    log.info("%d samples x %d cell types written to %s", table.shape[0], table.shape[1], output)
