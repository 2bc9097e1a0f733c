"""Click commands ``check-markers`` and ``diagnose`` (registered in ``cellassign_nf.cli:main``):
the marker diagnostics of docs/markers.md. Findings are warnings: the exit code stays 0."""
from __future__ import annotations

import click

from .cli_options import options_of, settings_of
from .settings import DiagnosticThresholds


diagnostic_options = options_of(DiagnosticThresholds)  # the thresholds of the diagnostics, as options


def thresholds_of(kw: dict) -> DiagnosticThresholds:
    """The ``DiagnosticThresholds`` of the options of :data:`diagnostic_options` in ``kw``."""
    return settings_of(DiagnosticThresholds, kw)


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

    diag = steps.check_markers(counts, markers, output, layer=layer, thresholds=thresholds_of(kw))
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
