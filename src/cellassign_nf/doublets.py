"""Doublets: droplets that hold two cells, found in each sample with Scrublet (scanpy's
``sc.pp.scrublet``; Wolock et al. 2019), docs/steps.md "doublets".

Scrublet simulates doublets by adding pairs of the sample's own cells, embeds observed and
simulated cells together (PCA of normalised counts) and scores each cell by the share of
simulated doublets among its nearest neighbours. A cell is a predicted doublet when its score is
above a threshold; here the threshold is Otsu's (``skimage.filters.threshold_otsu``) on the
simulated doublets' scores, which splits them into those that look like singlets (two cells of
one type) and those that do not, but never below the score of a cell with a share
``doublet_min_share`` of simulated doublets among its neighbours (where the simulated doublets do
not stand apart, Otsu splits them anyway). scanpy's own automatic threshold
(``threshold_minimum`` of the same histogram) placed it above nearly every doublet on some
simulated libraries (docs/steps.md, "Doublets").

Doublets exist only within one library: the step runs per sample, also in cohort mode (before
the merge). What it hands on is a small per-cell table (``DOUBLET_COLUMNS``) and a summary (JSON:
threshold, rate, histograms, warnings) that ``train``, ``predict`` and ``annotate`` read.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .errors import InputError
from .keys import DOUBLET_COLUMNS, DOUBLET_SCORE_KEY, PREDICTED_DOUBLET_KEY, QC_WARNINGS_KEY, SAMPLE_KEY
from .settings import DoubletSettings

log = logging.getLogger(__name__)

SIM_DOUBLET_RATIO = 2.0  # simulated doublets per observed cell (scanpy's default, passed to sc.pp.scrublet)
HISTOGRAM_BINS = 50  # bins of the score histograms over [0, 1] that the summary keeps (the report draws them)


def find_doublets(adata: ad.AnnData, settings: DoubletSettings | None = None, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Each cell's doublet score and call (``DOUBLET_COLUMNS``), and the sample's summary.

    ``adata.X`` holds raw counts. A cell is a doublet when its score is above the threshold: the
    larger of Otsu's threshold of the simulated doublets' scores and the score of a cell with a
    share ``doublet_min_share`` of simulated doublets among its neighbours. A
    sample is scored on its ``doublet_genes`` most variable genes; one of more than
    ``doublet_chunk_cells`` cells in random parts of about equal size,
    each with its own simulated doublets (as scanpy's ``batch_key`` would, one part at a time); one
    threshold serves them all.
    With ``settings.doublets == "none"``, or fewer cells than ``doublet_min_cells``, no cell is
    called a doublet (scores NaN) and the summary says why.

    The summary: ``method``, ``expected_rate``, ``threshold``, ``n_cells``, ``n_doublets``,
    ``rate``, ``rate_text`` (for tables), ``detectable`` (share of simulated doublets above the
    threshold), ``parts``, ``histogram`` (``edges``, ``observed``, ``simulated`` counts), ``note``
    (one sentence for people) and ``warnings`` (a rate far above the expected one)."""
    settings = settings or DoubletSettings()
    n = adata.n_obs
    if settings.doublets == "none":
        return _no_calls(adata.obs_names, settings, "doublet detection is off (--doublets none)")
    if n < settings.doublet_min_cells:
        return _no_calls(adata.obs_names, settings, f"doublet detection skipped: {n} cells, fewer than "
                                                    f"--doublet-min-cells {settings.doublet_min_cells}")
    parts = max(1, math.ceil(n / settings.doublet_chunk_cells))
    scores, simulated = _scrublet_scores(adata, settings.expected_doublet_rate, parts, settings.doublet_genes, seed)
    threshold = max(otsu_threshold(simulated), score_of_share(settings.doublet_min_share, settings.expected_doublet_rate))
    predicted = scores > threshold
    table = pd.DataFrame({DOUBLET_SCORE_KEY: scores, PREDICTED_DOUBLET_KEY: predicted}, index=adata.obs_names)
    summary = _summary(settings, n, int(predicted.sum()), threshold, float((simulated > threshold).mean()),
                       scores, simulated)
    return table, {**summary, "parts": parts}


