"""Options of the steps, each with its default and its help text, defined here once.

The CLI builds its options from these dataclasses (``cellassign_nf.cli_options``), the Python API
takes them (or their fields as keyword arguments), and a test checks the pipeline's parameters
against them. Light on purpose: the CLI imports this before torch or scanpy.

A field's ``metadata`` says how the CLI shows it: ``help``; ``min`` / ``max`` (with
``min_open`` / ``max_open``) for a range; ``choices``; ``names`` for more option names; and
``cli=False`` for a field the CLI does not offer.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

N_CENTRES = 10  # radial basis functions of the inverse dispersion (docs/model.md)


def option(default: Any, help: str = "", **cli: Any) -> Any:
    """A dataclass field with its CLI help and range (see the module's docstring)."""
    return field(default=default, metadata={"help": help, **cli})


S = TypeVar("S")


def with_overrides(settings: S, overrides: dict[str, Any]) -> S:
    """``settings`` with some fields replaced; an unknown name is one clear ``TypeError``."""
    known = {f.name for f in fields(settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {type(settings).__name__} field(s): {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(known))})")
    return replace(settings, **overrides)


@dataclass
class QCThresholds:
    """Which cells and genes QC keeps.

    Data-driven (the default, as in current single-cell best practice): a cell is an outlier
    when its log total counts or log detected genes lie more than ``nmads`` median absolute
    deviations (MADs) from the sample's median, or its % mitochondrial counts more than
    ``nmads_mito`` MADs above the median (0 turns a rule off). Fixed: cells need at least
    ``min_counts`` UMIs and ``min_genes`` detected genes and at most ``max_mito_pct`` %
    mitochondrial counts. A cell failing any rule is removed. Genes need ``min_cells`` cells
    (0 keeps all).

    A MAD rule measures cells against their sample, so it cannot see a sample whose majority is
    damaged: QC then warns (``warn_removed_pct``, ``warn_median_mito_pct``) and the fixed
    thresholds are what can remove such cells."""

    min_counts: int = option(1, "Fixed threshold: minimum total UMI counts per cell.", min=0)
    min_genes: int = option(1, "Fixed threshold: minimum detected genes per cell.", min=0)
    max_mito_pct: float = option(100.0, "Fixed threshold: maximum % of counts from mitochondrial genes.",
                                 min=0, max=100)
    nmads: float = option(5.0, "Remove cells whose log total counts or log detected genes are more than this many "
                               "MADs from the sample's median (0: off).", min=0)
    nmads_mito: float = option(5.0, "Remove cells whose % mitochondrial counts is more than this many MADs above "
                                    "the sample's median (0: off).", min=0)
    min_cells: int = option(0, "Keep genes detected in this many cells.", min=0)
    mito_prefix: str = option("MT-", "Prefix of mitochondrial gene names (case-insensitive).")
    warn_removed_pct: float = option(50.0, "Warn that the library looks damaged when QC removes more than this % of "
                                           "its cells.", min=0, max=100)
    warn_median_mito_pct: float = option(20.0, "Warn that the library looks damaged when the median % mitochondrial "
                                               "counts of its cells is above this.", min=0, max=100)


@dataclass
class DoubletSettings:
    """Whether and how doublets are found (``cellassign_nf.doublets``, docs/steps.md)."""

    doublets: str = option("scrublet", "scrublet: find droplets holding two cells with Scrublet (scanpy), leave them "
                                       "out of the fit and label them 'doublet'; none: no doublet detection.",
                           choices=("scrublet", "none"))
    expected_doublet_rate: float = option(0.05, "Expected share of doublets among the cells (Scrublet's prior, as "
                                                "scanpy's default; 10x: about 0.8% per 1,000 cells recovered).",
                                          min=0, max=1, min_open=True, max_open=True)
    doublet_min_cells: int = option(100, "Samples with fewer cells after QC are not checked for doublets (a note "
                                         "says so).", min=1)
    doublet_min_share: float = option(0.9, "A cell is a doublet only when at least this share of its nearest "
                                           "neighbours are simulated doublets, whatever Otsu's threshold of the "
                                           "simulated doublets' scores (a sample whose doublets do not stand apart "
                                           "is not split at a low score).", min=0, max=1)
    doublet_genes: int = option(2_000, "Scrublet sees at most this many of the sample's most variable genes "
                                       "(scanpy's highly_variable_genes on one random part of the cells; 0: all "
                                       "genes).", min=0)
    doublet_chunk_cells: int = option(10_000, "Scrublet runs on random parts of at most this many cells of a larger "
                                              "sample (doublets simulated within each part; time and memory grow "
                                              "linearly, not quadratically, with the cells).", min=100)
    warn_doublet_factor: float = option(2.0, "Warn (QC) when the predicted doublet rate is above this many times "
                                             "--expected-doublet-rate.", min=1)


@dataclass
class ModelSettings:
    """Options of the model itself (docs/model.md)."""

    min_delta: float = option(2.0, "Minimum log fold change of a marker.", min=0)
    min_cells_fit: int = option(50, "Fit only samples with at least this many cells (after QC); fewer is an error "
                                    "(the pipeline sets such a sample aside).", min=1)
    require_every_type: bool = option(False, "Stop with an error when a cell type of the panel has no marker gene "
                                             "in the data (by default such a type is left out of the fit, with one "
                                             "warning naming it).")
    shrinkage: bool = option(True, "Hierarchical prior on delta (as the original).", cli=False)
    dirichlet_concentration: float = option(1e-2, "Dirichlet prior on the type proportions.", cli=False)
    n_centres: int = option(N_CENTRES, "Radial basis functions of the inverse dispersion.", cli=False)


@dataclass
class PanelSettings:
    """The model's types beyond the panel's, when ``train`` (CLI and pipeline) fits a new model; a
    saved model's types stand (``predict``). The Python API (``CellAssign(adata, markers)``) fits
    the panel's types only, as scvi-tools does: give it ``marker_list_to_matrix(...,
    include_other=True)`` or ``load_panel(..., other=True)`` for an ``other`` type."""

    other: bool = option(True, "Add an 'other' type without markers, for cells that none of the panel's types "
                               "explains (a type the panel does not list); --no-other: every cell gets its nearest "
                               "panel type.")


@dataclass
class TrainSettings:
    """Options of the fit (``cellassign_nf.train.fit``)."""

    max_epochs: int = option(400, "Maximum epochs per restart.", min=1)
    lr: float = option(0.1, "Adam learning rate.", min=0, min_open=True, names=("--learning-rate",))
    batch_size: int = option(1024, "Cells per minibatch.", min=1)
    n_restarts: int = option(3, "Random restarts; the best final likelihood is kept.", min=1)
    seed: int = option(0, "Random seed of the starts and the minibatches.")
    validation_fraction: float = option(0.1, "Share of cells held out for early stopping.",
                                        min=0, max=1, max_open=True)
    early_stopping: bool = option(True, "Stop a restart when the validation likelihood stops improving.", cli=False)
    patience: int = option(10, "Epochs without validation improvement before stopping.", min=1)
    rel_tol: float = option(1e-4, "Relative improvement of the validation likelihood that counts.", cli=False)
    device: str = option("auto", "auto: CUDA GPU when present, else CPU.", choices=("auto", "cpu", "cuda"))
    fuse: str = option("auto", "Fast paths: auto = the fused C kernel on CPUs (when built), the CUDA graph on GPUs; "
                               "on = the same, but fail if the CPU kernel was not built; off = the plain PyTorch "
                               "reference.", choices=("auto", "on", "off"))
    progress: bool = option(True, "Progress bars (the CLI turns them off with --quiet).", cli=False)

    def check(self) -> None:
        if self.max_epochs < 1 or self.batch_size < 1 or self.n_restarts < 1 or self.patience < 1:
            raise ValueError("max_epochs, batch_size, n_restarts and patience must be at least 1")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.fuse not in ("auto", "on", "off"):
            raise ValueError(f"fuse must be auto, on or off, got {self.fuse}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class RefitSettings:
    """How a saved model annotates new cells (``cellassign-nf predict``, docs/model.md section 8)."""

    refit: str = option("batch", "batch: refit what belongs to the batch (baseline beta0, covariate effects beta, "
                                 "proportions pi) on these cells, holding what defines the types (delta, the "
                                 "dispersion) fixed; none: predict with the model exactly as saved.",
                        choices=("batch", "none"))


@dataclass
class AnnotateSettings:
    """How probabilities become labels."""

    min_prob: float = option(0.5, "Below this, a cell is 'unassigned'.", min=0, max=1)
    rollup: bool = option(True, "Give a cell that no type reaches --min-prob the most specific Cell Ontology term "
                                "shared by two or more types whose summed probability reaches it (--no-rollup: "
                                "'unknown').")


@dataclass
class ReportSettings:
    """What the per-sample report draws."""

    umap_max_cells: int = option(3_000, "UMAP of at most this many cells: a larger sample's is drawn on a random "
                                 "subsample of this many that keeps every assigned type (0: all cells).", min=0)


@dataclass
class DiagnosticThresholds:
    """When the marker diagnostics raise a flag (docs/markers.md). Expression is log1p of counts
    normalised to 10,000 per cell; "detected" means at least one count."""

    min_detection: float = option(0.005, "Flag a marker detected in a smaller share of cells (uninformative).",
                                  min=0, max=1)
    max_detection: float = option(0.98, "Flag a marker detected in a larger share of cells when it also varies less "
                                        "than --min-fold (not specific).", min=0, max=1)
    min_fold: float = option(4.0, "Spread below which a marker detected everywhere is not specific: the larger of "
                                  "the mean of its most expressing cells (as many as the smallest type: "
                                  "--min-type-fraction, at least --min-group-cells) / its median, and median / 5th "
                                  "percentile.", min=1)
    min_markers: int = option(2, "Flag a type with fewer usable markers.", min=1)
    max_overlap: float = option(0.6, "Flag two types whose usable markers overlap this much (Jaccard index).",
                                min=0, max=1)
    min_type_fraction: float = option(0.005, "The smallest type: after the fit, a type with a smaller share of the "
                                             "cells received (almost) none; before, --min-fold compares this share "
                                             "of the most expressing cells with the median.", min=0, max=1)
    min_group_cells: int = option(10, "... and at least this many cells: a type with fewer received (almost) none; "
                                      "smaller groups are not compared.", min=1)
    high_detection: float = option(0.5, "A marker is high in a group when detected in this share of its cells ...",
                                   min=0, max=1)
    min_logfc: float = option(0.25, "... and this much above its median over the groups (log1p of counts per "
                                    "10,000); a type's own markers must exceed another type's cells by this much.",
                              min=0)
    max_unassigned: float = option(0.2, "Flag a larger share of unassigned cells.", min=0, max=1)
    n_candidates: int = option(5, "Candidate markers listed per type or flagged pair.", min=0)
    candidate_max_cells: int = option(10_000, "Candidate markers from at most this many cells: a larger sample's "
                                              "come from a random subsample that keeps every assigned type (0: all "
                                              "cells).", min=0)

    def smallest_type(self, n_cells: int) -> int:
        """Cells of the smallest group that counts as a type in a sample of ``n_cells``:
        ``min_type_fraction`` of them, at least ``min_group_cells``."""
        from math import ceil

        return max(self.min_group_cells, ceil(self.min_type_fraction * n_cells))
