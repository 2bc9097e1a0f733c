"""Too few cells for a fit: ``ModelSettings.min_cells_fit`` (default 50), one clear error from the
API and the CLI (exit code 2, one line), checked before any expensive work."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from cellassign_nf import CellAssign, marker_list_to_matrix
from cellassign_nf.cli import main
from cellassign_nf.errors import InputError, TooFewCellsError
from cellassign_nf.settings import ModelSettings
from cellassign_nf.simulate import simulate

MARKERS = {"A": ["a1", "a2"], "B": ["b1", "b2"]}
FAST = dict(max_epochs=2, n_restarts=1, progress=False, device="cpu")
MESSAGE = ("12 cells, fewer than min_cells_fit=50: too few to fit CellAssign reliably. Fit more cells (e.g. cohort "
           "mode), or lower --min-cells-fit / min_cells_fit at your own risk.")


def cells(n: int):
    return simulate(MARKERS, n_cells=n, n_other_genes=5, seed=1)


def test_default_minimum_is_50():
    assert ModelSettings().min_cells_fit == 50


def test_below_the_minimum_is_one_error_naming_both_numbers():
    with pytest.raises(TooFewCellsError) as info:
        CellAssign(cells(12), marker_list_to_matrix(MARKERS))
    err = info.value
    assert str(err) == MESSAGE and err.message == MESSAGE
    assert isinstance(err, ValueError) and isinstance(err, InputError) and err.exit_code == 2
    assert (err.n_cells, err.min_cells_fit) == (12, 50)
    with pytest.raises(ValueError, match=r"^49 cells, fewer than min_cells_fit=50: "):
        CellAssign(cells(49), marker_list_to_matrix(MARKERS))
    with pytest.raises(ValueError, match=r"^1 cell, fewer than min_cells_fit=2: "):
        CellAssign(cells(1), marker_list_to_matrix(MARKERS), min_cells_fit=2)


def test_at_the_minimum_it_fits():
    probs = CellAssign(cells(50), marker_list_to_matrix(MARKERS), size_factor_key="size_factor").train(**FAST).predict()
    assert probs.shape == (50, 2)


def test_a_lower_minimum_allows_fewer_cells(tmp_path):
    adata, rho = cells(12), marker_list_to_matrix(MARKERS)
    for model in (CellAssign(adata, rho, min_cells_fit=10),
                  CellAssign(adata, rho, settings=ModelSettings(min_cells_fit=10))):
        assert model.train(**FAST).predict().shape == (12, 2)
    # the minimum is about fitting: a fitted model predicts on any number of cells
    model.save(tmp_path / "m.pt")
    assert CellAssign.load(tmp_path / "m.pt").predict(adata[:3].copy()).shape == (3, 2)


def _files(tmp_path, n):
    data = tmp_path / "c.h5ad"
    cells(n).write_h5ad(data)
    markers = tmp_path / "m.yaml"
    markers.write_text("A: [a1, a2]\nB: [b1, b2]\n")
    return data, markers


def _train(tmp_path, data, markers, *extra):
    args = ["--quiet", "train", data, "--markers", markers, "-o", tmp_path / "model.pt", "--history",
            tmp_path / "h.tsv", "--probabilities", tmp_path / "p.tsv", "--max-epochs", "2", "--n-restarts", "1", *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_train_exits_2_with_one_line(tmp_path):
    data, markers = _files(tmp_path, 12)
    r = _train(tmp_path, data, markers)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {data}: {MESSAGE}"], r.stderr
    assert not any((tmp_path / n).exists() for n in ("model.pt", "h.tsv", "p.tsv"))
    r = _train(tmp_path, data, markers, "--min-cells-fit", "10")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model.pt").is_file()


def test_cli_run_of_a_tiny_sample_exits_2_with_the_reason(tmp_path):
    data, markers = _files(tmp_path, 12)
    r = CliRunner().invoke(main, ["--quiet", "run", str(data), "--markers", str(markers), "--outdir",
                                  str(tmp_path / "out"), "--max-epochs", "2", "--n-restarts", "1"])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(MESSAGE) and "fewer than min_cells_fit=50" in errors[0], r.stderr


def test_the_train_step_checks_before_the_panel_the_marker_check_and_the_fit(tmp_path, monkeypatch):
    import cellassign_nf.steps as steps

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran before the cell-count check")

    for name in ("load_panel", "_check_before_training", "read_design"):
        monkeypatch.setattr(steps, name, must_not_run)
    monkeypatch.setattr(CellAssign, "train", must_not_run)
    data, markers = _files(tmp_path, 12)
    with pytest.raises(TooFewCellsError, match="12 cells, fewer than min_cells_fit=50"):
        steps.train(data, markers, tmp_path / "m.pt", tmp_path / "h.tsv", tmp_path / "p.tsv",
                    design_path=tmp_path / "d.tsv")
