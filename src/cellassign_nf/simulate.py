"""Counts with known cell types: the project's simulators (tests, demo data, benchmarks).

:func:`simulate` draws from the CellAssign model itself; :func:`simulate_library` draws a
library that is *not* the model (see its docstring), with doublets if asked, to check what the
model cannot check on its own data: doublet detection, cells of types the panel lacks.

The generative model of docs/model.md (section 2), per cell n, gene g, type c and batch
b (the first batch is the reference):

    z[n]        ~ Categorical(pi)                                    obs["true_celltype"]
    s[n]        ~ LogNormal(0, size_factor_sd)                       per-cell capture efficiency
    beta0[g]    ~ Normal(beta0_mean, beta0_sd)                       var["beta0"]
    delta[g,c]  ~ Uniform(delta_range)                               where rho[g,c] = 1
                  or LogNormal(log(log(fold_change)), delta_sd)      (when fold_change is given)
    beta[g,b]   ~ Normal(0, batch_effect)                            b after the reference
    log mu[n,g] = log s[n] + beta0[g] + beta[g, batch[n]] + rho[g,z[n]] * delta[g,z[n]]
    x[n,g]      ~ NegativeBinomial(mean mu[n,g], inverse dispersion phi[g])
    phi[g]      = phi * exp(phi_sd * Normal(0, 1))

Genes: the markers (rows of ``rho``, in order), then ``n_other_genes`` genes without a type
effect (``GENE0000``...), then ``n_mito_genes`` (``MT-G0``...). :func:`random_markers` draws a
marker matrix of any size for benchmarks.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .keys import SIZE_FACTOR_KEY, TRUE_CELLTYPE_KEY, TRUE_DOUBLET_KEY
from .markers import marker_list_to_matrix

_CHUNK_VALUES = 2_000_000  # cells x genes drawn at once: bounds the float64 temporaries


def random_markers(n_markers: int, n_types: int, p_shared: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """A binary marker matrix (``marker_0000``... x ``type_00``...): every gene marks one type,
    types balanced, and a fraction ``p_shared`` of the genes marks a second type as well."""
    if n_markers < n_types:
        raise ValueError(f"need at least one marker per type: {n_markers} markers < {n_types} types")
    rng = np.random.default_rng(seed)
    rho = np.zeros((n_markers, n_types), dtype=np.int64)
    owner = rng.permutation(np.arange(n_markers) % n_types)
    rho[np.arange(n_markers), owner] = 1
    shared = np.flatnonzero(rng.random(n_markers) < p_shared)
    if n_types > 1:
        rho[shared, (owner[shared] + rng.integers(1, n_types, size=shared.size)) % n_types] = 1
    return pd.DataFrame(rho, index=[f"marker_{g:04d}" for g in range(n_markers)],
                        columns=[f"type_{c:02d}" for c in range(n_types)])


def simulate(
    markers: Mapping[str, Sequence[str]] | pd.DataFrame,
    n_cells: int = 1000,
    n_other_genes: int = 200,
    n_mito_genes: int = 0,
    proportions: Sequence[float] | None = None,
    delta_range: tuple[float, float] = (2.0, 3.0),
    batches: Sequence[str] = ("batch1",),
    batch_effect: float = 0.0,
    phi: float = 5.0,
    seed: int = 0,
    gene_seed: int | None = None,
    *,
    fold_change: float | None = None,
    delta_sd: float = 0.2,
    beta0_mean: float = -0.5,
    beta0_sd: float = 1.0,
    other_beta0_mean: float | None = None,
    phi_sd: float = 0.0,
    proportion_sd: float | None = None,
    min_cells_per_type: int = 0,
    size_factor_sd: float = 0.4,
    size_factors: Literal["true", "library"] = "true",
    sparse: bool = True,
) -> ad.AnnData:
    """Counts from the CellAssign model (see the module docstring for the model).

    Cells draw with ``seed``, gene parameters with ``gene_seed`` (default ``seed``), so several
    samples can share their genes. Options beyond the defaults:

    * ``fold_change``/``delta_sd``: log-normal ``delta`` around ``log(fold_change)`` instead of
      uniform on ``delta_range``;
    * ``other_beta0_mean``: base expression mean of the non-marker genes (default
      ``beta0_mean``);
    * ``phi_sd``: per-gene dispersion, log-normal around ``phi``;
    * ``proportions`` fixed, or ``proportion_sd`` drawn log-normal (default: equal);
      ``min_cells_per_type`` cells of every type at least;
    * ``size_factors="library"``: ``obs["size_factor"]`` from the counts as the pipeline computes
      it (total counts over all genes / mean), the truth kept in ``obs["size_factor_true"]``;
    * ``sparse=False``: dense float32 ``X`` (big benchmark data).

    Returns an AnnData with ``obs["true_celltype"]``, ``obs["batch"]``, ``obs["size_factor"]``,
    ``var["beta0"]`` and in ``uns["simulation"]`` the true ``delta`` (markers x types), ``beta``
    (markers x batches), ``phi`` and ``pi``.
    """
    rng = np.random.default_rng(seed)
    gene_rng = np.random.default_rng(seed if gene_seed is None else gene_seed)
    rho = markers if isinstance(markers, pd.DataFrame) else marker_list_to_matrix(markers)
    types, G = list(rho.columns), len(rho)
    genes = list(rho.index) + [f"GENE{i:04d}" for i in range(n_other_genes)] + [f"MT-G{i}" for i in range(n_mito_genes)]

    pi = _proportions(len(types), proportions, proportion_sd, rng)
    z = _cell_types(n_cells, pi, min_cells_per_type, rng)
    beta0 = _base_expression(len(genes), G, beta0_mean, beta0_sd, other_beta0_mean, gene_rng)
    delta = _over_expression(rho, delta_range, fold_change, delta_sd, gene_rng)
    batch = rng.integers(0, len(batches), n_cells)
    beta = np.zeros((len(genes), len(batches)))
    if len(batches) > 1:
        beta[:, 1:] = gene_rng.normal(0.0, batch_effect, (len(genes), len(batches) - 1))
    phi_g = np.exp(np.log(phi) + phi_sd * gene_rng.standard_normal(len(genes))) if phi_sd else np.float64(phi)
    s = rng.lognormal(0.0, size_factor_sd, n_cells)

    X = _counts(s, beta0, beta, batch, delta, z, phi_g, rng, sparse)
    adata = ad.AnnData(X)
    adata.obs_names = [f"cell{i:06d}" for i in range(n_cells)]
    adata.var_names = genes
    adata.obs[TRUE_CELLTYPE_KEY] = pd.Categorical(np.asarray(types)[z], categories=types)
    adata.obs["batch"] = pd.Categorical(np.asarray(batches)[batch], categories=list(batches))
    if size_factors == "library":
        library = np.maximum(np.asarray(X.sum(axis=1), dtype=np.float64).ravel(), 1.0)
        adata.obs[SIZE_FACTOR_KEY] = library / library.mean()
        adata.obs["size_factor_true"] = s
    else:
        adata.obs[SIZE_FACTOR_KEY] = s
    adata.var["beta0"] = beta0
    adata.uns["simulation"] = {"delta": delta, "beta": beta[:G], "phi": phi_g, "pi": pi}
    return adata


def _proportions(C: int, proportions, proportion_sd, rng) -> np.ndarray:
    if proportions is not None:
        p = np.asarray(proportions, float)
        return p / p.sum()
    if proportion_sd is not None:
        w = np.exp(proportion_sd * rng.standard_normal(C))
        return w / w.sum()
    return np.full(C, 1.0 / C)


def _cell_types(n_cells: int, pi: np.ndarray, min_per_type: int, rng) -> np.ndarray:
    C = len(pi)
    k = min(min_per_type, n_cells // C)
    if not k:
        return rng.choice(C, size=n_cells, p=pi)
    z = np.concatenate([np.repeat(np.arange(C), k), rng.choice(C, n_cells - k * C, p=pi)])
    return rng.permutation(z)


def _base_expression(G_all: int, G: int, mean: float, sd: float, other_mean: float | None, rng) -> np.ndarray:
    loc = np.full(G_all, mean)
    if other_mean is not None:
        loc[G:] = other_mean
    return loc + sd * rng.standard_normal(G_all)


def _over_expression(rho: pd.DataFrame, delta_range, fold_change, delta_sd, rng) -> np.ndarray:
    if fold_change is None:
        return rng.uniform(*delta_range, size=rho.shape) * rho.to_numpy()
    return np.exp(np.log(np.log(fold_change)) + delta_sd * rng.standard_normal(rho.shape)) * rho.to_numpy()


def _counts(s, beta0, beta, batch, delta, z, phi, rng, sparse: bool):
    """Negative binomial counts, drawn in chunks of cells (same stream as one draw)."""
    n_cells, (G_all, G) = len(s), (len(beta0), len(delta))
    chunk = max(1, _CHUNK_VALUES // max(1, G_all))
    parts, dense = [], None if sparse else np.empty((n_cells, G_all), dtype=np.float32)
    for lo in range(0, n_cells, chunk):
        hi = min(n_cells, lo + chunk)
        log_mu = np.log(s[lo:hi])[:, None] + beta0[None, :] + beta[:, batch[lo:hi]].T
        log_mu[:, :G] += delta[:, z[lo:hi]].T
        mu = np.exp(log_mu)
        x = rng.negative_binomial(phi, phi / (phi + mu)).astype(np.float32)
        if sparse:
            parts.append(sp.csr_matrix(x))
        else:
            dense[lo:hi] = x
    return sp.vstack(parts, format="csr") if sparse else dense


def simulate_library(
    markers: Mapping[str, Sequence[str]] | pd.DataFrame,
    n_cells: int = 6000,
    n_other_genes: int = 2000,
    proportions: Sequence[float] | None = None,
    doublet_rate: float = 0.0,
    seed: int = 0,
    *,
    library_mean: float = 3000.0,
    library_sd: float = 0.5,
    marker_fold: float = 4.0,
    de_fraction: float = 0.1,
    de_sd: float = 1.0,
    bcv: float = 0.3,
    dropout_midpoint: float = -1.0,
    dropout_slope: float = 1.5,
) -> ad.AnnData:
    """A droplet library in the manner of Splatter (Zappia et al. 2017), not the CellAssign model.

    Genes get a base share of the library, Gamma-distributed (shape 0.6); each type multiplies
    its own markers by a log-normal fold around ``marker_fold`` (spread 0.3) and a random
    ``de_fraction`` of the other genes by a log-normal fold (``de_sd``, up or down), so types
    differ beyond the panel. A cell's library size is log-normal (median ``library_mean``,
    ``library_sd``); its mean per gene is the library times the type's shares. Counts are
    Poisson of a Gamma draw with biological coefficient of variation ``bcv``, then a logistic
    dropout on the log mean (half the counts lost at ``exp(dropout_midpoint)``).

    Doublets: a share ``doublet_rate`` of the ``n_cells`` droplets holds two cells, drawn like
    any other and summed count by count. ``obs["true_celltype"]`` is the first cell's type,
    ``obs["true_doublet"]`` is "" for a singlet and "A+B" (types in panel order) for a doublet.
    Genes: the markers (rows of ``markers``), then ``GENE0000``...; ``X`` is CSR float32 counts.
    """
    rng = np.random.default_rng(seed)
    rho = markers if isinstance(markers, pd.DataFrame) else marker_list_to_matrix(markers)
    types, G = list(rho.columns), len(rho)
    genes = list(rho.index) + [f"GENE{i:04d}" for i in range(n_other_genes)]
    shares = np.tile(rng.gamma(0.6, 1.0, len(genes)), (len(types), 1))       # types x genes
    shares[:, :G] *= np.exp(np.log(marker_fold) + 0.3 * rng.standard_normal((len(types), G))) ** rho.to_numpy().T
    de = rng.random((len(types), n_other_genes)) < de_fraction
    shares[:, G:] *= np.where(de, np.exp(de_sd * rng.standard_normal(de.shape)), 1.0)
    shares /= shares.sum(axis=1, keepdims=True)

    n_doublets = int(round(doublet_rate * n_cells))
    pi = _proportions(len(types), proportions, None, rng)
    z = rng.choice(len(types), size=n_cells + n_doublets, p=pi)
    library = library_mean * np.exp(library_sd * rng.standard_normal(z.size))
    rows = []
    for lo in range(0, z.size, max(1, _CHUNK_VALUES // len(genes))):
        hi = min(z.size, lo + max(1, _CHUNK_VALUES // len(genes)))
        mu = library[lo:hi, None] * shares[z[lo:hi]]
        lam = rng.gamma(1.0 / bcv**2, bcv**2 * mu)
        x = rng.poisson(lam)
        x[rng.random(x.shape) < 1.0 / (1.0 + np.exp(-dropout_slope * (dropout_midpoint - np.log(mu))))] = 0
        rows.append(sp.csr_matrix(x.astype(np.float32)))
    X = sp.vstack(rows, format="csr")

    # the last n_doublets cells join the first n_doublets droplets chosen at random
    hosts = rng.choice(n_cells, size=n_doublets, replace=False)
    guests = np.arange(n_cells, n_cells + n_doublets)
    join = sp.csr_matrix((np.ones(n_doublets, dtype=np.float32), (hosts, guests)), shape=(n_cells, z.size))
    X = (X[:n_cells] + join @ X).tocsr()
    doublet = np.full(n_cells, "", dtype=object)
    pair = np.sort(np.stack([z[hosts], z[guests]]), axis=0)
    doublet[hosts] = [f"{types[a]}+{types[b]}" for a, b in pair.T]

    adata = ad.AnnData(X)
    adata.obs_names = [f"cell{i:06d}" for i in range(n_cells)]
    adata.var_names = genes
    adata.obs[TRUE_CELLTYPE_KEY] = pd.Categorical(np.asarray(types)[z[:n_cells]], categories=types)
    adata.obs[TRUE_DOUBLET_KEY] = doublet.astype(str)
    return adata
