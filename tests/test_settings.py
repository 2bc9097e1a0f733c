"""One place for each default, name and rule: the settings dataclasses drive the CLI and the API,
AnnData names come from ``keys``, input rules from ``input_rules.json``, and a step reads and
matches its marker panel once."""
from __future__ import annotations

import ast
import dataclasses
import logging
import re
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from cellassign_nf import keys, markers, rules
from cellassign_nf.cli import main
from cellassign_nf.cli_options import cli_fields
from cellassign_nf.settings import (
    AnnotateSettings, DiagnosticThresholds, ModelSettings, QCThresholds, ReportSettings, TrainSettings, with_overrides,
)
from cellassign_nf.simulate import simulate

SRC = Path(__file__).resolve().parents[1] / "src" / "cellassign_nf"
PANEL = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "C": ["c1", "c2", "c3"]}


def _sample(seed: int):
    return simulate(PANEL, n_cells=300, n_other_genes=30, seed=seed), markers.marker_list_to_matrix(PANEL)

# subcommand -> the settings classes whose CLI fields it must offer
COMMAND_SETTINGS = {
    "qc": [QCThresholds],
    "train": [ModelSettings, TrainSettings],
    "annotate": [AnnotateSettings],
    "check-markers": [DiagnosticThresholds],
    "diagnose": [DiagnosticThresholds],
    "run": [QCThresholds, ModelSettings, TrainSettings, AnnotateSettings, DiagnosticThresholds],
    "report": [ReportSettings],
}


def _options(command: str) -> dict[str, click.Option]:
    return {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_every_setting_is_an_option_with_the_dataclass_default(command):
    """Catches an option written by hand again, with its own default or name (e.g. --min-delta
    2.5 in the CLI while the API's default stays 2)."""
    options = _options(command)
    for cls in COMMAND_SETTINGS[command]:
        for f in cli_fields(cls):
            assert f.name in options, f"{command} lacks --{f.name.replace('_', '-')} ({cls.__name__})"
            opt = options[f.name]
            assert opt.default == f.default, (command, f.name, opt.default, f.default)
            assert f"--{f.name.replace('_', '-')}" in opt.opts
            assert opt.help == f.metadata["help"]


def test_learning_rate_has_the_pipeline_name_too():
    """The pipeline passes --learning_rate as --learning-rate: the CLI must know both names."""
    assert {"--lr", "--learning-rate"} <= set(_options("train")["lr"].opts)


def test_cli_ranges_come_from_the_fields(tmp_path):
    """A range in a field's metadata is enforced by the CLI, with click's message."""
    result = CliRunner().invoke(main, ["annotate", "x.h5ad", "-p", "p.tsv", "-o", "o.h5ad",
                                                     "--predictions", "p2.tsv", "--min-prob", "1.5"])
    assert result.exit_code == 2 and "1.5 is not in the range 0<=x<=1" in result.output


def test_unknown_setting_is_one_clear_error():
    with pytest.raises(TypeError, match=r"unknown TrainSettings field\(s\): max_epoch \(known: batch_size,"):
        with_overrides(TrainSettings(), {"max_epoch": 3})


def test_api_takes_the_settings_or_their_fields():
    """``CellAssign(..., min_delta=...)`` and ``train(settings, seed=...)`` fill the same dataclasses
    that the CLI builds; a misspelt field is refused by name."""
    from cellassign_nf import CellAssign

    adata, rho = _sample(1)
    model = CellAssign(adata, rho, min_delta=1.5)
    assert model.settings == ModelSettings(min_delta=1.5)
    assert model.model_params == dataclasses.asdict(ModelSettings(min_delta=1.5))
    model.train(TrainSettings(max_epochs=2, n_restarts=1, progress=False), seed=4)
    assert model.train_params["max_epochs"] == 2 and model.train_params["seed"] == 4
    assert model.history_table["epoch"].max() <= 2
    with pytest.raises(TypeError, match=r"unknown ModelSettings field\(s\): min_delt"):
        CellAssign(adata, rho, min_delt=1.5)


def test_train_step_reads_and_matches_the_panel_once(tmp_path, monkeypatch):
    """One ``train`` step checks the panel once and matches it to the genes once, for both the
    marker check before training and the model (catches a step that reads the file again, or a
    model or check that re-matches what it was given)."""
    from cellassign_nf import api, steps
    from cellassign_nf.diagnostics import preflight

    adata, _ = _sample(2)
    counts, panel = tmp_path / "counts.h5ad", tmp_path / "markers.txt"
    adata.write_h5ad(counts)
    panel.write_text("".join(f"{t}:{','.join(g)}\n" for t, g in PANEL.items()))
    calls = {"validate_markers": 0, "match_panel": 0}

    def counting(name, func):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return func(*args, **kwargs)
        return wrapper

    for name in calls:
        wrapped = counting(name, getattr(markers, name))
        for module in (markers, api, preflight):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, wrapped)
    outputs = [tmp_path / n for n in ("model.pt", "history.tsv", "probabilities.tsv")]
    steps.train(counts, panel, *outputs, settings=TrainSettings(max_epochs=2, n_restarts=1, progress=False))
    assert calls == {"validate_markers": 1, "match_panel": 1}
    assert all(p.is_file() for p in outputs)


