"""Simulate single-cell counts from the CellAssign model itself (DESIGN.md section 2).

Dependency-light on purpose (numpy, pandas, anndata) so that the benchmark, the tests and
the peer's environment can all use it.

Generative model, per cell n, gene g, type c (no covariates):

    z[n]            ~ Categorical(pi)                      known truth, obs["cell_type"]
    s_true[n]       ~ LogNormal(0, size_factor_sd)         per-cell capture efficiency
    beta0[g]        ~ Normal(baseline_log_mean, baseline_log_sd)
    delta[g,c]      ~ LogNormal(log(log(fold_change)), delta_sd)   where rho[g,c] = 1
    log mu[n,g]     = log s_true[n] + beta0[g] + delta[g,z[n]] * rho[g,z[n]]
    x[n,g]          ~ NegativeBinomial(mean mu, inverse dispersion phi[g])  (gamma-Poisson)

so a marker is over-expressed ``fold_change`` times (median; log-normal spread) in the types it
marks. ``n_other_genes`` non-marker genes are simulated too (same size factors, no type effect),
and ``obs["size_factor"]`` is computed the way the pipeline does it: total counts over *all*
genes divided by the mean over cells. The returned AnnData holds all genes; use
:func:`marker_subset` for the marker-only matrix a CellAssign fit takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Simulated:
    adata: "object"  # anndata.AnnData, all genes (markers first), obs["cell_type"], obs["size_factor"]
    markers: pd.DataFrame  # genes x types, 0/1 (marker genes only)
    delta: pd.DataFrame  # genes x types, true log fold change (0 where rho = 0)
    beta0: pd.Series  # marker genes, true baseline log mean
    pi: pd.Series  # true type proportions


def make_marker_matrix(
    n_markers: int, n_types: int, rng: np.random.Generator, p_shared: float = 0.1
) -> np.ndarray:
    """Binary G x C matrix: every gene marks one type (balanced), some genes a second one."""
    if n_markers < n_types:
        raise ValueError(f"need at least one marker per type: {n_markers} markers < {n_types} types")
    rho = np.zeros((n_markers, n_types), dtype=np.int8)
    owner = rng.permutation(np.arange(n_markers) % n_types)
    rho[np.arange(n_markers), owner] = 1
    shared = np.flatnonzero(rng.random(n_markers) < p_shared)
    if n_types > 1:
        second = (owner[shared] + rng.integers(1, n_types, size=shared.size)) % n_types
        rho[shared, second] = 1
    return rho


def simulate(
    n_cells: int,
    n_markers: int,
    n_types: int,
    n_other_genes: int = 300,
    *,
    seed: int = 0,
    fold_change: float = 3.5,
    delta_sd: float = 0.2,
    baseline_log_mean: float = 0.0,
    baseline_log_sd: float = 1.0,
    other_log_mean: float = 1.0,
    other_log_sd: float = 1.0,
    size_factor_sd: float = 0.4,
    dispersion_median: float = 5.0,
    p_shared: float = 0.1,
    type_prop_sd: float = 0.5,
    dtype=np.float32,
) -> Simulated:
    """Draw a data set from the CellAssign generative model.

    Returns a :class:`Simulated` with the AnnData (counts in ``X`` as a dense float32 matrix,
    markers first then ``other_*`` genes; ``obs["cell_type"]`` is the truth,
    ``obs["size_factor"]`` the all-gene library-size factor, ``obs["size_factor_true"]`` the
    simulated one) and the true parameters.
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    types = [f"type_{c:02d}" for c in range(n_types)]
    marker_names = [f"marker_{g:04d}" for g in range(n_markers)]
    other_names = [f"other_{g:04d}" for g in range(n_other_genes)]

    rho = make_marker_matrix(n_markers, n_types, rng, p_shared=p_shared)
    delta = np.exp(np.log(np.log(fold_change)) + delta_sd * rng.standard_normal(rho.shape)) * rho
    beta0 = baseline_log_mean + baseline_log_sd * rng.standard_normal(n_markers)

    w = np.exp(type_prop_sd * rng.standard_normal(n_types))
    pi = w / w.sum()
    # every type gets at least a few cells, the rest drawn from pi
    n_min = min(5, n_cells // n_types)
    z = np.concatenate(
        [np.repeat(np.arange(n_types), n_min), rng.choice(n_types, n_cells - n_min * n_types, p=pi)]
    )
    z = rng.permutation(z)

    s_true = np.exp(size_factor_sd * rng.standard_normal(n_cells))
    s_true /= s_true.mean()

    beta_other = other_log_mean + other_log_sd * rng.standard_normal(n_other_genes)
    phi = np.exp(np.log(dispersion_median) + 0.5 * rng.standard_normal(n_markers + n_other_genes))

    x = np.empty((n_cells, n_markers + n_other_genes), dtype=dtype)
    # chunk over cells to bound the temporary float64 arrays
    chunk = max(1, 2_000_000 // max(1, n_markers + n_other_genes))
    log_base = np.concatenate([beta0, beta_other])
    delta_full = np.vstack([delta, np.zeros((n_other_genes, n_types))])  # (G_all, C)
    for lo in range(0, n_cells, chunk):
        hi = min(n_cells, lo + chunk)
        log_mu = np.log(s_true[lo:hi, None]) + log_base[None, :] + delta_full[:, z[lo:hi]].T
        mu = np.exp(log_mu)
        lam = rng.gamma(shape=phi[None, :], scale=mu / phi[None, :])
        x[lo:hi] = rng.poisson(lam)

    lib = x.sum(axis=1, dtype=np.float64)
    if np.any(lib == 0):  # practically never; keep size factors positive
        lib = np.maximum(lib, 1.0)
    size_factor = lib / lib.mean()

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([types[i] for i in z], categories=types),
            "size_factor": size_factor.astype(np.float64),
            "size_factor_true": s_true,
        },
        index=[f"cell_{n:06d}" for n in range(n_cells)],
    )
    var = pd.DataFrame(
        {"is_marker": np.r_[np.ones(n_markers, bool), np.zeros(n_other_genes, bool)]},
        index=marker_names + other_names,
    )
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.uns["simulation"] = {
        "n_cells": n_cells,
        "n_markers": n_markers,
        "n_types": n_types,
        "n_other_genes": n_other_genes,
        "seed": seed,
        "fold_change": fold_change,
    }
    markers = pd.DataFrame(rho.astype(np.int64), index=marker_names, columns=types)
    return Simulated(
        adata=adata,
        markers=markers,
        delta=pd.DataFrame(delta, index=marker_names, columns=types),
        beta0=pd.Series(beta0, index=marker_names),
        pi=pd.Series(pi, index=types),
    )


def marker_subset(adata, markers: pd.DataFrame):
    """The marker-gene-only copy of ``adata`` (rows of ``markers``, in that order)."""
    return adata[:, list(markers.index)].copy()


if __name__ == "__main__":  # quick look
    sim = simulate(2000, 40, 5)
    a = marker_subset(sim.adata, sim.markers)
    print(a)
    print(sim.markers.sum())
    print("mean marker count", float(a.X.mean()), "max", float(a.X.max()))
    print(sim.adata.obs["cell_type"].value_counts())
