"""Click commands ``check-markers`` and ``diagnose`` (registered in ``cellassign_nf.cli:main``):
the marker diagnostics of docs/markers.md. Findings are warnings: the exit code stays 0."""
from __future__ import annotations

import click

from .settings import DiagnosticThresholds


def diagnostic_options(f):
    """The thresholds of the diagnostics, as options (defaults: ``DiagnosticThresholds``)."""
    d = DiagnosticThresholds()
    for opt in reversed([
        click.option("--min-detection", type=click.FloatRange(0, 1), default=d.min_detection,
                     help="Flag a marker detected in a smaller share of cells (uninformative)."),
        click.option("--max-detection", type=click.FloatRange(0, 1), default=d.max_detection,
                     help="Flag a marker detected in a larger share of cells when it also varies less than "
                          "--min-fold (not specific)."),
        click.option("--min-fold", type=click.FloatRange(min=1), default=d.min_fold,
                     help="Spread (95th percentile / median, or median / 5th percentile) below which a marker "
                          "detected everywhere is not specific."),
        click.option("--min-markers", type=click.IntRange(min=1), default=d.min_markers,
                     help="Flag a type with fewer usable markers."),
        click.option("--max-overlap", type=click.FloatRange(0, 1), default=d.max_overlap,
                     help="Flag two types whose usable markers overlap this much (Jaccard index)."),
        click.option("--min-type-fraction", type=click.FloatRange(0, 1), default=d.min_type_fraction,
                     help="After the fit, a type with a smaller share of the cells received (almost) none."),
        click.option("--min-group-cells", type=click.IntRange(min=1), default=d.min_group_cells,
                     help="... as does a type with fewer cells; smaller groups are not compared."),
        click.option("--high-detection", type=click.FloatRange(0, 1), default=d.high_detection,
                     help="A marker is high in a group when detected in this share of its cells ..."),
        click.option("--min-logfc", type=click.FloatRange(min=0), default=d.min_logfc,
                     help="... and this much above its median over the groups (log1p of counts per 10,000); "
                          "a type's own markers must exceed another type's cells by this much."),
        click.option("--max-unassigned", type=click.FloatRange(0, 1), default=d.max_unassigned,
                     help="Flag a larger share of unassigned cells."),
        click.option("--n-candidates", type=click.IntRange(min=0), default=d.n_candidates,
                     help="Candidate markers listed per type or flagged pair."),
    ]):
        f = opt(f)
    return f


def thresholds_of(kw: dict) -> DiagnosticThresholds:
    """The ``DiagnosticThresholds`` of the options of :func:`diagnostic_options` in ``kw``."""
    return DiagnosticThresholds(**{k: kw[k] for k in DiagnosticThresholds.__dataclass_fields__})


def echo_summary(diagnostics, output) -> None:
    """The one summary line on stderr, unwrapped: how many warnings, of what, and where the TSV is."""
    click.echo(f"{diagnostics.summary()}; details in {output}", err=True)


@click.command("check-markers", short_help="Check a marker panel against counts before training.")
@click.argument("counts", type=click.Path())
@click.option("--markers", "-m", required=True, type=click.Path(), help="Marker file or bundled panel name.")
@click.option("--output", "-o", required=True, type=click.Path(), help="Diagnostics TSV.")
@click.option("--layer", default=None, help="h5ad: layer holding raw counts; X (default) or raw.")
@diagnostic_options
def check_markers_command(counts, markers, output, layer, **kw):
    """Pre-flight marker diagnostics of COUNTS (any input `qc` reads): markers missing from the
    data, detected in almost no cells or in almost all, types with too few usable markers, and
    pairs of types whose markers overlap heavily. Writes a TSV (level, name, flag, severity,
    message, markers, candidates); see docs/markers.md.

    \b
    Example:
      cellassign-nf check-markers counts.h5 --markers markers.csv -o diagnostics.tsv
    """
    from . import steps

    diag = steps.check_panel(counts, markers, output, layer=layer, thresholds=thresholds_of(kw))
    echo_summary(diag, output)


@click.command("diagnose", short_help="Marker diagnostics after annotation (flags, specificity, candidates).")
@click.argument("annotated", type=click.Path())
@click.option("--markers", "-m", required=True, type=click.Path(), help="Marker file or bundled panel name.")
@click.option("--output", "-o", required=True, type=click.Path(), help="Diagnostics TSV.")
@click.option("--specificity", required=True, type=click.Path(),
              help="Specificity TSV: types x assigned groups, mean expression of each type's markers.")
@diagnostic_options
def diagnose_command(annotated, markers, output, specificity, **kw):
    """All marker diagnostics of ANNOTATED (the h5ad of `annotate`): the pre-flight checks, plus a
    type that received (almost) no cells while its markers are high in another group (merged),
    a type whose markers are no higher in its own cells (not specific), a large unassigned share,
    and candidate markers from the data. See docs/markers.md.

    \b
    Example:
      cellassign-nf diagnose s1.annotated.h5ad --markers markers.csv -o s1.marker_diagnostics.tsv \\
          --specificity s1.marker_specificity.tsv
    """
    from . import steps

    diag = steps.diagnose(annotated, markers, output, specificity, thresholds=thresholds_of(kw))
    echo_summary(diag, output)
