"""Per-sample HTML report, MultiQC custom-content files and the cohort cell-type table.

``make_report`` reads the outputs of the earlier steps (annotated h5ad, training history, model
file, QC summary) and writes into ``outdir``:

* ``NAME.report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS,
  no JavaScript), written last, so its presence means the report is complete;
* ``NAME_<figure>.png``: every figure of the page as a PNG file;
* ``NAME_*_mqc.*``: MultiQC custom-content files (see ``write_multiqc_files``).

``cohort_table`` turns per-sample cell-type counts (``NAME_celltype_counts_mqc.tsv``, or
predictions TSVs) into one samples x cell types table.

Every figure is built by a small function that takes plain data (Series, DataFrames, AnnData)
and returns a matplotlib figure, so each can be reused from a notebook.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import platform
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import matplotlib

matplotlib.use("Agg")  # before pyplot (and scanpy) are imported: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import InputError  # noqa: E402
from .io import atomic_path  # noqa: E402

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

UNASSIGNED = "unassigned"
CELLTYPE_KEY = "cellassign_celltype"
PROB_KEY = "cellassign_prob"
PROBS_KEY = "cellassign_probabilities"
SIZE_FACTOR_KEY = "size_factor"
HISTORY_COLUMNS = ("restart", "epoch", "train_loglik", "val_loglik", "selected")
DEFAULT_UMAP_MAX_CELLS = 50_000
UMAP_MIN_CELLS = 10
HVG_THRESHOLD = 2_000  # genes: above this, the UMAP uses the top highly variable genes
COUNTS_SUFFIX = "_celltype_counts_mqc.tsv"
PREDICTIONS_SUFFIX = ".predictions.tsv"
UNASSIGNED_COLOUR = "#b0b0b0"
DPI = 100
SAMPLE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


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

    @property
    def n_cells(self) -> int:
        return int(self.counts.sum())

    @property
    def n_unassigned(self) -> int:
        return int(self.counts.get(UNASSIGNED, 0))

    @property
    def n_assigned(self) -> int:
        return self.n_cells - self.n_unassigned

    @property
    def pct_assigned(self) -> float:
        return 100.0 * self.n_assigned / self.n_cells if self.n_cells else 0.0

    @property
    def top_type(self) -> str | None:
        assigned = self.counts.drop(UNASSIGNED, errors="ignore")
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


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------


def check_sample_name(sample: str) -> str:
    """Sample names become file names and MultiQC sample names: keep them simple."""
    if not SAMPLE_NAME_RE.match(sample or ""):
        raise InputError(None, f"sample name '{sample}' is not usable in file names",
                         "Use letters, digits, '.', '_', '+' or '-' only, starting with a letter or digit.")
    return sample


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(path, f"{what} not found", "Check the path and that the previous step finished.")
    if path.is_dir():
        raise InputError(path, f"is a folder, not the {what}", "Give the file itself.")


def load_annotated(path: str | Path) -> ad.AnnData:
    """Read the annotated h5ad of ``cellassign-nf annotate`` and check what the report uses."""
    import anndata as ad

    path = Path(path)
    _require_file(path, "annotated h5ad")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for bad files
        raise InputError(path, f"cannot be read as h5ad ({type(exc).__name__}: {exc})",
                         "Give the annotated h5ad written by `cellassign-nf annotate`.") from exc
    fix = "Give the annotated h5ad written by `cellassign-nf annotate`."
    if adata.n_obs == 0:
        raise InputError(path, "has no cells", "Check the QC thresholds: every cell was filtered out.")
    for key in (CELLTYPE_KEY, PROB_KEY):
        if key not in adata.obs:
            raise InputError(path, f"has no obs['{key}']", fix)
    probs = pd.to_numeric(adata.obs[PROB_KEY], errors="coerce")
    if (probs < 0).any() or (probs > 1 + 1e-6).any():  # NaN (cells the model could not score) is allowed
        raise InputError(path, f"obs['{PROB_KEY}'] holds values outside [0, 1]", fix)
    return adata


def load_history(path: str | Path) -> pd.DataFrame:
    """Read ``history.tsv`` (``restart, epoch, train_loglik, val_loglik, selected``)."""
    path = Path(path)
    _require_file(path, "training history")
    try:
        hist = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise InputError(path, f"cannot be read as a TSV table ({exc})",
                         "Give the history.tsv written by `cellassign-nf train`.") from exc
    return check_history(hist, path)


def check_history(hist: pd.DataFrame, path: str | Path | None = None) -> pd.DataFrame:
    """Check and normalise a training-history table (columns as in history.tsv)."""
    missing = [c for c in HISTORY_COLUMNS if c not in hist.columns]
    if missing:
        raise InputError(path, f"training history lacks column(s) {', '.join(missing)}",
                         "Give the history.tsv written by `cellassign-nf train`.")
    hist = hist.copy()
    for col in ("restart", "epoch"):
        hist[col] = pd.to_numeric(hist[col], errors="coerce")
    for col in ("train_loglik", "val_loglik"):
        hist[col] = pd.to_numeric(hist[col], errors="coerce")
    if hist[["restart", "epoch"]].isna().any().any():
        raise InputError(path, "training history has non-numeric restart or epoch values",
                         "Give the history.tsv written by `cellassign-nf train`.")
    hist["restart"] = hist["restart"].astype(int)
    hist["epoch"] = hist["epoch"].astype(int)
    hist["selected"] = hist["selected"].map(_as_bool)
    return hist.sort_values(["restart", "epoch"]).reset_index(drop=True)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "t")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


_QC_ALIASES: dict[str, tuple[str, ...]] = {
    "cells_before": ("cells_before", "n_cells_before", "cells_in", "n_cells_in", "input_cells", "cells_input"),
    "cells_after": ("cells_after", "n_cells_after", "cells_out", "n_cells_out", "cells_passed", "n_cells_passed",
                    "cells_kept", "output_cells"),
    "genes_before": ("genes_before", "n_genes_before", "genes_in", "n_genes_in", "input_genes", "genes_input"),
    "genes_after": ("genes_after", "n_genes_after", "genes_out", "n_genes_out", "genes_passed", "n_genes_passed",
                    "genes_kept", "output_genes"),
}
_QC_THRESHOLD_KEYS = ("thresholds", "params", "parameters", "filters", "settings")
_QC_THRESHOLD_NAMES = ("min_counts", "min_genes", "max_mito_pct", "min_cells", "mito_prefix", "max_counts",
                       "max_genes", "layer")


def load_qc_summary(path: str | Path) -> QCSummary:
    """Read the QC step's summary JSON."""
    path = Path(path)
    _require_file(path, "QC summary")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})",
                         "Give the summary JSON written by `cellassign-nf qc --summary`.") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "is not a JSON object", "Give the summary JSON written by `cellassign-nf qc --summary`.")
    return parse_qc_summary(raw)


