"""Options of the QC and training steps (light: the CLI imports this before torch or scanpy)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QCThresholds:
    """Which cells and genes QC keeps.

    Data-driven (the default, as in current single-cell best practice): a cell is an outlier
    when its log total counts or log detected genes lie more than ``nmads`` median absolute
    deviations (MADs) from the sample's median, or its % mitochondrial counts more than
    ``nmads_mito`` MADs above the median (0 turns a rule off). Fixed: cells need at least
    ``min_counts`` UMIs and ``min_genes`` detected genes and at most ``max_mito_pct`` %
    mitochondrial counts. A cell failing any rule is removed. Genes need ``min_cells`` cells
    (0 keeps all)."""

    min_counts: int = 1
    min_genes: int = 1
    max_mito_pct: float = 100.0
    nmads: float = 5.0
    nmads_mito: float = 5.0
    min_cells: int = 0
    mito_prefix: str = "MT-"


@dataclass
class TrainSettings:
    """Options of :func:`fit` (the CLI and the Python API share them)."""

    max_epochs: int = 400
    lr: float = 0.1
    batch_size: int = 1024
    n_restarts: int = 3
    seed: int = 0
    validation_fraction: float = 0.1
    early_stopping: bool = True
    patience: int = 10
    rel_tol: float = 1e-4
    device: str = "auto"
    fuse: str = "auto"  # fast paths: auto (fused C kernel on CPUs, CUDA graph on GPUs), on (same, kernel required), off (plain)
    progress: bool = True

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
class DiagnosticThresholds:
    """When the marker diagnostics raise a flag (docs/markers.md). Expression is log1p of counts
    normalised to 10,000 per cell; "detected" means at least one count."""

    min_detection: float = 0.005  # a marker detected in a smaller share of cells is uninformative
    max_detection: float = 0.98  # ... in a larger share, it is not specific when it also varies little:
    min_fold: float = 4.0  # its 95th percentile < min_fold x its median, and its median < min_fold x its 5th
    min_markers: int = 2  # a type needs this many usable markers
    max_overlap: float = 0.6  # two types whose usable markers overlap this much (Jaccard) are hard to tell apart
    min_type_fraction: float = 0.005  # after the fit, a type with a smaller share of the cells got "almost none"
    min_group_cells: int = 10  # ... and fewer cells than this is almost none too; smaller groups are not compared
    high_detection: float = 0.5  # a marker is high in a group when detected in this share of its cells ...
    min_logfc: float = 0.25  # ... and this much above its median over groups; own markers must beat others' by this
    max_unassigned: float = 0.2  # a larger unassigned share is flagged
    n_candidates: int = 5  # candidate markers listed per type or flagged pair