def score_of_share(share: float, expected_rate: float, sim_ratio: float = SIM_DOUBLET_RATIO) -> float:
    """The Scrublet score of a cell whose nearest neighbours are this share of simulated doublets:
    Scrublet's Bayesian estimate q rho / r / (1 - rho - q (1 - rho - rho / r)), with q the share,
    rho the expected doublet rate and r the simulated doublets per cell (Wolock et al. 2019)."""
    q, rho, r = share, expected_rate, sim_ratio
    return float(q * rho / r / (1 - rho - q * (1 - rho - rho / r)))


def otsu_threshold(simulated: np.ndarray) -> float:
    """Otsu's threshold of the simulated doublets' scores (one value when they are all the same)."""
    from skimage.filters import threshold_otsu

    values = np.asarray(simulated, dtype=np.float64)
    return float(values[0]) if np.ptp(values) == 0 else float(threshold_otsu(values, nbins=256))


def _scrublet_scores(adata: ad.AnnData, expected_rate: float, parts: int, n_genes: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scrublet's scores of the observed cells and of all simulated doublets, on ``parts`` random
    parts of the cells, one after the other (memory: the counts once, and one part's work), on the
    ``n_genes`` most variable genes (:func:`variable_genes`). scanpy's defaults otherwise; exact
    neighbours: no JIT start-up, and as fast at a part's size."""
    part = np.random.default_rng(seed).permutation(np.arange(adata.n_obs) % parts)
    genes = variable_genes(adata.X[np.flatnonzero(part == 0)], n_genes)
    scores = np.empty(adata.n_obs, dtype=np.float64)
    simulated = []
    for p in range(parts):
        rows = np.flatnonzero(part == p)
        counts = adata.X[rows] if genes is None else adata.X[rows][:, genes]
        scores[rows], sim = _scrublet_part(counts, expected_rate, seed)
        simulated.append(sim)
        if parts > 1:
            log.info("doublets: part %d of %d scored (%d cells)", p + 1, parts, len(rows))
    return scores, np.concatenate(simulated)


def variable_genes(counts, n_genes: int) -> np.ndarray | None:
    """Positions of the ``n_genes`` most variable genes of these cells (scanpy's
    ``highly_variable_genes``, Seurat's dispersion, on log-normalised counts), or None for all
    genes (``n_genes`` 0, or no more genes than that). Scrublet then picks its own genes among
    them; its cost grows with the genes it keeps (dense, centred principal components)."""
    import scanpy as sc

    if n_genes == 0 or counts.shape[1] <= n_genes:
        return None
    cells = ad.AnnData(counts.astype(np.float32))
    sc.pp.normalize_total(cells)
    sc.pp.log1p(cells)
    sc.pp.highly_variable_genes(cells, n_top_genes=n_genes)
    return np.flatnonzero(cells.var["highly_variable"].to_numpy())


def _scrublet_part(counts, expected_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import scanpy as sc

    from .numba_cache import cache_umap_compiles

    cache_umap_compiles()  # Scrublet's neighbour graph is umap-learn's
    cells = ad.AnnData(counts if counts.dtype == np.float32 else counts.astype(np.float32))
    # threshold=1 skips scanpy's own threshold (the call is made here); the scores do not depend on
    # it, and its rate estimates for that threshold (0 / 0) are not used
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="invalid value encountered in scalar divide")
        sc.pp.scrublet(cells, expected_doublet_rate=expected_rate, sim_doublet_ratio=SIM_DOUBLET_RATIO,
                       threshold=1.0, use_approx_neighbors=False, random_state=seed, verbose=False)
    return (cells.obs["doublet_score"].to_numpy(dtype=np.float64),
            np.asarray(cells.uns["scrublet"]["doublet_scores_sim"], dtype=np.float64))


def _summary(settings: DoubletSettings, n_cells: int, n_doublets: int, threshold: float, detectable: float,
             scores: np.ndarray, simulated: np.ndarray) -> dict:
    rate = n_doublets / max(n_cells, 1)
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    found = []
    if rate > settings.warn_doublet_factor * settings.expected_doublet_rate:
        found.append(f"{100 * rate:.1f}% of the cells are predicted doublets, more than "
                        f"{settings.warn_doublet_factor:g} x the expected {100 * settings.expected_doublet_rate:g}%: "
                        "the library may have been overloaded, or hold cells in states Scrublet mistakes for "
                        "doublets (check the report's doublet histogram)")
    return {
        "method": "scrublet", "expected_rate": settings.expected_doublet_rate, "threshold": threshold,
        "n_cells": n_cells, "n_doublets": n_doublets, "rate": rate, "detectable": detectable,
        "histogram": {"edges": edges.tolist(),
                      "observed": np.histogram(np.clip(scores, 0, 1), edges)[0].tolist(),
                      "simulated": np.histogram(np.clip(simulated, 0, 1), edges)[0].tolist()},
        "rate_text": f"{100 * rate:.1f}%",
        "note": f"{n_doublets} of {n_cells} cells ({100 * rate:.1f}%) are predicted doublets (Scrublet, threshold "
                f"{threshold:.3f}; expected rate {100 * settings.expected_doublet_rate:g}%)",
        QC_WARNINGS_KEY: found,
    }


def _no_calls(cells: pd.Index, settings: DoubletSettings, note: str) -> tuple[pd.DataFrame, dict]:
    table = pd.DataFrame({DOUBLET_SCORE_KEY: np.full(len(cells), np.nan), PREDICTED_DOUBLET_KEY: False}, index=cells)
    method = "none" if settings.doublets == "none" else "skipped"
    return table, {"method": method, "expected_rate": settings.expected_doublet_rate, "threshold": None,
                   "n_cells": len(cells), "n_doublets": 0, "rate": 0.0,
                   "rate_text": "not checked" if method == "none" else "skipped (too few cells)",
                   "note": note, QC_WARNINGS_KEY: []}


def read_doublets(paths: Sequence[str | Path], cells: pd.Index) -> pd.DataFrame:
    """The doublet table(s) of ``doublets`` (one per sample) for ``cells``: rows matched by
    barcode, or by ``SAMPLE:BARCODE`` for the cells of a merged cohort (the tables' ``sample``
    column). A cell of ``cells`` missing from every table is one error."""
    from .io import read_table

    tables = []
    for path in paths:
        table = read_table(path)
        table.index = table.index.astype(str)
        if list(table.columns[:2]) != list(DOUBLET_COLUMNS):
            raise InputError(path, f"is not a doublet table (columns {', '.join(map(str, table.columns))})",
                             "Give the table written by 'cellassign-nf doublets'.")
        tables.append(table)
    table = pd.concat(tables) if tables else pd.DataFrame(columns=list(DOUBLET_COLUMNS))
    if SAMPLE_KEY in table:  # a merged cohort's cells are SAMPLE:BARCODE (steps.merge)
        cohort = table[SAMPLE_KEY].astype(str) + ":" + table.index
        if cells.isin(cohort).sum() > cells.isin(table.index).sum():
            table.index = cohort
    missing = cells.difference(table.index)
    if len(missing):
        raise InputError(", ".join(map(str, paths)), f"has no doublet call for {len(missing)} of the {len(cells)} "
                         f"cells (e.g. {', '.join(map(str, missing[:3]))})",
                         "Give the doublet table(s) written by 'cellassign-nf doublets' for these data.")
    out = table.loc[~table.index.duplicated()].reindex(cells)[list(DOUBLET_COLUMNS)]
    out[DOUBLET_SCORE_KEY] = pd.to_numeric(out[DOUBLET_SCORE_KEY], errors="coerce")
    out[PREDICTED_DOUBLET_KEY] = out[PREDICTED_DOUBLET_KEY].astype(str).str.lower().isin(("true", "1"))
    return out