def parse_qc_summary(raw: Mapping[str, Any]) -> QCSummary:
    """Normalise a QC summary dict: cell and gene counts before/after, thresholds, the rest."""
    flat = dict(raw)
    # Accept {"cells": {"before": .., "after": ..}, "genes": {...}} as well as flat keys.
    for what in ("cells", "genes"):
        sub = flat.get(what)
        if isinstance(sub, Mapping):
            for when in ("before", "after"):
                if when in sub:
                    flat.setdefault(f"{what}_{when}", sub[when])
            flat.pop(what)
    qc = QCSummary()
    used: set[str] = set()
    for attr, names in _QC_ALIASES.items():
        for name in names:
            if name in flat and _is_number(flat[name]):
                setattr(qc, attr, int(flat[name]))
                used.add(name)
                break
    for key in _QC_THRESHOLD_KEYS:
        if isinstance(flat.get(key), Mapping):
            qc.thresholds.update(flat[key])
            used.add(key)
    for name in _QC_THRESHOLD_NAMES:
        if name in flat and name not in used:
            qc.thresholds.setdefault(name, flat[name])
            used.add(name)
    for key, value in flat.items():
        if key in used or key in ("cells", "genes"):
            continue
        qc.other[key] = value
    return qc


def qc_removed_rows(other: Mapping[str, Any]) -> list[list[Any]]:
    """Rows ``[reason, rule, cells removed]`` from the QC summary's ``removed`` and ``rules`` (cellassign-nf qc)."""
    removed, rules = other.get("removed"), other.get("rules")
    if not isinstance(removed, Mapping) or not isinstance(rules, Mapping):
        return []
    return [[reason, str(rules.get(reason, "")), n] for reason, n in removed.items()]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def load_params(path: str | Path | None) -> dict[str, Any]:
    """Read the run's parameters JSON (``--params``); ``{}`` when not given."""
    if path is None:
        return {}
    path = Path(path)
    _require_file(path, "parameters JSON")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})", "Give a JSON object of parameter names and values.") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "is not a JSON object", "Give a JSON object of parameter names and values.")
    return raw


def load_model(path: str | Path) -> ModelLike:
    """Load the fitted model file with ``cellassign_nf.api.CellAssign.load``."""
    path = Path(path)
    _require_file(path, "model file")
    from .api import CellAssign

    try:
        model = CellAssign.load(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot be read as a cellassign-nf model ({type(exc).__name__}: {exc})",
                         "Give the model file written by `cellassign-nf train`.") from exc
    return model  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def celltype_counts(adata: ad.AnnData, cell_types: Sequence[str] | None = None) -> pd.Series:
    """Cells per assigned type: ``cell_types`` order (then any others), ``unassigned`` last."""
    labels = adata.obs[CELLTYPE_KEY].astype(str)
    counts = labels.value_counts()
    order: list[str] = [str(t) for t in (cell_types or []) if str(t) != UNASSIGNED]
    cats = adata.obs[CELLTYPE_KEY].cat.categories if hasattr(adata.obs[CELLTYPE_KEY], "cat") else []
    uns_types = _uns_cell_types(adata)
    for t in [*uns_types, *map(str, cats), *counts.index]:
        if t != UNASSIGNED and t not in order:
            order.append(t)
    order.append(UNASSIGNED)
    out = counts.reindex(order, fill_value=0).astype(int)
    out.index.name = "cell_type"
    out.name = "cells"
    return out


def _uns_cell_types(adata: ad.AnnData) -> list[str]:
    info = adata.uns.get("cellassign", {})
    types = info.get("cell_types", []) if isinstance(info, Mapping) else []
    return [str(t) for t in np.asarray(types).ravel()]


