"""What the report's modules share: names and constants, the records passed between them, and
small helpers (checking input files, atomic writes, formatting values)."""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path
from ..keys import (  # noqa: F401
    CELLTYPE_KEY, DOUBLET, HISTORY_COLUMNS, PROB_KEY, PROBS_KEY, QC_WARNINGS_KEY, SIZE_FACTOR_KEY, UNASSIGNED,
)
from ..rules import SAMPLE_NAME_RE  # noqa: F401 - re-exported for the report package
from ..settings import ReportSettings
DEFAULT_UMAP_MAX_CELLS = ReportSettings.umap_max_cells
UMAP_MIN_CELLS = 10
HVG_THRESHOLD = 2_000  # genes: above this, the UMAP uses the top highly variable genes
# UMAP layout epochs at every size: umap-learn's own choice above 10,000 cells (below, it takes 500,
# 2.5x the time for a picture that 200 already settles)
UMAP_EPOCHS = 200
COUNTS_SUFFIX = "_celltype_counts_mqc.tsv"
PREDICTIONS_SUFFIX = ".predictions.tsv"
UNASSIGNED_COLOUR = "#b0b0b0"
DPI = 100


class ModelLike(Protocol):
    """What the report needs of a fitted model (``cellassign_nf.api.CellAssign``)."""

    genes: list[str]
    cell_types: list[str]
    delta: pd.DataFrame  # genes x types, 0 where not a marker
    rho: pd.DataFrame  # genes x types, binary
    history: pd.DataFrame
    train_params: dict[str, Any]


@dataclass
class ReportFigure:
    """One figure of the report: its PNG bytes, the file it was written to, and its caption."""

    key: str
    title: str
    png: bytes
    path: Path
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class QCSummary:
    """The numbers of the QC step, normalised from its JSON summary."""

    cells_before: int | None = None
    cells_after: int | None = None
    genes_before: int | None = None
    genes_after: int | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)
    # sample-level QC warnings, one sentence each; None for a summary without them (older files)
    warnings: list[str] | None = None


@dataclass
class SampleSummary:
    """Per-sample numbers shared by the HTML page, MultiQC files and the cohort table."""

    sample: str
    counts: pd.Series  # cells per type, model order, ``unassigned`` last
    min_prob: float | None
    qc: QCSummary
    final_val_loglik: float | None
    final_train_loglik: float | None
    selected_restart: int | None
    n_restarts: int
    n_epochs: int | None
    val_curve: pd.Series  # validation log likelihood by epoch, selected restart
    marker_warnings: int | None = None  # warnings of the marker diagnostics, when given
    doublets: dict[str, Any] | None = None  # the doublet step's summary (uns["scrublet"]), when it ran
    # the fit's warnings (model_info.json's, kept in the annotated h5ad) and the panel's types it left out
    model_warnings: list[str] = field(default_factory=list)
    left_out_types: list[str] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return int(self.counts.sum())

    @property
    def n_unassigned(self) -> int:
        return int(self.counts.get(UNASSIGNED, 0))

    @property
    def n_doublets(self) -> int:
        return int(self.counts.get(DOUBLET, 0))

    @property
    def n_assigned(self) -> int:
        return self.n_cells - self.n_unassigned - self.n_doublets

    @property
    def doublet_warnings(self) -> list[str]:
        return [str(w) for w in np.asarray((self.doublets or {}).get(QC_WARNINGS_KEY, []), dtype=object).ravel()]

    @property
    def pct_assigned(self) -> float:
        return 100.0 * self.n_assigned / self.n_cells if self.n_cells else 0.0

    @property
    def top_type(self) -> str | None:
        assigned = self.counts.drop([UNASSIGNED, DOUBLET], errors="ignore")
        if assigned.empty or assigned.max() == 0:
            return None
        return str(assigned.idxmax())


@dataclass
class ReportResult:
    """What ``make_report`` wrote."""

    html: Path
    figures: list[Path]
    multiqc_files: list[Path]
    summary: SampleSummary
    notes: list[str]


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(path, f"{what} not found", "Check the path and that the previous step finished.")
    if path.is_dir():
        raise InputError(path, f"is a folder, not the {what}", "Give the file itself.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if _is_number(value):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    return str(value)
