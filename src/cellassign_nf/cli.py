"""The ``cellassign-nf`` command: one subcommand per pipeline step (docs/steps.md)."""
from __future__ import annotations

import gc
import logging
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .cli_diagnostics import diagnostic_options, echo_summary, thresholds_of
from .errors import InputError
from .cli_options import options_of, settings_of
from .keys import SIZE_FACTOR_KEY
from .settings import (
    AnnotateSettings, DoubletSettings, ModelSettings, PanelSettings, QCThresholds, RefitSettings, TrainSettings,
)

log = logging.getLogger("cellassign_nf")


OUT_OF_MEMORY = 137  # 128 + SIGKILL, as when the kernel or a scheduler kills a process for memory


BROKEN_PIPE = 141  # 128 + SIGPIPE, as a command whose reader went away (`... | head`) ends


class _Group(click.Group):
    """Turns a failure into one line on stderr and an exit status, instead of a stack trace: 2 bad
    input, 3 a diverged fit, 137 out of memory, 1 anything unexpected (its traceback in a file);
    output cut short by its reader (``| head``) ends quietly with 141."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # the reader closed the pipe: nothing to report; stdout points at /dev/null so that
            # Python's own flush at exit does not fail on the closed pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(BROKEN_PIPE)
        except InputError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except FloatingPointError as exc:
            click.echo(f"error: training diverged: {exc}", err=True)
            sys.exit(3)
        except MemoryError:
            # the exit status of a task killed for memory, which the pipeline retries with more
            click.echo(f"error: {ctx.invoked_subcommand or 'cellassign-nf'} ran out of memory.", err=True)
            sys.exit(OUT_OF_MEMORY)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - unexpected: one line here, the traceback in a file
            step = ctx.invoked_subcommand or "cellassign-nf"
            cause = (str(exc).strip().splitlines() or [""])[0]
            where = _write_traceback(step)
            click.echo(f"error: {step} failed unexpectedly: {type(exc).__name__}: {cause}. The traceback is in "
                       f"{where}; please report it with that file.", err=True)
            if log.isEnabledFor(logging.DEBUG):
                log.exception("traceback")
            sys.exit(1)


ERROR_LOG = "cellassign-nf.error.log"


def _write_traceback(step: str) -> Path:
    """Append the current exception's traceback to ``cellassign-nf.error.log`` in the working
    folder (a Nextflow task's own folder), or in the temporary folder if that is not writable."""
    import tempfile
    import traceback

    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cellassign-nf {__version__} {step}\n{traceback.format_exc()}"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        path = folder / ERROR_LOG
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
            return path.resolve()
        except OSError:
            continue
    return Path(ERROR_LOG)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_path=verbose, show_time=True, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("cellassign_nf")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("anndata", "scanpy", "numba", "matplotlib", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="cellassign-nf")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Debug messages, including every training epoch.")
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """CellAssign cell-type annotation of single-cell RNA-seq data.

    \b
    Quick start (all steps for one sample):
      cellassign-nf run assets/demo/sample1.h5ad --markers assets/demo/markers.csv --outdir results
    """
    _setup_logging(quiet, verbose)
    ctx.obj = {"quiet": quiet}


# --- shared options ---------------------------------------------------------------------------------
def qc_options(f):
    """The QC thresholds (``QCThresholds``) and the layer to read."""
    f = options_of(QCThresholds)(f)
    return click.option("--layer", default=None,
                        help="h5ad: layer holding raw counts; X for the main matrix (default), raw for .raw.")(f)


threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads for PyTorch (default: all cores; set to the task's CPUs in pipelines).")


def train_options(f):
    """The marker panel, the types beyond it, the model's and the fit's options (``PanelSettings``,
    ``ModelSettings``, ``TrainSettings``)."""
    f = threads_option(f)
    f = options_of(PanelSettings, ModelSettings, TrainSettings)(f)
    for opt in reversed([
        click.option("--markers", "-m", required=True, type=click.Path(),
                     help="Markers: CSV/TSV binary genes x types matrix, YAML/JSON {type: [genes]}, .txt 'type:g1,g2', "
                          "or a bundled panel's name (cellassign-nf markers list)."),
        click.option("--size-factor-key", default=SIZE_FACTOR_KEY,
                     help="obs column with size factors; computed from all genes when absent."),
    ]):
        f = opt(f)
    return f


doublet_table_option = click.option(
    "--doublet-table", "doublet_tables", multiple=True, type=click.Path(),
    help="Doublet table of `cellassign-nf doublets` (one per sample; repeat for a cohort): predicted doublets are "
         "left out of the fit and still get probabilities.")


def _settings(ctx: click.Context, kw: dict) -> TrainSettings:
    if kw["device"] == "cuda":  # a GPU was asked for: fail in one line before reading any data
        from .train import resolve_device

        resolve_device("cuda")
    if kw.get("threads"):
        import torch

        torch.set_num_threads(kw["threads"])
    return settings_of(TrainSettings, kw, progress=not ctx.obj["quiet"])


def _covariates(value: str | None) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()] if value else []


# --- steps ----------------------------------------------------------------------------------------
@main.command()
@click.argument("input", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Filtered h5ad.")
@click.option("--metrics", required=True, type=click.Path(), help="Per-cell QC metrics TSV.")
@click.option("--summary", required=True, type=click.Path(), help="QC summary JSON.")
@click.option("--sample", default=None, help="Sample name (default: file name).")
@click.option("--obs", "obs_values", multiple=True, metavar="KEY=VALUE",
              help="Set obs[KEY] = VALUE for all cells (sample-level covariates); repeatable.")
@qc_options
def qc(input, output, metrics, summary, sample, obs_values, layer, **kw):
    """Compute QC metrics (scanpy) and filter cells.

    By default a cell is removed when it is an outlier of its sample: log total counts or log
    detected genes more than --nmads MADs from the median, or % mitochondrial counts more than
    --nmads-mito MADs above it. The fixed thresholds (--min-counts, --min-genes, --max-mito-pct)
    apply as well. The summary JSON and the metrics TSV (column 'failed') say which rule removed
    which cells.

    \b
    Example:
      cellassign-nf qc counts.h5 -o s1.qc.h5ad --metrics s1.qc_metrics.tsv --summary s1.qc_summary.json --sample s1
    """
    from . import steps

    pairs = {}
    for item in obs_values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--obs")
        pairs[key.strip()] = value
    steps.qc(input, output, metrics, summary, sample=sample, layer=layer, thresholds=settings_of(QCThresholds, kw),
             obs_values=pairs)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path())
def merge(inputs, output):
    """Merge per-sample h5ad files into one (cohort mode); cells become SAMPLE:BARCODE.

    \b
    Example:
      cellassign-nf merge s1.qc.h5ad s2.qc.h5ad -o cohort.h5ad
    """
    from . import steps

    steps.merge(inputs, output)


@main.command("size-factors")
@click.argument("input", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Size factors TSV (cell, KEY).")
@click.option("--key", default=SIZE_FACTOR_KEY, help="Name of the table's column.")
def size_factors_cmd(input, output, key):
    """Size factors from all genes: total counts / mean total counts, as a table.

    \b
    Example:
      cellassign-nf size-factors s1.qc.h5ad -o s1.size_factors.tsv
    """
    from . import steps

    steps.size_factors(input, output, key)


@main.command()
@click.argument("input", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(),
              help="Doublet table TSV (cell, doublet_score, predicted_doublet, sample).")
@click.option("--summary", required=True, type=click.Path(),
              help="Summary JSON (threshold, rate, score histograms, warnings).")
@options_of(DoubletSettings)
@click.option("--seed", default=0, help="Random seed of the simulated doublets.")
def doublets(input, output, summary, seed, **kw):
    """Find doublets (droplets holding two cells) in one sample with Scrublet (scanpy).

    Run it on each sample after QC, before any merge: doublets exist only within one library.

    \b
    Example:
      cellassign-nf doublets s1.qc.h5ad -o s1.doublets.tsv --summary s1.doublet_summary.json
    """
    from . import steps

    steps.doublets(input, output, summary, settings_of(DoubletSettings, kw), seed=seed)


@main.command()
@click.argument("input", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Design matrix TSV.")
@click.option("--covariates", default=None, help="Comma-separated obs columns, e.g. batch,donor.")
@click.option("--formula", default=None, help="A formula instead, e.g. '~ batch + donor'.")
def design(input, output, covariates, formula):
    """Design matrix of covariates (categoricals one-hot without the reference level, numerics standardised).

    \b
    Example:
      cellassign-nf design cohort.h5ad -o design.tsv --formula '~ sample + batch'
    """
    from . import steps

    steps.design(input, output, _covariates(covariates), formula)


@main.command()
@click.argument("input", type=click.Path())
@train_options
@click.option("--output", "-o", required=True, type=click.Path(), help="Model file.")
@click.option("--history", required=True, type=click.Path(), help="Training history TSV.")
@click.option("--probabilities", required=True, type=click.Path(), help="Probabilities TSV (cells x types).")
@click.option("--design", "design_path", default=None, type=click.Path(), help="Design matrix TSV.")
@click.option("--size-factors", "size_factors_path", default=None, type=click.Path(),
              help="Size factors TSV of `cellassign-nf size-factors` (default: the obs column, else from all genes).")
@click.option("--layer", default=None, help="Layer holding raw counts; X (the default) is the main matrix.")
@click.option("--model-info", "info_out", default=None, type=click.Path(),
              help="Write the model's description (file, sha256, panel, types) as JSON, for `annotate --model-info`.")
@doublet_table_option
@click.pass_context
def train(ctx, input, markers, output, history, probabilities, design_path, size_factors_path, size_factor_key,
          layer, other, info_out, doublet_tables, **kw):
    """Fit CellAssign by minibatch EM (CPU or GPU).

    A cell type of the panel none of whose marker genes the data measure is left out of the fit,
    with one warning naming it (also in --model-info); --require-every-type stops instead.

    \b
    Example:
      cellassign-nf train s1.qc.h5ad --markers markers.csv --size-factors s1.size_factors.tsv \\
          -o s1.model.pt --history s1.history.tsv --probabilities s1.probabilities.tsv
    """
    from . import steps

    steps.train(input, markers, output, history, probabilities, design_path=design_path,
                size_factors_path=size_factors_path, size_factor_key=size_factor_key, layer=layer, other=other,
                model_settings=settings_of(ModelSettings, kw), settings=_settings(ctx, kw), info_out=info_out,
                doublets_paths=doublet_tables)


@main.command()
@click.argument("input", type=click.Path())
@click.option("--model", "model_path", required=True, type=click.Path(),
              help="A saved model (.model.pt of `cellassign-nf train`, an earlier run or CellAssign.save).")
@options_of(RefitSettings)
@click.option("--markers", "-m", default=None, type=click.Path(),
              help="Optional: refuse to run unless this panel is the model's own (the model's panel is used).")
@click.option("--output", "-o", required=True, type=click.Path(), help="The model used: refitted, or as saved.")
@click.option("--history", required=True, type=click.Path(), help="History TSV of the refit (as saved: of the fit).")
@click.option("--probabilities", required=True, type=click.Path(), help="Probabilities TSV (cells x types).")
@click.option("--model-info", "info_out", default=None, type=click.Path(),
              help="Write which model was used and how (JSON), for `annotate --model-info`.")
@click.option("--design", "design_path", default=None, type=click.Path(),
              help="Design matrix TSV of these cells for the refit (default: the model's covariates rebuilt).")
@click.option("--size-factors", "size_factors_path", default=None, type=click.Path(),
              help="Size factors TSV of `cellassign-nf size-factors` (default: the obs column, else from all genes).")
@click.option("--size-factor-key", default=SIZE_FACTOR_KEY, help="obs column with size factors.")
@doublet_table_option
@threads_option
@options_of(ModelSettings, TrainSettings, exclude=("min_delta", "n_restarts", "require_every_type"))
@click.pass_context
def predict(ctx, input, model_path, markers, output, history, probabilities, info_out, design_path,
            size_factors_path, size_factor_key, doublet_tables, **kw):
    """Annotate new cells with a saved model: the same cell types, batch after batch.

    By default (--refit batch) what defines the types is kept (the over-expression delta, the
    dispersion) and what belongs to the batch is refitted on INPUT by the same EM: the per-gene
    baseline beta0, the covariate effects and the proportions. --refit none predicts with the
    model exactly as saved. Write the same files as `train`; annotate them with `annotate`.

    \b
    Example:
      cellassign-nf predict s9.qc.h5ad --model reference.model.pt --size-factors s9.size_factors.tsv \\
          -o s9.model.pt --history s9.history.tsv --probabilities s9.probabilities.tsv --model-info s9.model_info.json
    """
    from . import steps

    steps.predict(input, model_path, output, history, probabilities, info_out=info_out, design_path=design_path,
                  size_factors_path=size_factors_path, size_factor_key=size_factor_key, markers=markers,
                  refit=settings_of(RefitSettings, kw), model_settings=settings_of(ModelSettings, kw),
                  settings=_settings(ctx, kw), doublets_paths=doublet_tables)


@main.command("check-model")
@click.argument("model", type=click.Path())
@click.option("--markers", "-m", default=None, type=click.Path(),
              help="Refuse these markers unless they are the model's panel.")
@click.option("--panel", "-o", "panel_out", required=True, type=click.Path(),
              help="Write the model's panel here (TSV genes x types), for `diagnose` and `report`.")
def check_model_cmd(model, markers, panel_out):
    """Check a saved model file (and --markers against its panel); write its panel.

    \b
    Example:
      cellassign-nf check-model reference.model.pt --panel reference.panel.tsv
    """
    from . import steps

    steps.check_model(model, panel_out, markers)


@main.command()
@click.argument("input", type=click.Path())
@click.option("--probabilities", "-p", required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Annotated h5ad.")
@click.option("--predictions", required=True, type=click.Path(), help="Predictions TSV.")
@click.option("--size-factors", "size_factors_path", default=None, type=click.Path(),
              help=f"Size factors TSV of `cellassign-nf size-factors`, kept in obs['{SIZE_FACTOR_KEY}'].")
@click.option("--model-info", "model_info_path", default=None, type=click.Path(),
              help="The model's description of `train` or `predict` (--model-info), kept in uns.")
@click.option("--doublet-table", "doublet_table", default=None, type=click.Path(),
              help="Doublet table of `cellassign-nf doublets` for these cells: adds doublet_score and "
                   "predicted_doublet; predicted doublets are labelled 'doublet'.")
@click.option("--doublet-summary", default=None, type=click.Path(),
              help="Its summary JSON (`doublets --summary`), kept in uns['scrublet'] for the report.")
@options_of(AnnotateSettings)
@click.option("--sample", default=None, help="Take rows SAMPLE:BARCODE of cohort probabilities and size factors.")
def annotate(input, probabilities, output, predictions, size_factors_path, model_info_path, doublet_table,
             doublet_summary, sample, **kw):
    """Add cell types and probabilities to an h5ad (a copy of INPUT with new obs columns).

    \b
    Example:
      cellassign-nf annotate s1.qc.h5ad -p s1.probabilities.tsv --size-factors s1.size_factors.tsv \\
          -o s1.annotated.h5ad --predictions s1.predictions.tsv
    """
    from . import steps

    adata = steps.annotate(input, probabilities, output, predictions, settings_of(AnnotateSettings, kw), sample=sample,
                           size_factors_path=size_factors_path, model_info_path=model_info_path,
                           doublets_path=doublet_table, doublet_summary_path=doublet_summary)
    _print_summary(adata, [output, predictions])


@main.command()
@click.argument("input", type=click.Path())
@train_options
@qc_options
@click.option("--outdir", "-o", required=True, type=click.Path(), help="Output folder.")
@click.option("--sample", default=None, help="Sample name (default: file name).")
@click.option("--covariates", default=None, help="Comma-separated obs columns for the design.")
@click.option("--formula", default=None, help="Design formula, e.g. '~ batch'.")
@options_of(DoubletSettings)
@options_of(AnnotateSettings)
@click.option("--no-umap", is_flag=True, help="Skip the UMAP of the report (large samples).")
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@diagnostic_options
@click.pass_context
def run(ctx, input, markers, outdir, sample, covariates, formula, size_factor_key, layer, other, no_umap,
        no_report, **kw):
    """All steps for one input: QC, doublets, size factors, design, train, annotate, marker diagnostics, report.

    Writes what the pipeline writes for one sample: in OUTDIR, NAME.annotated.h5ad,
    NAME.predictions.tsv, NAME.model.pt, NAME.model_info.json, NAME.history.tsv, NAME.probabilities.tsv,
    NAME.design.tsv, NAME.qc_metrics.tsv, NAME.qc_summary.json, NAME.doublets.tsv,
    NAME.doublet_summary.json, NAME.marker_diagnostics.tsv,
    NAME.marker_specificity.tsv, and the report in OUTDIR/report/ (NAME.report.html, figures,
    MultiQC files; --no-report skips it).

    \b
    Example:
      cellassign-nf run assets/demo/sample1.h5ad --markers assets/demo/markers.csv --outdir results
    """
    from . import steps

    t0 = time.perf_counter()
    settings = _settings(ctx, kw)  # --device cuda without a usable GPU fails here, before any step
    out = Path(outdir)
    from .io import default_sample_name

    sample = sample or default_sample_name(input)
    paths = {
        "qc": out / f"{sample}.qc.h5ad", "metrics": out / f"{sample}.qc_metrics.tsv",
        "summary": out / f"{sample}.qc_summary.json", "sf": out / f"{sample}.size_factors.tsv",
        "design": out / f"{sample}.design.tsv", "model": out / f"{sample}.model.pt",
        "history": out / f"{sample}.history.tsv", "probabilities": out / f"{sample}.probabilities.tsv",
        "info": out / f"{sample}.model_info.json", "doublets": out / f"{sample}.doublets.tsv",
        "doublet_summary": out / f"{sample}.doublet_summary.json",
        "annotated": out / f"{sample}.annotated.h5ad", "predictions": out / f"{sample}.predictions.tsv",
        "diagnostics": out / f"{sample}.marker_diagnostics.tsv",
        "specificity": out / f"{sample}.marker_specificity.tsv",
    }
    steps.qc(input, paths["qc"], paths["metrics"], paths["summary"], sample=sample, layer=layer,
             thresholds=settings_of(QCThresholds, kw))
    steps.doublets(paths["qc"], paths["doublets"], paths["doublet_summary"], settings_of(DoubletSettings, kw),
                   seed=settings.seed)
    steps.size_factors(paths["qc"], paths["sf"], size_factor_key)
    steps.design(paths["qc"], paths["design"], _covariates(covariates), formula)
    steps.train(paths["qc"], markers, paths["model"], paths["history"], paths["probabilities"],
                design_path=paths["design"], size_factors_path=paths["sf"], size_factor_key=size_factor_key,
                other=other, model_settings=settings_of(ModelSettings, kw), settings=settings, info_out=paths["info"],
                doublets_paths=[paths["doublets"]])
    adata = steps.annotate(paths["qc"], paths["probabilities"], paths["annotated"], paths["predictions"],
                           settings_of(AnnotateSettings, kw), size_factors_path=paths["sf"],
                           model_info_path=paths["info"], doublets_path=paths["doublets"],
                           doublet_summary_path=paths["doublet_summary"])
    diagnostics = steps.diagnose(paths["annotated"], markers, paths["diagnostics"], paths["specificity"],
                                 thresholds=thresholds_of(kw))
    for tmp in ("qc", "sf"):
        paths[tmp].unlink()
    outputs = [paths[k] for k in ("annotated", "predictions", "model", "info", "history", "probabilities", "design",
                                  "metrics", "summary", "doublets", "doublet_summary", "diagnostics", "specificity")]
    if not no_report:
        from .report import make_report

        result = make_report(paths["annotated"], history=paths["history"],
                             qc_summary=paths["summary"], sample=sample, outdir=out / "report", umap=not no_umap,
                             params={"command": "run", "input": str(input), "markers": str(markers), **kw},
                             diagnostics=paths["diagnostics"], specificity=paths["specificity"])
        outputs.append(result.html)
    log.info("finished in %.1f s", time.perf_counter() - t0)
    _print_summary(adata, outputs)
    echo_summary(diagnostics, paths["diagnostics"])


def _print_summary(adata, outputs) -> None:
    """A short table on stderr: cells per type, % unassigned, where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    from .steps import celltype_summary

    if log.getEffectiveLevel() > logging.INFO:
        return
    table = Table(title=f"{adata.n_obs} cells annotated", title_justify="left")
    table.add_column("cell type")
    table.add_column("cells", justify="right")
    table.add_column("%", justify="right")
    table.add_column("Cell Ontology")
    for name, row in celltype_summary(adata).iterrows():
        table.add_row(str(name), str(int(row["cells"])), f"{row['percent']:.1f}", row["ontology"])
    console = Console(stderr=True)
    console.print(table)
    console.print("outputs:\n" + "\n".join(f"  {o}" for o in outputs))


# --- bundled marker panels --------------------------------------------------------------------------
@main.group("markers")
def markers_group() -> None:
    """The marker panels bundled with cellassign-nf (give a NAME to --markers instead of a path)."""


@markers_group.command("list")
def markers_list() -> None:
    """List the bundled panels: name, cell types, genes, types with a Cell Ontology term, file, title.

    \b
    Example:
      cellassign-nf markers list
    """
    from .markers import bundled_panels, panel_header, read_panel

    for name, path in bundled_panels().items():
        panel = read_panel(path)
        title = next(iter(panel_header(path)), "")
        click.echo(f"{name}\t{panel.rho.shape[1]} cell types\t{panel.rho.shape[0]} genes\t"
                   f"{len(panel.ontology)} with Cell Ontology terms\t{path}" + (f"\t{title}" if title else ""))


@markers_group.command("show")
@click.argument("name")
def markers_show(name: str) -> None:
    """Print a bundled panel (or a marker file): its origin and licence, then one line per type,
    'type [CL term]:gene,gene,...' (a .txt panel file as it stands: edit it and give it to --markers).

    \b
    Example:
      cellassign-nf markers show pbmc_human
    """
    from .markers import panel_header, read_panel, resolve_markers

    path = resolve_markers(name)
    panel = read_panel(path)  # checks the file and its terms
    if path.suffix == ".txt":  # already 'type [term]:gene,...' lines, with its '#' header
        click.echo(path.read_text().rstrip("\n"))
        return
    for line in panel_header(path):
        click.echo(f"# {line}")
    rho = panel.rho
    for cell_type in rho.columns:
        term = f" [{panel.ontology[cell_type]}]" if cell_type in panel.ontology else ""
        click.echo(f"{cell_type}{term}:{','.join(rho.index[rho[cell_type] > 0])}")


from .cli_diagnostics import check_markers_command, diagnose_command  # noqa: E402,I001
from .cli_report import cohort_table_command, report_command  # noqa: E402

main.add_command(check_markers_command, "check-markers")
main.add_command(diagnose_command, "diagnose")
main.add_command(report_command, "report")
main.add_command(cohort_table_command, "cohort-table")


def console_script() -> None:
    """The ``cellassign-nf`` console script: :func:`main`, then an exit without the interpreter's
    last garbage-collection passes over every object of the libraries a step loaded
    (``gc.freeze``; 0.1 s for anndata, 0.6 s for the report's torch and scanpy). Exit handlers,
    the flushing of streams and the closing of files run as usual; the exit status is main's."""
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    console_script()
