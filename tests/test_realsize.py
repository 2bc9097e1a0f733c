"""A run at real size with the pipeline's DEFAULT parameters (no -profile test).

Two simulated samples of 20,000 cells x 1,540 genes (40 marker genes of 8 types, 1,500 other
genes) go through `scripts/nextflow run .` with only --input, --markers and --outdir: UMAP on,
3 restarts, up to 400 epochs, the default resources capped by the machine. This is the path every
new user takes, which the small test profile (tiny samples, UMAP off, 60 epochs) does not.
Its wall time is printed (the CI budget of .ci/run counts it); nothing asserts a time.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cellassign_nf import marker_list_to_matrix
from cellassign_nf.simulate import simulate
from nextflow_helpers import PER_SAMPLE_TASKS, accuracy, process_counts, run_pipeline, trace

SAMPLES = ["donorA", "donorB"]
N_CELLS = 20_000
N_OTHER_GENES = 1_500
TYPES = ["B", "CD4_T", "CD8_T", "NK", "Monocyte", "DC", "Plasma", "Endothelial"]
MARKERS = {t: [f"{t}_m{i}" for i in range(5)] for t in TYPES}
MARKERS["CD8_T"][0] = "CD4_T_m0"  # a marker shared by two types, as CD3E is
MARKERS["DC"][0] = "Monocyte_m0"


@pytest.fixture(scope="session")
def realsize_run(tmp_path_factory, nxf_home):
    launch = tmp_path_factory.mktemp("realsize")
    rows = ["sample,counts"]
    for i, sample in enumerate(SAMPLES):
        adata = simulate(MARKERS, n_cells=N_CELLS, n_other_genes=N_OTHER_GENES, seed=100 + i, gene_seed=7)
        assert adata.n_vars >= 1_500 and adata.n_vars - len(marker_list_to_matrix(MARKERS)) >= 1_500
        adata.write_h5ad(launch / f"{sample}.h5ad")
        rows.append(f"{sample},{sample}.h5ad")
    (launch / "samplesheet.csv").write_text("\n".join(rows) + "\n")
    marker_list_to_matrix(MARKERS).to_csv(launch / "markers.csv")
    run = run_pipeline(launch, nxf_home, ["--input", "samplesheet.csv", "--markers", "markers.csv"])
    print(f"real-size default run ({len(SAMPLES)} x {N_CELLS} cells): {run['result'].wall_s:.0f} s wall")
    return run


def test_realsize_default_run_writes_every_report(realsize_run):
    out = realsize_run["outdir"]
    counts = process_counts(trace(out))
    assert counts == PER_SAMPLE_TASKS, counts
    for s in SAMPLES:
        report = out / s / "report" / f"{s}.report.html"
        assert report.is_file() and report.stat().st_size > 0, f"missing {report}"
        assert list((out / s / "report").glob(f"{s}_*_mqc.*")), f"no MultiQC files from the report of {s}"
        umap = out / s / "report" / f"{s}_umap.png"  # the UMAP was made, at 20,000 cells
        assert umap.is_file() and umap.stat().st_size > 10_000, f"no UMAP in the report of {s}"
    table = (out / "celltype_counts.tsv").read_text()
    assert all(s in table for s in SAMPLES), table
    assert (out / "multiqc" / "multiqc_report.html").is_file()


def test_realsize_run_used_the_defaults(realsize_run):
    out = realsize_run["outdir"]
    train = [r for r in trace(out) if r["process"].endswith(":TRAIN")]
    for row in train:
        script = (Path(row["workdir"]) / ".command.sh").read_text()
        assert "--max-epochs 400" in script and "--n-restarts 3" in script, script
    report = [r for r in trace(out) if r["process"].endswith(":REPORT")]
    for row in report:
        script = (Path(row["workdir"]) / ".command.sh").read_text()
        assert not re.search(r"--(skip|no)-umap", script), script


@pytest.mark.parametrize("sample", SAMPLES)
def test_realsize_annotations_match_truth(realsize_run, sample):
    agree = accuracy(realsize_run["outdir"] / sample / f"{sample}.annotated.h5ad")
    print(f"{sample}: accuracy {agree:.4f}")
    assert agree >= 0.95, f"{sample}: {agree:.3f} of cells agree with obs['true_celltype']"