def min_prob_of(adata: ad.AnnData) -> float | None:
    """The probability threshold used by ``annotate`` (``uns["cellassign"]["min_prob"]``)."""
    info = adata.uns.get("cellassign", {})
    value = info.get("min_prob") if isinstance(info, Mapping) else None
    try:
        return None if value is None else float(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None


def summarise(sample: str, adata: ad.AnnData, history: pd.DataFrame, qc: QCSummary,
              cell_types: Sequence[str] | None = None) -> SampleSummary:
    """Numbers for one sample, used by the page, the MultiQC files and the cohort table."""
    selected = history[history["selected"]]
    sel_restart = int(selected["restart"].iloc[0]) if not selected.empty else None
    if selected.empty and not history.empty:  # no flag: take the best final validation likelihood
        finals = history.groupby("restart").tail(1).set_index("restart")
        col = "val_loglik" if finals["val_loglik"].notna().any() else "train_loglik"
        sel_restart = int(finals[col].idxmax())
        selected = history[history["restart"] == sel_restart]
    final_val = final_train = None
    n_epochs = None
    val_curve = pd.Series(dtype=float)
    if not selected.empty:
        last = selected.iloc[-1]
        final_val = None if pd.isna(last["val_loglik"]) else float(last["val_loglik"])
        final_train = None if pd.isna(last["train_loglik"]) else float(last["train_loglik"])
        n_epochs = int(selected["epoch"].max())
        val_curve = selected.set_index("epoch")["val_loglik"].dropna()
    if qc.cells_after is None:
        qc.cells_after = int(adata.n_obs)
    return SampleSummary(
        sample=sample,
        counts=celltype_counts(adata, cell_types),
        min_prob=min_prob_of(adata),
        qc=qc,
        final_val_loglik=final_val,
        final_train_loglik=final_train,
        selected_restart=sel_restart,
        n_restarts=int(history["restart"].nunique()) if not history.empty else 0,
        n_epochs=n_epochs,
        val_curve=val_curve,
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def type_colours(types: Sequence[str]) -> dict[str, str]:
    """One fixed colour per type (tab10/tab20 in model order); ``unassigned`` grey."""
    cmap = plt.get_cmap("tab10" if len(types) <= 10 else "tab20")
    colours: dict[str, str] = {}
    i = 0
    for t in types:
        if t == UNASSIGNED:
            colours[t] = UNASSIGNED_COLOUR
        else:
            colours[t] = matplotlib.colors.to_hex(cmap(i % cmap.N))
            i += 1
    return colours


def plot_celltype_counts(counts: pd.Series) -> Figure:
    """Horizontal bar chart of cells per type, labelled with count and percentage."""
    total = max(int(counts.sum()), 1)
    colours = type_colours(list(counts.index))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(counts) + 1.3))
    y = np.arange(len(counts))
    ax.barh(y, counts.values, color=[colours[t] for t in counts.index])
    ax.set_yticks(y, labels=list(counts.index))
    ax.invert_yaxis()
    ax.set_xlabel("cells")
    ax.set_xlim(0, max(counts.max(), 1) * 1.25)
    for yi, n in zip(y, counts.values):
        ax.text(n, yi, f" {n:,} ({100 * n / total:.1f}%)", va="center", fontsize=9)
    ax.set_title(f"Assigned cell types ({total:,} cells)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def plot_probability_histogram(probs: np.ndarray | pd.Series, min_prob: float | None) -> Figure:
    """Histogram of each cell's top assignment probability, with the threshold line."""
    probs = np.asarray(probs, dtype=float)
    probs = probs[np.isfinite(probs)]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    bins = np.linspace(0, 1, 41)
    if min_prob is not None:
        below = probs < min_prob
        ax.hist(probs[~below], bins=bins, color="#3b75af", label="assigned")
        ax.hist(probs[below], bins=bins, color=UNASSIGNED_COLOUR, label=f"unassigned ({below.sum():,} cells)")
        ax.axvline(min_prob, color="#c0392b", linestyle="--", linewidth=1.5, label=f"threshold {min_prob:g}")
        ax.legend(loc="upper left", frameon=False)
    else:
        ax.hist(probs, bins=bins, color="#3b75af")
    ax.set_xlim(0, 1)
    ax.set_xlabel("top assignment probability")
    ax.set_ylabel("cells")
    if len(probs) and (probs > 0.975).mean() > 0.8:  # one tall bar at 1 would hide the rest
        ax.set_yscale("log")
    ax.set_title("Assignment probability per cell")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def normalise(adata: ad.AnnData) -> ad.AnnData:
    """A copy with counts normalised to 10,000 per cell and log1p-transformed (scanpy)."""
    import scanpy as sc

    norm = adata.copy()
    norm.X = norm.X.astype(np.float32)
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    return norm


def markers_by_type(rho: pd.DataFrame, genes_present: Iterable[str]) -> dict[str, list[str]]:
    """``{type: [marker genes]}`` from the binary marker matrix, keeping genes in the data."""
    present = set(map(str, genes_present))
    out: dict[str, list[str]] = {}
    for t in rho.columns:
        genes = [str(g) for g in rho.index[rho[t].to_numpy() > 0] if str(g) in present]
        if genes:
            out[str(t)] = genes
    return out


def plot_marker_expression(norm: ad.AnnData, rho: pd.DataFrame, cell_types: Sequence[str]) -> Figure | None:
    """Scanpy dot plot of the marker genes (grouped by the type they mark) by assigned type.

    Colour: mean normalised log expression, scaled 0-1 per gene across types; dot size: share of
    cells of the type that express the gene. Each type should light up its own block.
    """
    import scanpy as sc

    var_names = markers_by_type(rho, norm.var_names)
    if not var_names:
        return None
    obs = norm.obs
    order = [t for t in [*cell_types, UNASSIGNED] if t in set(obs[CELLTYPE_KEY].astype(str))]
    order += [t for t in obs[CELLTYPE_KEY].astype(str).unique() if t not in order]
    genes = sorted({g for gs in var_names.values() for g in gs})
    sub = norm[:, genes].copy()
    sub.obs[CELLTYPE_KEY] = pd.Categorical(sub.obs[CELLTYPE_KEY].astype(str), categories=order)
    n_genes = sum(len(g) for g in var_names.values())
    width = min(max(4.0 + 0.32 * n_genes, 6.0), 40.0)
    height = max(2.2 + 0.38 * len(order), 3.0)
    scaled = len(order) > 1  # scaling per gene across one group would divide by zero
    dp = sc.pl.dotplot(sub, var_names=var_names, groupby=CELLTYPE_KEY, standard_scale="var" if scaled else None,
                       figsize=(width, height), show=False, return_fig=True,
                       colorbar_title="mean expression\n(scaled per gene)" if scaled else "mean log expression",
                       size_title="fraction of cells\nexpressing (%)")
    dp.make_figure()
    fig = dp.fig if hasattr(dp, "fig") else plt.gcf()
    return fig


def compute_umap(norm: ad.AnnData, seed: int = 0) -> ad.AnnData:
    """UMAP of the normalised data: HVG (if many genes), PCA, neighbours, UMAP (scanpy)."""
    import scanpy as sc

    emb = norm.copy()
    if emb.n_vars > HVG_THRESHOLD:
        sc.pp.highly_variable_genes(emb, n_top_genes=HVG_THRESHOLD, flavor="seurat")
        emb = emb[:, emb.var["highly_variable"]].copy()
    n_comps = int(max(2, min(50, emb.n_obs - 1, emb.n_vars - 1)))
    sc.pp.pca(emb, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(emb, n_neighbors=int(min(15, emb.n_obs - 1)), n_pcs=n_comps, random_state=seed)
    sc.tl.umap(emb, random_state=seed)
    return emb


def plot_umap(emb: ad.AnnData, cell_types: Sequence[str]) -> Figure:
    """Two UMAP panels: coloured by assigned type, and by assignment probability."""
    xy = np.asarray(emb.obsm["X_umap"])
    labels = emb.obs[CELLTYPE_KEY].astype(str).to_numpy()
    probs = emb.obs[PROB_KEY].to_numpy(dtype=float)
    types = [t for t in [*cell_types, UNASSIGNED] if t in set(labels)]
    types += [t for t in pd.unique(labels) if t not in types]
    colours = type_colours([*cell_types, UNASSIGNED] + [t for t in types if t not in cell_types and t != UNASSIGNED])
    size = float(np.clip(12000 / max(len(xy), 1), 0.5, 30))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.6))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(xy))  # no type drawn entirely on top of another
    ax1.scatter(xy[order, 0], xy[order, 1], s=size, c=[colours[t] for t in labels[order]], linewidths=0,
                rasterized=True)
    handles = [matplotlib.lines.Line2D([], [], marker="o", linestyle="", color=colours[t],
                                       label=f"{t} ({(labels == t).sum():,})") for t in types]
    ax1.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    ax1.set_title("assigned cell type")
    po = np.argsort(-probs)  # low probabilities drawn last, so they stay visible
    sc_ = ax2.scatter(xy[po, 0], xy[po, 1], s=size, c=probs[po], cmap="viridis", vmin=0, vmax=1, linewidths=0,
                      rasterized=True)
    fig.colorbar(sc_, ax=ax2, shrink=0.8, label="top assignment probability")
    ax2.set_title("assignment probability")
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
        ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig


