"""Real data to try panels on, from what the installed packages ship (no download)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def pbmc68k_counts() -> ad.AnnData:
    """700 real human PBMCs (10x Genomics, Zheng et al. 2017, Nat Commun 8:14049) with raw counts
    of 765 genes, from the reduced copy that scanpy ships (``scanpy.datasets.pbmc68k_reduced``,
    BSD-3-Clause; the data CC BY 4.0, 10x Genomics).

    scanpy keeps the counts log-normalised in ``.raw``; each cell's counts are recovered by scaling
    its values back (``expm1``) so that its smallest value is one count, and rounding (the stored
    values carry about four digits, so counts above ~100 may be off by one). ``obs["bulk_labels"]``
    is the study's label of each cell by correlation with FACS-sorted populations (coarse: its
    "Dendritic" cells are mostly monocytes); ``var`` holds only these 765 highly variable genes, so
    many markers of a panel are missing here. Size factors are therefore totals over these genes."""
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    values = np.expm1(reduced.raw.X.toarray().astype(np.float64))
    smallest = np.array([row[row > 0].min() for row in values])
    counts = np.round(values / smallest[:, None]).astype(np.float32)
    return ad.AnnData(sp.csr_matrix(counts), obs=reduced.obs[["bulk_labels"]].copy(),
                      var=pd.DataFrame(index=reduced.raw.var_names.astype(str)))
