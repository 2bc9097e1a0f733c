"""Data simulated from the CellAssign model with known cell types (tests, demo, benchmarks)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .markers import marker_list_to_matrix


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
) -> ad.AnnData:
    """Counts from the CellAssign model: ``mu = s * exp(beta0 + delta * rho + beta * batch)``,
    NB with inverse dispersion ``phi``.

    ``obs`` holds ``true_celltype``, ``batch`` and the true ``size_factor``; ``var`` holds
    ``beta0``; ``uns['simulation']`` the true ``delta`` and per-batch effects ``beta``
    (the first batch is the reference). Gene parameters are drawn with ``gene_seed`` (default
    ``seed``), so several samples can share them.
    """
    rng = np.random.default_rng(seed)
    gene_rng = np.random.default_rng(seed if gene_seed is None else gene_seed)
    rho = markers if isinstance(markers, pd.DataFrame) else marker_list_to_matrix(markers)
    types = list(rho.columns)
    C = len(types)
    p = np.full(C, 1.0 / C) if proportions is None else np.asarray(proportions, float) / np.sum(proportions)
    z = rng.choice(C, size=n_cells, p=p)
    genes = list(rho.index) + [f"GENE{i:04d}" for i in range(n_other_genes)] + [f"MT-G{i}" for i in range(n_mito_genes)]
    G_all, G = len(genes), len(rho)
    beta0 = gene_rng.normal(-0.5, 1.0, G_all)
    delta = gene_rng.uniform(*delta_range, size=rho.shape) * rho.to_numpy()
    batch = rng.integers(0, len(batches), n_cells)
    beta = np.zeros((G_all, len(batches)))
    beta[:, 1:] = gene_rng.normal(0.0, batch_effect, (G_all, len(batches) - 1)) if len(batches) > 1 else 0.0
    s = rng.lognormal(0.0, 0.4, n_cells)
    log_mu = np.log(s)[:, None] + beta0[None, :] + beta[:, batch].T
    log_mu[:, :G] += delta[:, z].T
    mu = np.exp(log_mu)
    counts = rng.negative_binomial(phi, phi / (phi + mu)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i:06d}" for i in range(n_cells)]
    adata.var_names = genes
    adata.obs["true_celltype"] = pd.Categorical(np.asarray(types)[z], categories=types)
    adata.obs["batch"] = pd.Categorical(np.asarray(batches)[batch], categories=list(batches))
    adata.obs["size_factor"] = s
    adata.var["beta0"] = beta0
    adata.uns["simulation"] = {"delta": delta, "beta": beta[:G], "phi": phi}
    return adata