def plot_training_curves(history: pd.DataFrame) -> Figure:
    """Train and validation log likelihood per epoch: one line per restart, selected one bold."""
    has_val = history["val_loglik"].notna().any()
    ncols = 2 if has_val else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.0), squeeze=False)
    restarts = sorted(history["restart"].unique())
    cmap = plt.get_cmap("tab10")
    for ax, col, title in zip(axes[0], ("train_loglik", "val_loglik"), ("training", "validation")):
        for i, r in enumerate(restarts):
            h = history[history["restart"] == r]
            sel = bool(h["selected"].any())
            ax.plot(h["epoch"], h[col], color=cmap(i % 10), linewidth=2.6 if sel else 1.0,
                    alpha=1.0 if sel else 0.55, zorder=3 if sel else 2,
                    label=f"restart {r}" + (" (selected)" if sel else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel("log likelihood per cell")
        ax.set_title(f"{title} log likelihood")
        ax.spines[["top", "right"]].set_visible(False)
        _zoom_to_tail(ax, history[col].dropna().to_numpy())
    axes[0][-1].legend(frameon=False, fontsize=9, loc="lower right")
    fig.tight_layout()
    return fig


def _zoom_to_tail(ax: Any, values: np.ndarray) -> None:
    """Keep the interesting range in view: the first epochs' likelihoods can be far lower."""
    if values.size < 4:
        return
    lo, hi = np.quantile(values, 0.05), values.max()
    span = hi - lo
    if span > 0 and values.min() < lo - 2 * span:
        ax.set_ylim(lo - 0.15 * span, hi + 0.1 * span)


def plot_delta(delta: pd.DataFrame, rho: pd.DataFrame) -> Figure:
    """Heat map of the fitted over-expression ``delta`` (log fold) per marker gene and type."""
    rho = rho.reindex(index=delta.index, columns=delta.columns).fillna(0)
    values = delta.to_numpy(dtype=float)
    mask = rho.to_numpy() <= 0
    masked = np.ma.masked_array(values, mask=mask)
    n_genes, n_types = values.shape
    fig, ax = plt.subplots(figsize=(min(max(3.5 + 0.7 * n_types, 5.5), 30), min(max(1.5 + 0.26 * n_genes, 3.5), 60)))
    cmap = plt.get_cmap("YlOrRd").with_extremes(bad="#eeeeee")
    vmax = float(masked.max()) if masked.count() else 1.0
    vmin = float(masked.min()) if masked.count() else 0.0
    if vmax - vmin < 0.5:  # (nearly) all at one value, e.g. the min_delta floor: keep a readable scale
        vmin = max(0.0, vmax - 1.0)
    im = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1,
                   interpolation="nearest")
    ax.set_xticks(range(n_types), labels=list(map(str, delta.columns)), rotation=40, ha="right")
    ax.set_yticks(range(n_genes), labels=list(map(str, delta.index)), fontsize=8 if n_genes > 30 else 9)
    if n_genes * n_types <= 600:
        for (gi, ti), v in np.ndenumerate(values):
            if not mask[gi, ti]:
                ax.text(ti, gi, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v > vmin + 0.6 * (vmax - vmin) else "black")
    fig.colorbar(im, ax=ax, shrink=0.7, label="delta (log over-expression)")
    ax.set_title("Fitted marker over-expression (grey: not a marker)")
    fig.tight_layout()
    return fig


def plot_size_factors(size_factors: np.ndarray | pd.Series) -> Figure:
    """Histogram of the per-cell size factors (log scale)."""
    sf = np.asarray(size_factors, dtype=float)
    sf = sf[np.isfinite(sf) & (sf > 0)]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    if sf.size:
        bins = np.logspace(np.log10(sf.min()), np.log10(sf.max()) + 1e-9, 41)
        ax.hist(sf, bins=bins, color="#5b8c5a")
        ax.set_xscale("log")
        ax.axvline(float(np.median(sf)), color="black", linestyle=":", label=f"median {np.median(sf):.2f}")
        ax.legend(frameon=False)
    ax.set_xlabel("size factor (total counts / mean)")
    ax.set_ylabel("cells")
    ax.set_title("Size factors")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Parameters and versions
# --------------------------------------------------------------------------------------------


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


def software_versions() -> dict[str, str]:
    """Versions of cellassign-nf and the libraries the results depend on."""
    out: dict[str, str] = {}
    for name in ("cellassign-nf", "torch", "scanpy", "anndata", "numpy", "pandas", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "cellassign-nf":
                import cellassign_nf

                out[name] = str(getattr(cellassign_nf, "__version__", "unknown (not installed)"))
            else:
                out[name] = "not installed"
    out["python"] = platform.python_version()
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


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body { font-family: Arial, "Liberation Sans", Helvetica, "DejaVu Sans", sans-serif; margin: 0;
       color: #222; background: #fafafa; line-height: 1.45; }
header { background: #1f3b57; color: white; padding: 18px 32px; }
header h1 { margin: 0; font-size: 24px; }
header p { margin: 4px 0 0; opacity: 0.85; font-size: 14px; }
nav { background: #e8eef4; padding: 8px 32px; font-size: 14px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: #1f3b57; text-decoration: none; }
main { padding: 12px 32px 40px; max-width: 1400px; }
section { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 6px 20px 16px; margin: 16px 0; }
h2 { font-size: 19px; border-bottom: 1px solid #eee; padding-bottom: 4px; color: #1f3b57; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 150px; }
.card .v { font-size: 22px; font-weight: 600; } .card .k { font-size: 12px; color: #666; }
figure { margin: 8px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #f0f0f0; }
figcaption { font-size: 13px; color: #555; max-width: 900px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
th { background: #f3f5f7; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 12px; font-size: 14px; }
.cols { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
footer { font-size: 12px; color: #777; padding: 0 32px 24px; }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CellAssign report: {{ sample }}</title>
<style>{{ css|safe }}</style>
</head>
<body>
<header>
  <h1>CellAssign report: {{ sample }}</h1>
  <p>cellassign-nf {{ versions.get("cellassign-nf", "") }} &middot; generated {{ generated }}</p>
</header>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
<div class="cards">
{% for c in cards %}  <div class="card"><div class="v">{{ c[1] }}</div><div class="k">{{ c[0] }}</div></div>
{% endfor %}</div>
{% for s in sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
{% if s.intro %}<p>{{ s.intro }}</p>{% endif %}
{% for n in s.notes %}<p class="note">{{ n }}</p>{% endfor %}
<div class="cols">
{% for t in s.tables %}<div>
{% if t.title %}<h3 style="font-size:15px;margin:8px 0 2px">{{ t.title }}</h3>{% endif %}
<table>
<thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for cell in row %}<td{% if cell[1] %} class="n"{% endif %}>{{ cell[0] }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
{% endfor %}</div>
{% for f in s.figures %}<figure id="fig-{{ f.key }}">
<img src="{{ f.data_uri }}" alt="{{ f.title }}">
<figcaption>{{ f.caption }} <em>(also written as {{ f.path.name }})</em></figcaption>
</figure>
{% endfor %}
</section>
{% endfor %}
</main>
<footer>Self-contained page: figures are embedded; no network access is needed to view it.</footer>
</body>
</html>
"""


@dataclass
class _Table:
    header: list[str]
    rows: list[list[tuple[str, bool]]]
    title: str = ""


@dataclass
class _Section:
    id: str
    title: str
    intro: str = ""
    figures: list[ReportFigure] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> _Table:
    return _Table(list(header), [[(_fmt(v), _is_number(v)) for v in row] for row in rows], title)


def render_html(sample: str, sections: Sequence[_Section], cards: Sequence[tuple[str, str]],
                versions: Mapping[str, str]) -> str:
    """Fill the page template (jinja2, autoescaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(
        sample=sample, sections=sections, cards=cards, versions=versions, css=_CSS,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def make_report(
    annotated: str | Path,
    *,
    history: str | Path | pd.DataFrame,
    model: str | Path | ModelLike,
    qc_summary: str | Path | QCSummary,
    sample: str,
    outdir: str | Path,
    umap: bool = True,
    umap_max_cells: int = DEFAULT_UMAP_MAX_CELLS,
    params: str | Path | Mapping[str, Any] | None = None,
    multiqc: bool = True,
) -> ReportResult:
    """Write ``outdir/SAMPLE.report.html``, its PNG figures and the MultiQC files.

    ``history``, ``model``, ``qc_summary`` and ``params`` are paths to the step outputs, or the
    already loaded objects. The HTML page is written last.
    """
    sample = check_sample_name(sample)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(outdir, "exists and is not a folder", "Give a folder for --outdir.")
    adata = load_annotated(annotated) if not _is_anndata(annotated) else annotated  # type: ignore[assignment]
    hist = load_history(history) if not isinstance(history, pd.DataFrame) else check_history(history)
    mdl = load_model(model) if isinstance(model, (str, Path)) else model
    qc = load_qc_summary(qc_summary) if isinstance(qc_summary, (str, Path)) else qc_summary
    run_params = load_params(params) if isinstance(params, (str, Path)) or params is None else dict(params)
    outdir.mkdir(parents=True, exist_ok=True)

    cell_types = [str(t) for t in mdl.cell_types]
    summary = summarise(sample, adata, hist, qc, cell_types)
    figures: list[ReportFigure] = []

    def add(key: str, title: str, fig: Figure | None, caption: str) -> ReportFigure | None:
        if fig is None:
            return None
        png = figure_png(fig)
        path = write_bytes(outdir / f"{sample}_{key}.png", png)
        rf = ReportFigure(key, title, png, path, caption)
        figures.append(rf)
        return rf

    sections: list[_Section] = []

    # 1. cell types
    counts = summary.counts
    s = _Section("celltypes", "Cell types",
                 "Cells per assigned type. Cells whose top probability is below the threshold are "
                 "'unassigned'.")
    s.tables.append(_table(["cell type", "cells", "% of cells"],
                           [[t, int(n), round(100 * n / max(summary.n_cells, 1), 2)] for t, n in counts.items()]))
    fig_ct = add("celltype_counts", "Cell-type counts", plot_celltype_counts(counts),
                 "Number (and share) of cells assigned to each type.")
    s.figures += [f for f in [fig_ct] if f]
    sections.append(s)

    # 2. assignment probability
    s = _Section("probability", "Assignment probability",
                 "Each cell's highest posterior type probability (gamma). A mass near 1 means confident "
                 "assignments; many cells near 1/number-of-types means the markers do not separate them.")
    probs = adata.obs[PROB_KEY].to_numpy(dtype=float)
    thr = summary.min_prob
    s.tables.append(_table(["statistic", "value"], [
        ["threshold (min_prob)", thr],
        ["cells below threshold (unassigned)", summary.n_unassigned],
        ["% unassigned", round(100 * summary.n_unassigned / max(summary.n_cells, 1), 2)],
        ["median probability", float(np.nanmedian(probs)) if np.isfinite(probs).any() else None],
        ["cells with probability ≥ 0.9", int((probs >= 0.9).sum())],
    ]))
    if not np.isfinite(probs).all():
        s.notes.append(f"{int((~np.isfinite(probs)).sum()):,} cells have no probability (not scored by the model).")
    f = add("probability", "Assignment probability", plot_probability_histogram(probs, thr),
            "Distribution of the top assignment probability; dashed line: threshold.")
    s.figures += [f] if f else []
    sections.append(s)

    # 3. marker expression
    s = _Section("markers", "Marker expression by assigned type",
                 "Marker genes of the model (grouped by the type they mark) on normalised data "
                 "(normalize_total to 10,000, log1p). Colour: mean expression scaled 0-1 per gene; "
                 "size: fraction of cells expressing. Each type should over-express its own block.")
    norm = normalise(adata)
    rho = mdl.rho
    try:
        fig = plot_marker_expression(norm, rho, cell_types)
    except Exception as exc:  # a plotting failure must not cost the whole report
        log.warning("marker dot plot failed: %s", exc)
        fig = None
        s.notes.append(f"Marker dot plot could not be drawn ({type(exc).__name__}: {exc}).")
    if fig is None and not s.notes:
        s.notes.append("None of the model's marker genes are in the annotated data; no dot plot.")
    f = add("marker_expression", "Marker expression", fig,
            "Dot plot of marker genes by assigned type (scanpy).")
    s.figures += [f] if f else []
    sections.append(s)

    # 4. UMAP
    s = _Section("umap", "UMAP", "2-D UMAP of the normalised data (all genes; top 2,000 highly variable genes "
                 "when there are more), PCA, 15-nearest-neighbour graph; coloured by assigned type and by "
                 "assignment probability.")
    if not umap:
        s.notes.append("UMAP skipped (--no-umap).")
    elif adata.n_obs > umap_max_cells:
        s.notes.append(f"UMAP skipped: {adata.n_obs:,} cells is more than --umap-max-cells {umap_max_cells:,}. "
                       "Raise --umap-max-cells to compute it.")
    elif adata.n_obs < UMAP_MIN_CELLS:
        s.notes.append(f"UMAP skipped: only {adata.n_obs} cells.")
    else:
        t0 = time.perf_counter()
        emb = compute_umap(norm)
        log.info("UMAP of %d cells in %.1f s", emb.n_obs, time.perf_counter() - t0)
        f = add("umap", "UMAP", plot_umap(emb, cell_types),
                "Left: assigned type; right: top assignment probability (low-probability cells drawn on top).")
        s.figures += [f] if f else []
    sections.append(s)
    del norm

    # 5. training
    s = _Section("training", "Training",
                 "Mean log likelihood per cell on the training and held-out validation cells, per epoch; "
                 "one line per random restart, the selected restart (best final likelihood) in bold.")
    fin = hist.groupby("restart").tail(1)
    s.tables.append(_table(["restart", "epochs", "final train log lik.", "final validation log lik.", "selected"],
                           [[int(r.restart), int(r.epoch), r.train_loglik, r.val_loglik, bool(hist.loc[
                               hist.restart == r.restart, "selected"].any())] for r in fin.itertuples()]))
    if hist.empty:
        s.notes.append("The training history is empty.")
    else:
        f = add("training", "Training curves", plot_training_curves(hist),
                "Log likelihood per cell by epoch; bold: selected restart.")
        s.figures += [f] if f else []
    sections.append(s)

    # 6. delta
    s = _Section("delta", "Fitted over-expression (delta)",
                 "delta[g, c]: the fitted log fold over-expression of marker g in type c relative to "
                 "types it does not mark (exp(delta) = fold change). Grey cells: g is not a marker of c.")
    f = add("delta", "Delta heat map", plot_delta(mdl.delta, rho), "Fitted delta per marker gene and type.")
    s.figures += [f] if f else []
    sections.append(s)

    # 7. QC
    s = _Section("qc", "Quality control", "Cells and genes before and after QC filtering, the thresholds used, "
                 "and the size factors (total counts over all genes, divided by the mean) used by the model.")
    s.tables.append(_table(["", "before QC", "after QC"], [
        ["cells", qc.cells_before, qc.cells_after],
        ["genes", qc.genes_before, qc.genes_after],
    ], "Cells and genes"))
    removed = qc_removed_rows(qc.other)
    if removed:
        s.tables.append(_table(["reason", "rule", "cells removed"], removed, "Cells removed by QC, by reason "
                               "(a cell failing several rules counts in each)"))
    if qc.thresholds:
        s.tables.append(_table(["threshold", "value"], [[k, v] for k, v in flatten(qc.thresholds).items()],
                               "Thresholds"))
    other = {k: v for k, v in qc.other.items() if not (removed and k in ("removed", "rules"))}
    if other:
        s.tables.append(_table(["metric", "value"], [[k, v] for k, v in flatten(other).items()],
                               "Other QC numbers"))
    if SIZE_FACTOR_KEY in adata.obs:
        f = add("size_factors", "Size factors", plot_size_factors(adata.obs[SIZE_FACTOR_KEY]),
                "Distribution of size factors (log scale); dotted line: median.")
        s.figures += [f] if f else []
    else:
        s.notes.append(f"obs['{SIZE_FACTOR_KEY}'] is not in the annotated data; no size-factor plot.")
    sections.append(s)

    # 8. parameters, 9. versions
    s = _Section("parameters", "Parameters")
    train_params = dict(getattr(mdl, "train_params", {}) or {})
    s.tables.append(_table(["training setting (model file)", "value"], [[k, v] for k, v in flatten(train_params).items()])
                    if train_params else _table(["training setting (model file)", "value"], [["–", "none recorded"]]))
    if run_params:
        s.tables.append(_table(["run parameter (--params)", "value"], [[k, v] for k, v in flatten(run_params).items()]))
    else:
        s.notes.append("No --params file was given; only the model's training settings are shown.")
    sections.append(s)
    versions = software_versions()
    sections.append(_Section("versions", "Software versions",
                             tables=[_table(["software", "version"], list(versions.items()))]))

    notes = [n for sec in sections for n in sec.notes]
    mqc_files = write_multiqc_files(summary, outdir) if multiqc else []

    cards = [
        ("cells after QC", f"{summary.n_cells:,}"),
        ("assigned", f"{summary.pct_assigned:.1f}%"),
        ("most frequent type", summary.top_type or "–"),
        ("cell types in model", str(len(cell_types))),
        ("final validation log lik.", _fmt(summary.final_val_loglik)),
    ]
    page = render_html(sample, sections, cards, versions)
    html_path = write_text(outdir / f"{sample}.report.html", page)
    log.info("report written to %s", html_path)
    return ReportResult(html_path, [f.path for f in figures], mqc_files, summary, notes)


def _is_anndata(obj: Any) -> bool:
    return type(obj).__name__ == "AnnData"


# --------------------------------------------------------------------------------------------
# MultiQC custom content
# --------------------------------------------------------------------------------------------


def _yaml_dump(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _tsv_cell(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in "\t\n\r"):
        raise InputError(None, f"name '{text}' contains a tab or newline", "Rename the cell type or sample.")
    return text


def write_multiqc_files(summary: SampleSummary, outdir: str | Path) -> list[Path]:
    """Write the MultiQC custom-content files of one sample into ``outdir``.

    * ``NAME_cellassign_general_stats_mqc.yaml``: general statistics row (cells in, cells after
      QC, % assigned, most frequent type, final validation log likelihood);
    * ``NAME_celltype_counts_mqc.tsv``: cells per type (stacked bar graph; also read by
      ``cohort_table``);
    * ``NAME_cellassign_training_mqc.yaml``: validation log likelihood by epoch of the selected
      restart (line graph);
    * ``NAME_cellassign_qc_mqc.yaml``: QC summary (table).

    Each file carries a fixed section ``id``, so MultiQC merges all samples into one section.
    """
    outdir = Path(outdir)
    s = summary.sample
    written: list[Path] = []

    gs_data: dict[str, Any] = {
        "cells_in": summary.qc.cells_before,
        "cells_after_qc": summary.qc.cells_after,
        "pct_assigned": round(summary.pct_assigned, 2),
        "top_celltype": summary.top_type,
        "final_val_loglik": None if summary.final_val_loglik is None else round(summary.final_val_loglik, 4),
    }
    gs_headers = [
        {"cells_in": {"title": "Cells in", "description": "Cells before QC filtering", "format": "{:,.0f}",
                      "scale": "Blues", "min": 0}},
        {"cells_after_qc": {"title": "Cells after QC", "description": "Cells that passed QC (annotated)",
                            "format": "{:,.0f}", "scale": "Greens", "min": 0}},
        {"pct_assigned": {"title": "% assigned", "description": "Cells with top probability at or above the "
                          "threshold (not 'unassigned')", "suffix": "%", "min": 0, "max": 100,
                          "scale": "RdYlGn", "format": "{:,.1f}"}},
        {"top_celltype": {"title": "Top type", "description": "Most frequent assigned cell type"}},
        {"final_val_loglik": {"title": "Val. log lik.", "description": "Final validation log likelihood per "
                              "cell of the selected restart", "format": "{:,.3f}", "scale": "Purples"}},
    ]
    gs_data = {k: v for k, v in gs_data.items() if v is not None}
    gs_headers = [h for h in gs_headers if next(iter(h)) in gs_data]
    gs = {
        "id": "cellassign_general_stats",
        "plot_type": "generalstats",
        "namespace": "CellAssign",
        "pconfig": gs_headers,
        "data": {s: gs_data},
    }
    written.append(write_text(outdir / f"{s}_cellassign_general_stats_mqc.yaml", _yaml_dump(gs)))

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
    lines.append("\t".join([_tsv_cell(s), *(str(int(n)) for n in summary.counts.values)]))
    written.append(write_text(outdir / f"{s}{COUNTS_SUFFIX}", "\n".join(lines) + "\n"))

    if not summary.val_curve.empty:
        curve = {
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
            "data": {s: {int(e): round(float(v), 5) for e, v in summary.val_curve.items()}},
        }
        written.append(write_text(outdir / f"{s}_cellassign_training_mqc.yaml", _yaml_dump(curve)))

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
    qc_row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in qc_row.items() if v is not None}
    headers: dict[str, dict[str, Any]] = {
        "cells_before": {"title": "Cells before", "format": "{:,.0f}"},
        "cells_after": {"title": "Cells after", "format": "{:,.0f}"},
        "genes_before": {"title": "Genes before", "format": "{:,.0f}"},
        "genes_after": {"title": "Genes after", "format": "{:,.0f}"},
    }
    qc_doc = {
        "id": "cellassign_qc",
        "section_name": "CellAssign: QC",
        "description": "Cells and genes before and after QC filtering, and the thresholds used.",
        "plot_type": "table",
        "pconfig": {"id": "cellassign_qc_table", "title": "CellAssign: QC summary", "col1_header": "Sample"},
        "headers": {k: headers.get(k, {"title": k}) for k in qc_row},
        "data": {s: qc_row},
    }
    written.append(write_text(outdir / f"{s}_cellassign_qc_mqc.yaml", _yaml_dump(qc_doc)))
    return written


# --------------------------------------------------------------------------------------------
# Cohort table
# --------------------------------------------------------------------------------------------


def read_counts_mqc(path: str | Path) -> pd.DataFrame:
    """Read a ``NAME_celltype_counts_mqc.tsv`` (comment header, then Sample + types)."""
    path = Path(path)
    _require_file(path, "cell-type counts file")
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    fix = "Give the *_celltype_counts_mqc.tsv written by `cellassign-nf report`."
    if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows):
        raise InputError(path, "is not a cell-type counts table (header and one row per sample)", fix)
    df = pd.DataFrame(rows[1:], columns=rows[0]).set_index(rows[0][0])
    try:
        df = df.apply(pd.to_numeric).astype(int)
    except (ValueError, TypeError) as exc:
        raise InputError(path, "has non-integer counts", fix) from exc
    df.index.name = "sample"
    return df


def read_predictions_counts(path: str | Path) -> pd.DataFrame:
    """Cell-type counts of one predictions TSV; the sample is the name before ``.predictions.tsv``."""
    path = Path(path)
    _require_file(path, "predictions file")
    fix = "Give the SAMPLE.predictions.tsv written by `cellassign-nf annotate`."
    try:
        pred = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise InputError(path, f"cannot be read as a TSV table ({exc})", fix) from exc
    if CELLTYPE_KEY not in pred.columns:
        raise InputError(path, f"has no '{CELLTYPE_KEY}' column", fix)
    name = path.name[: -len(PREDICTIONS_SUFFIX)] if path.name.endswith(PREDICTIONS_SUFFIX) else path.stem
    skip = {"cell", CELLTYPE_KEY, PROB_KEY, "sample"}
    types = [c for c in pred.columns if c not in skip]
    counts = pred[CELLTYPE_KEY].astype(str).value_counts()
    order = [t for t in types if t != UNASSIGNED] + [t for t in counts.index if t not in types and t != UNASSIGNED]
    order.append(UNASSIGNED)
    row = counts.reindex(order, fill_value=0).astype(int)
    return pd.DataFrame([row.to_numpy()], index=pd.Index([name], name="sample"), columns=order)


def cohort_table(inputs: Sequence[str | Path]) -> pd.DataFrame:
    """Samples x cell types counts from report folders, counts files or predictions TSVs.

    Each input is a folder (every ``*_celltype_counts_mqc.tsv`` in it), a
    ``*_celltype_counts_mqc.tsv`` file, or a ``*.predictions.tsv`` file. Types are in order of
    first appearance, ``unassigned`` last; a type absent from a sample counts 0.
    """
    if not inputs:
        raise InputError(None, "no inputs given", "Give report folders, *_celltype_counts_mqc.tsv or "
                         "*.predictions.tsv files.")
    frames: list[pd.DataFrame] = []
    sources: dict[str, Path] = {}
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = sorted(p.glob(f"*{COUNTS_SUFFIX}"))
            if not files:
                raise InputError(p, f"holds no *{COUNTS_SUFFIX} file",
                                 "Give the --outdir of `cellassign-nf report`, or the files themselves.")
            parts = [(f, read_counts_mqc(f)) for f in files]
        elif p.name.endswith(COUNTS_SUFFIX):
            parts = [(p, read_counts_mqc(p))]
        elif p.name.endswith(PREDICTIONS_SUFFIX) or (p.suffix == ".tsv" and p.exists()):
            parts = [(p, read_predictions_counts(p))]
        else:
            _require_file(p, "input")
            raise InputError(p, "is neither a report folder, a counts file nor a predictions TSV",
                             f"Give report folders, *{COUNTS_SUFFIX} or *{PREDICTIONS_SUFFIX} files.")
        for src, df in parts:
            for name in df.index:
                if name in sources:
                    raise InputError(src, f"sample '{name}' also comes from {sources[name]}",
                                     "Give each sample once.")
                sources[name] = src
            frames.append(df)
    order: list[str] = []
    for df in frames:
        order += [c for c in df.columns if c not in order and c != UNASSIGNED]
    if any(UNASSIGNED in df.columns for df in frames):
        order.append(UNASSIGNED)
    table = pd.concat(frames).reindex(columns=order).fillna(0).astype(int)
    table.index.name = "sample"
    return table


def write_cohort_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the cohort table as TSV (``sample`` then one column per type) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=True, index_label="sample")
    return path


__all__ = [
    "ModelLike", "QCSummary", "ReportResult", "SampleSummary", "celltype_counts", "cohort_table",
    "compute_umap", "load_annotated", "load_history", "load_model", "load_params", "load_qc_summary",
    "make_report", "parse_qc_summary", "plot_celltype_counts", "plot_delta", "plot_marker_expression",
    "plot_probability_histogram", "plot_size_factors", "plot_training_curves", "plot_umap", "read_counts_mqc",
    "read_predictions_counts", "summarise", "write_cohort_table", "write_multiqc_files",
]