def test_match_leaves_a_type_without_markers_in_the_data_out_of_the_fit_or_refuses_it_once_asked(caplog):
    """The one match keeps a type whose markers the data lack (the diagnostics report it); the fit
    leaves it out with one warning naming it, or refuses it with one line (require_every_type)."""
    rho = markers.marker_list_to_matrix({"A": ["a1", "a2"], "B": ["zz1", "zz2"], "C": ["b1"]})
    match = markers.match_panel(rho, ["a1", "a2", "b1"], quiet=True)
    assert match.empty_types == ["B"] and match.missing == ["zz1", "zz2"]
    with caplog.at_level(logging.WARNING, logger="cellassign_nf"):
        fitted = match.types_to_fit()
    assert list(fitted.rho.columns) == ["A", "C"] and list(fitted.panel.columns) == ["A", "B", "C"]
    assert [r.getMessage() for r in caplog.records] == [markers.left_out_warning(["B"])]
    assert "left out of the fit: B (" in markers.left_out_warning(["B"])
    with pytest.raises(markers.InputError, match=r"cell type\(s\) with no marker gene in the data: B\. .*"
                                                 r"without --require-every-type they are left out"):
        match.types_to_fit(require_every_type=True)
    full = markers.match_panel(rho.drop(columns="B"), ["a1", "a2", "b1"], quiet=True)
    assert full.types_to_fit() is full and full.types_to_fit(require_every_type=True) is full


def test_a_panel_without_a_type_that_has_a_marker_in_the_data_is_refused():
    """A gene of the data named in no type (a zero row) matches, but leaves every type empty: there
    is nothing to fit, and an 'other' type without markers does not count."""
    rho = markers.validate_markers(pd.DataFrame({"A": [0, 1], "B": [0, 1]}, index=["a1", "zz1"]))
    for panel in (rho, rho.assign(other=0)):
        match = markers.match_panel(panel, ["a1", "b1"], quiet=True)
        assert match.empty_types == ["A", "B"]
        with pytest.raises(markers.InputError, match=r"no cell type has a marker gene in the data \(A, B\)"):
            match.types_to_fit()


def _string_literals(path: Path) -> set[str]:
    """The string constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings}


def _quoted_in_src(value: str, outside: str) -> list[str]:
    """Source files (but ``outside``) whose code writes ``value`` as a string literal."""
    return [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != outside and value in _string_literals(p)]


@pytest.mark.parametrize("name", ["CELLTYPE_KEY", "PROB_KEY", "PROBS_KEY", "INPUT_INFO_KEY", "SIZE_FACTOR_KEY",
                                  "TRUE_CELLTYPE_KEY"])
def test_anndata_names_are_written_only_in_keys(name):
    """Catches a module that spells an obs/obsm/uns name itself instead of importing it."""
    assert _quoted_in_src(getattr(keys, name), "keys.py") == []


def test_history_columns_are_written_only_in_keys():
    for path in SRC.rglob("*.py"):
        if path.name != "keys.py":
            assert '"restart", "epoch", "train_loglik"' not in path.read_text(), path


@pytest.mark.parametrize("rule, most, python", [("COUNTS_IN_FOLDER", 3, True), ("RESERVED_SAMPLE_NAMES", 2, True),
                                                ("MARKER_FILE_SUFFIXES", 2, False)])
def test_input_rules_live_in_the_rules_file(rule, most, python):
    """The lists of input_rules.json are not written again in the package (``python``; its marker
    reader has one branch per suffix) or in the pipeline's Groovy: no source file quotes more
    than ``most`` of a list's entries (catches a copy that would drift, as the sample-name
    pattern once did)."""
    values = getattr(rules, rule)
    sources = [*(SRC.parents[1] / "subworkflows").rglob("*.nf"), *(SRC.parents[1] / "workflows").rglob("*.nf"),
               SRC.parents[1] / "main.nf", *(SRC.rglob("*.py") if python else [])]
    for path in sources:
        text = path.read_text()
        quoted = [v for v in values if re.search(r"""["']""" + re.escape(v) + r"""["']""", text)]
        assert len(quoted) <= most, f"{path} repeats {rule} of input_rules.json: {quoted}"


@pytest.mark.parametrize("name, ok", [("s1", True), ("Donor_3.rep-2", True), ("a+b", False), ("_s", False),
                                      ("-s", False), ("s 1", False), ("", False)])
def test_one_sample_name_rule(name, ok):
    """The report's check uses the pipeline's rule (input_rules.json), not a looser copy."""
    from cellassign_nf.report import check_sample_name

    assert rules.is_sample_name(name) is ok
    if ok:
        assert check_sample_name(name) == name
    else:
        with pytest.raises(markers.InputError, match="letters, digits, '_', '.', '-' only"):
            check_sample_name(name)
