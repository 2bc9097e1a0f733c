"""The per-sample report, its MultiQC files, the cohort table, and the page in a real browser.

The inputs come from the real pipeline: `cellassign-nf run` on the demo data, once per module.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellassign_nf.cli_report import cohort_table_command, report_command
from cellassign_nf.errors import InputError
from cellassign_nf.keys import DOUBLET
from cellassign_nf.report import (
    UNASSIGNED,
    cohort_table,
    load_annotated,
    load_history,
    make_report,
    parse_qc_summary,
)

from conftest import CONSOLE_SCRIPT

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
MQC_CONFIG = ROOT / "assets" / "multiqc_config.yml"
SECTIONS = {  # section id -> heading; the figure keys each must embed
    "celltypes": ("Cell types", ["celltype_counts"]),
    "probability": ("Assignment probability", ["probability"]),
    "markers": ("Marker expression by assigned type", ["marker_expression"]),
    "umap": ("UMAP", ["umap"]),
    "training": ("Training", ["training"]),
    "delta": ("Fitted over-expression (delta)", ["delta"]),
    "qc": ("Quality control", ["size_factors"]),
    "parameters": ("Parameters", []),
    "versions": ("Software versions", []),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# fixtures: real pipeline outputs for the demo sample
# ------------------------------------------------------------------------------------------------


def _find(folder: Path, pattern: str) -> Path:
    hits = sorted(folder.rglob(pattern))
    assert hits, f"`cellassign-nf run` wrote no {pattern} under {folder}: {sorted(p.name for p in folder.rglob('*'))}"
    return hits[0]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run the whole pipeline (`cellassign-nf run`) on the demo sample, with a short training."""
    from cellassign_nf.cli import main

    out = tmp_path_factory.mktemp("run")
    args = ["run", str(DEMO / "sample1.h5ad"), "--markers", str(DEMO / "markers.csv"), "--outdir", str(out),
            "--sample", "sample1", "--max-epochs", "40", "--n-restarts", "2"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    params = out / "params.json"
    params.write_text(json.dumps({"min_prob": 0.5, "max_epochs": 40, "n_restarts": 2, "markers": "markers.csv"}))
    return {
        "annotated": _find(out, "sample1*annotated.h5ad"),
        "history": _find(out, "*history*.tsv"),
        "model": _find(out, "*.pt"),
        "qc_summary": _find(out, "*qc_summary.json"),
        "predictions": _find(out, "*.predictions.tsv"),
        "diagnostics": _find(out, "*.marker_diagnostics.tsv"),
        "specificity": _find(out, "*.marker_specificity.tsv"),
        "params": params,
    }


@pytest.fixture(scope="module")
def report(pipeline: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The full report (with UMAP) of the demo sample, through the CLI command."""
    outdir = tmp_path_factory.mktemp("report")
    args = [str(pipeline["annotated"]), "--history", str(pipeline["history"]), "--model", str(pipeline["model"]),
            "--qc-summary", str(pipeline["qc_summary"]), "--sample", "sample1", "--outdir", str(outdir),
            "--params", str(pipeline["params"])]
    result = CliRunner().invoke(report_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return outdir


@pytest.fixture(scope="module")
def report2(pipeline: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second sample's report (the demo data under another name), without the UMAP."""
    outdir = tmp_path_factory.mktemp("report2")
    make_report(pipeline["annotated"], history=pipeline["history"], model=pipeline["model"],
                qc_summary=pipeline["qc_summary"], sample="sample2", outdir=outdir, umap=False)
    return outdir


# ------------------------------------------------------------------------------------------------
# the page
# ------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Collect section ids, their h2 headings and embedded images; and anything external."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.in_h2 = False
        self.headings: dict[str, str] = {}
        self.images: dict[str, list[str]] = {}
        self.figure_ids: dict[str, list[str]] = {}
        self.external: list[str] = []
        self.scripts = 0
        self.notes: list[str] = []
        self._in_note = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
            self.images[self.section or ""] = []
            self.figure_ids[self.section or ""] = []
        elif tag == "h2":
            self.in_h2 = True
        elif tag == "figure" and self.section:
            self.figure_ids[self.section].append((a.get("id") or "").removeprefix("fig-"))
        elif tag == "img" and self.section:
            self.images[self.section].append(a.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "p" and "note" in (a.get("class") or ""):
            self._in_note = True
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self.in_h2 = False
        elif tag == "section":
            self.section = None
        elif tag == "p":
            self._in_note = False

    def handle_data(self, data: str) -> None:
        if self.in_h2 and self.section:
            self.headings[self.section] = self.headings.get(self.section, "") + data
        if self._in_note:
            self.notes.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_has_every_section_with_its_figure(report: Path) -> None:
    html_path = report / "sample1.report.html"
    assert html_path.is_file()
    page = _parse(html_path)
    for sid, (heading, figures) in SECTIONS.items():
        assert page.headings.get(sid, "").strip() == heading, f"section {sid!r} missing or misnamed"
        assert page.figure_ids[sid] == figures, f"section {sid!r} figures {page.figure_ids[sid]}"
        for src in page.images[sid]:
            assert src.startswith("data:image/png;base64,") and len(src) > 2000
        for key in figures:
            png = report / f"sample1_{key}.png"
            assert png.is_file() and png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
    # self-contained: nothing to fetch, no JavaScript
    assert page.external == [] and page.scripts == 0
    assert not [p.name for p in report.iterdir() if ".tmp" in p.name], "temporary files left behind"


def test_report_numbers_match_the_data(report: Path, pipeline: dict[str, Path]) -> None:
    adata = load_annotated(pipeline["annotated"])
    text = (report / "sample1.report.html").read_text(encoding="utf-8")
    counts = adata.obs["cellassign_celltype"].astype(str).value_counts()
    for cell_type, n in counts.items():
        assert f"<td>{cell_type}</td><td class=\"n\">{n:,}</td>" in text
    from cellassign_nf import CellAssign

    model = CellAssign.load(pipeline["model"])
    for cell_type in model.cell_types:  # every model type is listed, with 0 cells if none
        assert f"<td>{cell_type}</td>" in text
    for gene in model.genes:  # delta heat map and dot plot use the model's genes: in the data
        assert gene in adata.var_names
    for name in ("cellassign-nf", "torch", "scanpy", "anndata", "python"):
        assert f"<td>{name}</td>" in text
    assert "<td>max_epochs</td>" in text and "<td>markers</td>" in text  # model settings + --params


def test_each_type_over_expresses_its_own_markers(pipeline: dict[str, Path]) -> None:
    """What the dot plot shows: per gene scaled mean expression is highest in the type it marks."""
    from cellassign_nf import CellAssign
    from cellassign_nf.report import markers_by_type, normalise

    adata = load_annotated(pipeline["annotated"])
    norm = normalise(adata)
    model = CellAssign.load(pipeline["model"])
    labels = adata.obs["cellassign_celltype"].astype(str).to_numpy()
    blocks = markers_by_type(model.rho, norm.var_names)
    present = [t for t in blocks if (labels == t).sum() >= 5]
    assert len(present) >= 2
    expr = pd.DataFrame(norm[:, sorted({g for gs in blocks.values() for g in gs})].X.toarray(),
                        columns=sorted({g for gs in blocks.values() for g in gs}))
    means = expr.groupby(labels).mean().loc[present]
    scaled = (means - means.min()) / (means.max() - means.min()).replace(0, 1)
    for t in present:
        own = scaled[blocks[t]].mean(axis=1)
        assert own.idxmax() == t, f"{t} markers are highest in {own.idxmax()}: {own.round(2).to_dict()}"


def test_report_page_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "chromium is not installed: run scripts/setup (apt-get install -y chromium)"
    shot = tmp_path / "page.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
           (report / "sample1.report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 50_000
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (4000, 1280)
    non_white = (img < 0.95).any(axis=2).mean()
    assert non_white > 0.05, f"page looks blank ({non_white:.1%} non-white pixels)"
    assert img.std() > 0.05
    # the figures were drawn: many distinct colours, not just text on white
    assert len(np.unique((img[::4, ::4] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 500


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------


def test_no_umap_leaves_a_note_and_umap_max_cells_draws_a_subsample(pipeline: dict[str, Path], report2: Path,
                                                                      tmp_path: Path, monkeypatch) -> None:
    page = _parse(report2 / "sample2.report.html")
    assert page.figure_ids["umap"] == [] and not (report2 / "sample2_umap.png").exists()
    assert any("--no-umap" in n for n in page.notes)
    from cellassign_nf.report import sections

    embedded = []
    real = sections.compute_umap
    monkeypatch.setattr(sections, "compute_umap", lambda norm, **kw: embedded.append(norm.obs.copy()) or real(norm, **kw))
    res = make_report(pipeline["annotated"], history=pipeline["history"], model=pipeline["model"],
                      qc_summary=pipeline["qc_summary"], sample="big", outdir=tmp_path, umap_max_cells=150)
    assert (tmp_path / "big_umap.png").is_file()
    adata = load_annotated(pipeline["annotated"])
    (obs,) = embedded
    assert 140 <= len(obs) <= 160 < adata.n_obs  # a subsample of about --umap-max-cells cells ...
    assert set(obs["cellassign_celltype"]) == set(adata.obs["cellassign_celltype"])  # ... with every type
    assert obs.index.isin(adata.obs_names).all() and obs.index.is_unique
    assert f"Drawn on {len(obs):,} of the {adata.n_obs:,} cells (--umap-max-cells 150)" in \
        (tmp_path / "big.report.html").read_text(encoding="utf-8")
    assert not any("UMAP" in n for n in res.notes)


def test_umap_above_the_approximate_neighbour_threshold() -> None:
    """Above 8,191 cells scanpy's default neighbour search is PyNNDescent, whose pinned version
    returns a sparse array that scanpy 1.11 cannot read (AttributeError 'getnnz'): the crash of
    every real-size report. compute_umap must embed such a sample."""
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    from cellassign_nf.report import compute_umap

    rng = np.random.default_rng(0)
    centres = rng.gamma(1.0, 2.0, size=(3, 40))
    group = rng.integers(0, 3, 9000)
    adata = ad.AnnData(sparse.csr_matrix(rng.poisson(centres[group]).astype(np.float32)))
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    emb = compute_umap(adata)
    xy = np.asarray(emb.obsm["X_umap"])
    assert xy.shape == (9000, 2) and np.isfinite(xy).all()
    # the three simulated groups land in separate places: group centroids are farther apart
    # than the typical spread within a group
    cent = np.stack([xy[group == g].mean(0) for g in range(3)])
    spread = np.mean([xy[group == g].std(0).mean() for g in range(3)])
    gaps = [np.linalg.norm(cent[i] - cent[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread


def test_a_figure_that_fails_becomes_a_note(pipeline: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An optional part that cannot be made (here the UMAP) leaves a note; the report is written."""
    def broken(*args, **kwargs):
        raise AttributeError("'csr_array' object has no attribute 'getnnz'")

    monkeypatch.setattr("cellassign_nf.report.sections.compute_umap", broken)  # where the page calls it
    res = make_report(pipeline["annotated"], history=pipeline["history"], model=pipeline["model"],
                      qc_summary=pipeline["qc_summary"], sample="soft", outdir=tmp_path)
    assert res.html.exists() and not (tmp_path / "soft_umap.png").exists()
    assert "UMAP could not be drawn (AttributeError: 'csr_array' object has no attribute 'getnnz')." in res.notes
    page = _parse(res.html)
    assert page.figure_ids["umap"] == [] and page.figure_ids["training"] == ["training"]


def test_unexpected_error_is_one_line_with_the_traceback_in_a_file(pipeline: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cellassign_nf.cli import ERROR_LOG, main

    def broken(*args, **kwargs):
        raise KeyError("sample_x")

    monkeypatch.setattr("cellassign_nf.report.make_report", broken)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["report", *_report_args(pipeline, tmp_path / "out")])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: report failed unexpectedly: KeyError: 'sample_x'. The traceback is in ")
    logged = (tmp_path / ERROR_LOG).read_text()
    assert "Traceback (most recent call last)" in logged and "KeyError: 'sample_x'" in logged


# ------------------------------------------------------------------------------------------------
# MultiQC
# ------------------------------------------------------------------------------------------------


def test_multiqc_files(report: Path, pipeline: dict[str, Path]) -> None:
    import yaml

    adata = load_annotated(pipeline["annotated"])
    gs = yaml.safe_load((report / "sample1_cellassign_general_stats_mqc.yaml").read_text())
    row = gs["data"]["sample1"]
    assert gs["plot_type"] == "generalstats"
    assert row["cells_after_qc"] == adata.n_obs
    labels = adata.obs["cellassign_celltype"].astype(str)
    typed = ~labels.isin([UNASSIGNED, DOUBLET])
    assert row["pct_assigned"] == pytest.approx(100 * typed.mean(), abs=0.01)
    assert row["pct_doublets"] == pytest.approx(100 * (labels == DOUBLET).mean(), abs=0.01)
    assert row["top_celltype"] == labels[typed].value_counts().idxmax()
    hist = load_history(pipeline["history"])
    assert row["final_val_loglik"] == pytest.approx(hist[hist.selected]["val_loglik"].iloc[-1], abs=1e-3)
    curve = yaml.safe_load((report / "sample1_cellassign_training_mqc.yaml").read_text())
    assert curve["plot_type"] == "linegraph" and len(curve["data"]["sample1"]) == int(hist.selected.sum())
    qc = yaml.safe_load((report / "sample1_cellassign_qc_mqc.yaml").read_text())
    assert qc["plot_type"] == "table" and qc["data"]["sample1"]["cells_after"] == adata.n_obs


def test_multiqc_cohort_report_of_two_samples(report: Path, report2: Path, tmp_path: Path) -> None:
    out = tmp_path / "mqc"
    proc = subprocess.run([sys.executable, "-m", "multiqc", "--config", str(MQC_CONFIG), "-o", str(out),
                           "--no-ansi", str(report), str(report2)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "multiqc_report.html").is_file()
    data_dir = out / "multiqc_data"
    data = json.loads((data_dir / "multiqc_data.json").read_text())
    assert data["config_title"] == "cellassign-nf cohort report"
    text = json.dumps(data)
    for section in ("cellassign_celltype_counts", "cellassign_training", "cellassign_qc"):
        assert section in text, f"MultiQC lacks section {section}"
    gs = pd.read_csv(data_dir / "multiqc_general_stats.txt", sep="\t", index_col=0)
    assert sorted(gs.index) == ["sample1", "sample2"]
    for col in ("cells_in", "cells_after_qc", "pct_assigned", "top_celltype", "final_val_loglik"):
        assert any(c.endswith(col) for c in gs.columns), f"general stats lack {col}: {list(gs.columns)}"
    bars = pd.read_csv(data_dir / "multiqc_cellassign_celltype_counts_plot.txt", sep="\t", index_col=0)
    assert sorted(bars.index) == ["sample1", "sample2"]
    assert (bars.loc["sample1"] == bars.loc["sample2"]).all()
    lines = pd.read_csv(data_dir / "multiqc_cellassign_training_plot.txt", sep="\t", index_col=0)
    assert sorted(lines.index) == ["sample1", "sample2"]
    qc = pd.read_csv(data_dir / "multiqc_cellassign_qc_table.txt", sep="\t", index_col=0)
    assert sorted(qc.index) == ["sample1", "sample2"]


# ------------------------------------------------------------------------------------------------
# cohort table
# ------------------------------------------------------------------------------------------------


def test_cohort_table_from_report_folders_and_predictions(report: Path, report2: Path, pipeline: dict[str, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "celltype_counts.tsv"
    result = CliRunner().invoke(cohort_table_command, [str(report), str(report2), "-o", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, sep="\t", index_col="sample")
    adata = load_annotated(pipeline["annotated"])
    expected = adata.obs["cellassign_celltype"].astype(str).value_counts()
    assert list(table.index) == ["sample1", "sample2"]
    assert table.columns[-1] == UNASSIGNED
    for cell_type, n in expected.items():
        assert table.loc["sample1", cell_type] == n == table.loc["sample2", cell_type]
    assert table.loc["sample1"].sum() == adata.n_obs
    from_pred = cohort_table([pipeline["predictions"]])
    name = pipeline["predictions"].name.removesuffix(".predictions.tsv")
    assert from_pred.loc[name].reindex(table.columns, fill_value=0).tolist() == table.loc["sample1"].tolist()
    with pytest.raises(InputError, match="also comes from"):
        cohort_table([report, report / "sample1_celltype_counts_mqc.tsv"])


def test_without_the_model_file_the_report_is_the_same_and_loads_no_torch(pipeline: dict[str, Path], report: Path,
                                                                          tmp_path: Path) -> None:
    """The pipeline's REPORT gives no --model: the fit it draws (marker genes, rho, delta, training
    settings) comes from the annotated h5ad's description of its model (annotate --model-info), in
    a process that never imports torch, and every figure is the one drawn from the model file."""
    from cellassign_nf import CellAssign
    from cellassign_nf.report.load import load_fitted_model

    model, fitted = CellAssign.load(pipeline["model"]), load_fitted_model(pipeline["annotated"])
    assert fitted.genes == list(model.genes) and fitted.cell_types == list(model.cell_types)
    pd.testing.assert_frame_equal(fitted.delta, model.delta.astype(float), check_exact=True)
    pd.testing.assert_frame_equal(fitted.rho, model.rho.astype(int), check_exact=True)
    assert fitted.train_params == {k: v for k, v in model.train_params.items() if v is not None}
    probe = ("import atexit, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules, "
             f"file=sys.stderr)); {CONSOLE_SCRIPT}")
    args = [pipeline["annotated"], "--history", pipeline["history"], "--qc-summary", pipeline["qc_summary"],
            "--sample", "sample1", "--outdir", tmp_path, "--params", pipeline["params"]]
    result = subprocess.run([sys.executable, "-c", probe, "report", *map(str, args)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stderr, result.stderr
    figures = sorted(report.glob("sample1_*.png"))
    assert len(figures) >= 7, figures
    for png in figures:
        assert (tmp_path / png.name).read_bytes() == png.read_bytes(), f"{png.name} differs without --model"


# ------------------------------------------------------------------------------------------------
# bad input: one clear message, no partial output
# ------------------------------------------------------------------------------------------------


def _report_args(pipeline: dict[str, Path], outdir: Path, **override: str) -> list[str]:
    paths = {k: str(v) for k, v in pipeline.items()} | override
    return [paths["annotated"], "--history", paths["history"], "--model", paths["model"],
            "--qc-summary", paths["qc_summary"], "--sample", override.get("sample", "s"), "--outdir", str(outdir)]


@pytest.mark.parametrize("what", ["annotated", "history", "model", "qc_summary"])
def test_missing_input_names_the_file(pipeline: dict[str, Path], tmp_path: Path, what: str) -> None:
    missing = tmp_path / f"missing_{what}"
    result = CliRunner().invoke(report_command, _report_args(pipeline, tmp_path / "out", **{what: str(missing)}))
    assert isinstance(result.exception, InputError), result.output
    assert str(missing) in str(result.exception) and "not found" in str(result.exception)
    assert not (tmp_path / "out" / "s.report.html").exists()


def test_bad_inputs_are_input_errors(pipeline: dict[str, Path], tmp_path: Path) -> None:
    import anndata as ad

    raw = ad.read_h5ad(pipeline["annotated"])
    del raw.obs["cellassign_celltype"]
    unannotated = tmp_path / "raw.h5ad"
    raw.write_h5ad(unannotated)
    bad_hist = tmp_path / "history.tsv"
    pd.DataFrame({"epoch": [1], "loss": [0.1]}).to_csv(bad_hist, sep="\t", index=False)
    bad_json = tmp_path / "qc.json"
    bad_json.write_text("{not json")
    cases = {
        "annotated": (unannotated, "cellassign_celltype"),
        "history": (bad_hist, "lacks column"),
        "qc_summary": (bad_json, "not valid JSON"),
        "model": (bad_json, "model"),
    }
    for what, (path, message) in cases.items():
        result = CliRunner().invoke(report_command, _report_args(pipeline, tmp_path / "out", **{what: str(path)}))
        assert isinstance(result.exception, InputError), (what, result.output)
        assert message in str(result.exception) and str(path) in str(result.exception)
    old = ad.read_h5ad(pipeline["annotated"])  # annotated by a model_info.json without the fitted parameters
    del old.uns["cellassign"]["model"]["fitted"]
    old.write_h5ad(tmp_path / "old.h5ad")
    no_model = [a for a in _report_args(pipeline, tmp_path / "out", annotated=str(tmp_path / "old.h5ad"))
                if a not in ("--model", str(pipeline["model"]))]
    result = CliRunner().invoke(report_command, no_model)
    assert isinstance(result.exception, InputError), result.output
    assert "old.h5ad: does not carry the fitted parameters" in str(result.exception), str(result.exception)
    assert "--model" in str(result.exception) and not (tmp_path / "out" / "s.report.html").exists()
    result = CliRunner().invoke(report_command, _report_args(pipeline, tmp_path / "out", sample="a/b"))
    assert isinstance(result.exception, InputError) and "sample name" in str(result.exception)
    with pytest.raises(InputError, match="holds no"):
        cohort_table([tmp_path])


def test_qc_summary_shapes_are_understood() -> None:
    flat = parse_qc_summary({"cells_before": 10, "cells_after": 8, "genes_before": 5, "genes_after": 4,
                             "min_counts": 100, "sample": "x"})
    nested = parse_qc_summary({"cells": {"before": 10, "after": 8}, "genes": {"before": 5, "after": 4},
                               "thresholds": {"min_counts": 100}, "sample": "x"})
    for qc in (flat, nested):
        assert (qc.cells_before, qc.cells_after, qc.genes_before, qc.genes_after) == (10, 8, 5, 4)
        assert qc.thresholds == {"min_counts": 100} and qc.other == {"sample": "x"}


def test_commands_are_registered_in_the_main_cli(pipeline: dict[str, Path], tmp_path: Path) -> None:
    """`cellassign-nf report` / `cohort-table` exist, and bad input is one line and exit code 2."""
    from cellassign_nf.cli import main

    assert main.commands.get("report") is report_command
    assert main.commands.get("cohort-table") is cohort_table_command
    result = CliRunner().invoke(main, ["report", *_report_args(pipeline, tmp_path / "out",
                                                                 history=str(tmp_path / "nope.tsv"))])
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'nope.tsv'}: training history not found." in result.output
    assert "Traceback" not in result.output


def test_report_shows_cells_removed_by_qc_and_why(report: Path, pipeline: dict[str, Path]) -> None:
    import html

    summary = json.loads(pipeline["qc_summary"].read_text())
    text = (report / "sample1.report.html").read_text(encoding="utf-8")
    assert "Cells removed by QC" in text
    for reason, n in summary["removed"].items():  # every rule: its bounds in words and the cells it removed
        assert f"<td>{reason}</td><td>{html.escape(summary['rules'][reason])}</td><td class=\"n\">{n:,}</td>" in text
    assert summary["removed"]["outlier_mito"] >= 10  # the demo's 10 mostly-mitochondrial cells


def test_report_says_how_many_cells_went_to_other_and_why(report: Path, pipeline: dict[str, Path]) -> None:
    """`run` adds the 'other' type by default; the cell-type section counts its cells in one sentence."""
    import html

    from cellassign_nf import CellAssign
    from cellassign_nf.report.sections import other_note

    assert CellAssign.load(pipeline["model"]).cell_types[-1] == "other"
    adata = load_annotated(pipeline["annotated"])
    n_other = int((adata.obs["cellassign_celltype"].astype(str) == "other").sum())
    note = other_note(n_other, adata.n_obs)
    assert note.startswith(f"{n_other:,} of {adata.n_obs:,} cells (") and "--no-other" in note
    text = (report / "sample1.report.html").read_text(encoding="utf-8")
    section = text[text.index('<section id="celltypes"'):]
    section = section[:section.index("</section>")]
    assert f'<p class="note">{note[:note.index(":")]}' in html.unescape(section), note


# ------------------------------------------------------------------------------------------------
# marker diagnostics
# ------------------------------------------------------------------------------------------------


def _section_order(path: Path) -> list[str]:
    return list(_parse(path).headings)


def test_clean_diagnostics_sit_after_the_dot_plot_and_say_so(pipeline: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    args = [str(pipeline["annotated"]), "--history", str(pipeline["history"]), "--model", str(pipeline["model"]),
            "--qc-summary", str(pipeline["qc_summary"]), "--sample", "sample1", "--outdir", str(tmp_path),
            "--no-umap", "--diagnostics", str(pipeline["diagnostics"]), "--specificity", str(pipeline["specificity"])]
    result = CliRunner().invoke(report_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html_path = tmp_path / "sample1.report.html"
    order = _section_order(html_path)
    assert order.index("marker-diagnostics") == order.index("markers") + 1, order
    page = _parse(html_path)
    assert any("No marker problems found" in n for n in page.notes), page.notes
    assert page.figure_ids["marker-diagnostics"] == ["marker_specificity"]
    gs = yaml.safe_load((tmp_path / "sample1_cellassign_general_stats_mqc.yaml").read_text())
    assert gs["data"]["sample1"]["marker_warnings"] == 0


def test_a_diagnostics_warning_puts_its_section_first_in_plain_sentences(pipeline: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    import yaml

    from cellassign_nf.diagnostics import FLAG_COLUMNS, read_specificity

    message = "Monocyte received 0 cells (0.0%), but its markers are high in the 195 cells assigned to T cell."
    flags = pd.DataFrame([["type", "Monocyte", "merged", "warning", message, "CD14, LYZ", "GENE0001"],
                          ["type", "B cell", "candidates", "info", "Genes that best mark ...", "", "GENE0002, GENE0003"]],
                         columns=list(FLAG_COLUMNS))
    result = make_report(pipeline["annotated"], history=pipeline["history"], model=pipeline["model"],
                         qc_summary=pipeline["qc_summary"], sample="sample1", outdir=tmp_path, umap=False,
                         diagnostics=flags, specificity=read_specificity(pipeline["specificity"]))
    html_path = result.html
    assert _section_order(html_path)[0] == "marker-diagnostics"
    page = _parse(html_path)
    assert message in page.notes
    text = html_path.read_text()
    assert "GENE0002, GENE0003" in text and "CD14, LYZ" in text  # the candidates and the markers to blame
    assert ">marker warnings<" in text.replace('"k">', ">")  # the card
    png = tmp_path / "sample1_marker_specificity.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    gs = yaml.safe_load((tmp_path / "sample1_cellassign_general_stats_mqc.yaml").read_text())
    assert gs["data"]["sample1"]["marker_warnings"] == 1
    assert any("marker_warnings" in h for h in gs["pconfig"])


def test_genes_of_id_indexed_data_are_labelled_by_symbol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cell Ranger data are indexed by Ensembl ID: the dot plot and the delta heat map show symbols."""
    from types import SimpleNamespace

    from cellassign_nf.markers import marker_list_to_matrix
    from cellassign_nf.report import normalise, plot_marker_expression, sections
    from cellassign_nf.simulate import simulate

    rho = marker_list_to_matrix({"A": ["CD3E", "CD2"], "B": ["MS4A1", "CD19"]})
    adata = simulate(rho, n_cells=200, n_other_genes=5, seed=0)
    adata.var["gene_symbols"] = list(adata.var_names)
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.obs["cellassign_celltype"] = adata.obs["true_celltype"].astype(str)
    rho.index = list(adata.var_names[:4])
    fig = plot_marker_expression(normalise(adata), rho, ["A", "B"])
    labels = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    assert {"CD3E", "CD2", "MS4A1", "CD19"} <= labels and not any(x.startswith("ENSG") for x in labels)

    drawn = {}
    monkeypatch.setattr(sections, "plot_delta", lambda delta, rho_: drawn.update(delta=delta) or plt_figure())
    model = SimpleNamespace(delta=rho.astype(float) * 2.5, rho=rho)
    sections.delta_section(SimpleNamespace(adata=adata, model=model), sections.FigureSink(tmp_path, "s"))
    assert list(drawn["delta"].index) == ["CD3E", "CD2", "MS4A1", "CD19"]
    assert list(model.delta.index) == list(adata.var_names[:4]), "the model itself is not relabelled"


def plt_figure():
    import matplotlib.pyplot as plt

    return plt.figure()


# ------------------------------------------------------------------------------------------------
# sample-level QC warnings (a library whose majority is damaged)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_warnings() -> list[str]:
    """The QC warnings of a real damaged library: the demo's 10 damaged cells and 5 healthy ones, with
    fixed thresholds (10 of 15 cells removed: both warnings)."""
    import anndata as ad

    from cellassign_nf.qc import filter_cells
    from cellassign_nf.settings import QCThresholds

    _, summary = filter_cells(ad.read_h5ad(DEMO / "sample2.h5ad")[:15].copy(),
                              QCThresholds(max_mito_pct=20, nmads=0, nmads_mito=0))
    assert len(summary["warnings"]) == 2, summary["warnings"]
    return summary["warnings"]


@pytest.fixture(scope="module")
def warned(pipeline: dict[str, Path], damaged_warnings: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo sample's report, its QC summary carrying the damaged library's warnings."""
    outdir = tmp_path_factory.mktemp("warned")
    summary = json.loads(pipeline["qc_summary"].read_text())
    summary["warnings"] = damaged_warnings
    path = outdir / "warned.qc_summary.json"
    path.write_text(json.dumps(summary))
    result = CliRunner().invoke(report_command, _report_args(pipeline, outdir, qc_summary=str(path), sample="warned")
                                + ["--no-umap"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return outdir


def test_a_healthy_library_has_no_qc_warning_in_the_report(report: Path, pipeline: dict[str, Path]) -> None:
    import yaml

    assert json.loads(pipeline["qc_summary"].read_text())["warnings"] == []
    page = _parse(report / "sample1.report.html")
    assert not any(n.startswith("Warning:") for n in page.notes), page.notes
    assert list(page.headings).index("qc") > 0  # the QC section stays in its place
    gs = yaml.safe_load((report / "sample1_cellassign_general_stats_mqc.yaml").read_text())
    assert gs["data"]["sample1"]["qc_warnings"] == 0
    qc = yaml.safe_load((report / "sample1_cellassign_qc_mqc.yaml").read_text())
    assert qc["data"]["sample1"]["qc_warnings"] == "none"


def test_qc_warnings_come_first_in_the_report_and_in_the_multiqc_files(warned: Path,
                                                                       damaged_warnings: list[str]) -> None:
    import yaml

    html_path = warned / "warned.report.html"
    assert _section_order(html_path)[0] == "qc"  # a damaged library: QC before everything fitted on it
    page = _parse(html_path)
    for warning in damaged_warnings:
        assert f"Warning: {warning}" in page.notes
    assert any(n.startswith("Warning: The median cell has 85.6% mitochondrial counts") for n in page.notes)
    assert any(n.startswith("Warning: QC removed 10 of 15 cells (66.7%)") for n in page.notes)
    text = html_path.read_text(encoding="utf-8")
    assert '<p class="note warn">' in text and ">QC warnings<" in text.replace('"k">', ">")  # the card
    assert "Other QC numbers" in text and "median_pct_counts_mito" in text
    gs = yaml.safe_load((warned / "warned_cellassign_general_stats_mqc.yaml").read_text())
    assert gs["data"]["warned"]["qc_warnings"] == 2
    assert any("qc_warnings" in h and h["qc_warnings"]["title"] == "QC warnings" for h in gs["pconfig"])
    qc = yaml.safe_load((warned / "warned_cellassign_qc_mqc.yaml").read_text())
    assert qc["data"]["warned"]["qc_warnings"] == " | ".join(damaged_warnings)
    assert "--max-mito-pct 20 --nmads 0 --nmads-mito 0" in qc["data"]["warned"]["qc_warnings"]
    assert qc["headers"]["qc_warnings"]["title"] == "QC warnings"


def test_multiqc_shows_the_qc_warnings(report: Path, warned: Path, tmp_path: Path) -> None:
    out = tmp_path / "mqc"
    proc = subprocess.run([sys.executable, "-m", "multiqc", "--config", str(MQC_CONFIG), "-o", str(out),
                           "--no-ansi", str(report), str(warned)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gs = pd.read_csv(out / "multiqc_data" / "multiqc_general_stats.txt", sep="\t", index_col=0)
    col = next(c for c in gs.columns if c.endswith("qc_warnings"))
    assert gs.loc["warned", col] == 2 and gs.loc["sample1", col] == 0
    qc = pd.read_csv(out / "multiqc_data" / "multiqc_cellassign_qc_table.txt", sep="\t", index_col=0)
    assert qc.loc["warned", "qc_warnings"].startswith("QC removed 10 of 15 cells (66.7%)")
    assert qc.loc["sample1", "qc_warnings"] == "none"
    assert "The median cell has 85.6% mitochondrial counts" in (out / "multiqc_report.html").read_text()


def test_a_qc_summary_without_warnings_still_works(pipeline: dict[str, Path], tmp_path: Path) -> None:
    """Older QC summaries have no `warnings` key: no card, no column, no warning."""
    import yaml

    summary = json.loads(pipeline["qc_summary"].read_text())
    del summary["warnings"]
    path = tmp_path / "old.qc_summary.json"
    path.write_text(json.dumps(summary))
    assert parse_qc_summary(summary).warnings is None and "warnings" not in parse_qc_summary(summary).other
    result = make_report(pipeline["annotated"], history=pipeline["history"], model=pipeline["model"],
                         qc_summary=path, sample="old", outdir=tmp_path / "out", umap=False)
    text = result.html.read_text(encoding="utf-8")
    assert ">QC warnings<" not in text.replace('"k">', ">") and 'class="note warn"' not in text
    gs = yaml.safe_load((tmp_path / "out" / "old_cellassign_general_stats_mqc.yaml").read_text())
    assert "qc_warnings" not in gs["data"]["old"]
    assert not any("qc_warnings" in h for h in gs["pconfig"])
    qc = yaml.safe_load((tmp_path / "out" / "old_cellassign_qc_mqc.yaml").read_text())
    assert "qc_warnings" not in qc["data"]["old"]
