from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from nextflow_helpers import COHORT_ARGS, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = ROOT / "tests" / "data" / "cellassign-original"  # see its README.md: origin, licence
DEMO = ROOT / "assets" / "demo"
CONSOLE_SCRIPT = "from cellassign_nf.cli import console_script; console_script()"  # what `cellassign-nf` runs


@pytest.fixture(scope="session")
def nxf_home(tmp_path_factory) -> Path:
    """NXF_HOME of every Nextflow run of the session (tests/nextflow_helpers.py starts them)."""
    return tmp_path_factory.mktemp("nxf_home")


@pytest.fixture(scope="session")
def per_sample_run(tmp_path_factory, nxf_home):
    """One real run of `-profile test` (the two demo samples, per-sample mode)."""
    run = run_pipeline(tmp_path_factory.mktemp("per_sample"), nxf_home, ["-profile", "test"])
    print(f"per-sample test profile: {run['result'].wall_s:.0f} s wall")
    return run


@pytest.fixture(scope="session")
def cohort_run(tmp_path_factory, nxf_home):
    """One real run of `-profile test` in cohort mode (without the 'other' type: COHORT_ARGS)."""
    return run_pipeline(tmp_path_factory.mktemp("cohort"), nxf_home, ["-profile", "test", *COHORT_ARGS])


@pytest.fixture(scope="session")
def original():
    """The original implementation's example data and fit."""
    counts = pd.read_csv(ORIGINAL / "example_counts.csv", index_col=0)
    cells = pd.read_csv(ORIGINAL / "example_cells.csv", index_col=0)
    adata = ad.AnnData(counts.to_numpy(dtype=np.float32), obs=cells)
    adata.obs_names, adata.var_names = counts.index, counts.columns
    return {
        "adata": adata,
        "rho": pd.read_csv(ORIGINAL / "example_markers.csv", index_col=0),
        "gamma": pd.read_csv(ORIGINAL / "example_fit_gamma.csv", index_col=0),
        "delta": pd.read_csv(ORIGINAL / "example_fit_delta.csv", index_col=0),
        "labels": pd.read_csv(ORIGINAL / "example_fit_celltypes.csv", index_col=0).iloc[:, -1],
    }
