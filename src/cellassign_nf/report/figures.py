"""The report's figures: each a small function that takes plain data (Series, DataFrames,
AnnData) and returns a matplotlib figure, so each can be reused from a notebook."""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot (and scanpy) are imported: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import display_names, relabel_genes  # noqa: E402
from ..markers import markers_by_type  # noqa: E402 - re-exported: one place for {type: [markers]}
from ..size_factors import normalise  # noqa: E402,F401 - re-exported: the report's normalisation
from .base import (  # noqa: E402
    CELLTYPE_KEY, DPI, HVG_THRESHOLD, PROB_KEY, UMAP_EPOCHS, UNASSIGNED, UNASSIGNED_COLOUR,
)

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.figure import Figure


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
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(counts) + 1.3), layout="tight")
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
    return fig


def plot_probability_histogram(probs: np.ndarray | pd.Series, min_prob: float | None) -> Figure:
    """Histogram of each cell's top assignment probability, with the threshold line."""
    probs = np.asarray(probs, dtype=float)
    probs = probs[np.isfinite(probs)]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="tight")
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
    return fig


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
    shown = dict(zip(genes, relabel_genes(genes, display_names(sub))))  # symbols for ID-indexed data
    sub.var_names = [shown[g] for g in genes]
    var_names = {t: [shown[g] for g in gs] for t, gs in var_names.items()}
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


def compute_umap(norm: ad.AnnData, seed: int = 0, copy: bool = True) -> ad.AnnData:
    """UMAP of the normalised data: HVG (if many genes), PCA, neighbours, UMAP (scanpy).
    ``copy=False`` works on ``norm`` itself (no second copy of its matrix)."""
    import scanpy as sc

    from ..numba_cache import cache_umap_compiles

    cache_umap_compiles()
    emb = norm.copy() if copy else norm
    if emb.n_vars > HVG_THRESHOLD:
        sc.pp.highly_variable_genes(emb, n_top_genes=HVG_THRESHOLD, flavor="seurat")
        emb = emb[:, emb.var["highly_variable"]].copy()
    n_comps = int(max(2, min(50, emb.n_obs - 1, emb.n_vars - 1)))
    sc.pp.pca(emb, n_comps=n_comps, random_state=seed)
    # Exact neighbours (scikit-learn), not scanpy's default PyNNDescent from 8,192 cells on: the
    # pinned pynndescent returns a scipy sparse *array*, which scanpy 1.11's neighbour code
    # cannot read (`'csr_array' object has no attribute 'getnnz'`). Exact search is also
    # deterministic and takes seconds at the 50,000-cell cap on PCA coordinates.
    sc.pp.neighbors(emb, n_neighbors=int(min(15, emb.n_obs - 1)), n_pcs=n_comps, random_state=seed,
                    transformer="sklearn")
    sc.tl.umap(emb, random_state=seed, maxiter=UMAP_EPOCHS)
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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.6), layout="tight")
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
    return fig


def plot_training_curves(history: pd.DataFrame) -> Figure:
    """Train and validation log likelihood per epoch: one line per restart, selected one bold."""
    has_val = history["val_loglik"].notna().any()
    ncols = 2 if has_val else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.0), squeeze=False, layout="tight")
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
    fig, ax = plt.subplots(figsize=(min(max(3.5 + 0.7 * n_types, 5.5), 30), min(max(1.5 + 0.26 * n_genes, 3.5), 60)),
                           layout="tight")
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
    return fig


def plot_specificity(specificity: pd.DataFrame) -> Figure:
    """Heat map of the marker-specificity table: rows are the panel's types (their markers),
    columns the groups cells were assigned to; the cell of a type's own group is outlined. A
    good panel is brightest on the outlined cells."""
    values = specificity.to_numpy(dtype=float)
    n_types, n_groups = values.shape
    fig, ax = plt.subplots(figsize=(min(max(3.5 + 0.8 * n_groups, 5.5), 30), min(max(1.8 + 0.45 * n_types, 3.2), 40)),
                           layout="tight")
    im = ax.imshow(values, aspect="auto", cmap="YlGnBu", interpolation="nearest")
    ax.set_xticks(range(n_groups), labels=[str(c) for c in specificity.columns], rotation=40, ha="right")
    ax.set_yticks(range(n_types), labels=[str(t) for t in specificity.index])
    ax.set_xlabel("cells assigned to")
    ax.set_ylabel("markers of")
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 1.0
    for (ti, gi), v in np.ndenumerate(values):
        if np.isfinite(v) and n_types * n_groups <= 600:
            ax.text(gi, ti, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v > 0.6 * top else "black")
    for ti, t in enumerate(specificity.index):
        if t in specificity.columns:
            gi = list(specificity.columns).index(t)
            ax.add_patch(plt.Rectangle((gi - 0.5, ti - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2))
    fig.colorbar(im, ax=ax, shrink=0.7, label="mean log1p(counts per 10,000)")
    ax.set_title("Marker specificity (outlined: a type's own cells)")
    return fig


def plot_size_factors(size_factors: np.ndarray | pd.Series) -> Figure:
    """Histogram of the per-cell size factors (log scale)."""
    sf = np.asarray(size_factors, dtype=float)
    sf = sf[np.isfinite(sf) & (sf > 0)]
    fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="tight")
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
    return fig


def plot_doublet_scores(histogram: dict, threshold: float | None) -> Figure:
    """Histograms of the doublet scores of the cells and of Scrublet's simulated doublets (each as
    a share of its own total), with the threshold line."""
    edges = np.asarray(histogram["edges"], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="tight")
    for key, colour, name in (("simulated", "#c0392b", "simulated doublets"), ("observed", "#3b75af", "cells")):
        counts = np.asarray(histogram[key], dtype=float)
        ax.stairs(counts / max(counts.sum(), 1.0), edges, color=colour, linewidth=1.5, label=name,
                  fill=key == "observed", alpha=0.6 if key == "observed" else 1.0)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("doublet score (Scrublet)")
    ax.set_ylabel("share of cells")
    ax.set_title("Doublet scores")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes, drawn once, and close it. A figure without a layout engine
    (scanpy's dot plot, whose labels reach past its own grid) is cropped to what it draws, which
    draws it twice."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if fig.get_layout_engine() is None else None,
                facecolor="white")
    plt.close(fig)
    return buf.getvalue()
