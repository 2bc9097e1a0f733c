"""The pipeline's parameters against the `cellassign-nf` options they are passed to: each default
is defined once, in the Python (the click options of the CLI), and its copies cannot drift.

A parameter whose nextflow_schema.json entry has a "step" (a subcommand, or a list of them: the
training options go to `train` and to `predict`'s refit) is passed to that subcommand by name
(param foo_bar is --foo-bar VALUE): conf/modules.config calls `cliOptions('STEP')` in the process
that runs it; a few reach their step under another name (DESIGN and REPORT below).
For every one of them the default of nextflow.config (as `nextflow config` resolves it), the
default of nextflow_schema.json and the default of the subcommand's option must be equal.

Drift it catches:
* a default changed in one place only, e.g. the CLI's `--min-delta` default moved to 3 while
  params.min_delta stays 2 (a pipeline run would then fit differently from `cellassign-nf train`
  with its defaults), or nextflow.config and nextflow_schema.json (`--help`) disagreeing;
* a parameter passed to a subcommand that has no such option (an option renamed or removed in the
  CLI, a misspelt name in modules.config): every task of that step would fail with "No such option";
* a parameter in nextflow.config that nextflow_schema.json does not describe (it would be flagged as
  unknown and missing from `--help`), or one described in the schema that nextflow.config lacks.
"""
from __future__ import annotations

import json
import re

import click
import pytest

from nextflow_helpers import REPO, explain, nextflow

# Parameters that reach a subcommand under another option name: (process, param) -> option
RENAMED = {
    ("DESIGN", "covariates"): "--covariates",
    ("DESIGN", "design_formula"): "--formula",
    ("REPORT", "skip_umap"): "--no-umap",
}


def _modules_config_blocks() -> dict[str, str]:
    """conf/modules.config: process name -> the text of its withName block."""
    text = (REPO / "conf" / "modules.config").read_text()
    parts = re.split(r"^\s*withName:\s*'([\w|]+)'\s*\{", text, flags=re.M)
    return {name: body for names, body in zip(parts[1::2], parts[2::2]) for name in names.split("|")}


def _subcommand(process: str) -> str | None:
    """The `cellassign-nf` subcommand a process's script calls (None: it calls another tool)."""
    module = REPO / "modules" / "local" / process.lower() / "main.nf"
    match = re.search(r"^\s*cellassign-nf ([\w-]+)", module.read_text(), re.M)
    return match.group(1) if match else None


def passed_params() -> list[tuple[str, str, str]]:
    """(process, subcommand, param) for every parameter modules.config passes to a cellassign-nf
    subcommand: the schema's parameters of each step named in a process's `cliOptions('STEP')`."""
    steps: dict[str, list[str]] = {}
    for name, spec in _schema().items():
        for step in [spec["step"]] if isinstance(spec.get("step"), str) else spec.get("step", []):
            steps.setdefault(step, []).append(name)
    found = []
    for process, body in _modules_config_blocks().items():
        sub = _subcommand(process)
        for step in re.findall(r"cliOptions\('([\w-]+)'\)", body):
            assert step == sub, f"{process} runs `cellassign-nf {sub}` but is given the parameters of step {step}"
            found += [(process, sub, name) for name in steps.pop(step)]
        found += [(process, sub, name) for (p, name) in RENAMED if p == process]
    assert not steps, f"nextflow_schema.json names steps that no process passes on: {steps}"
    return found


def _option(subcommand: str, process: str, param: str) -> click.Option:
    from cellassign_nf.cli import main

    wanted = RENAMED.get((process, param), "--" + param.replace("_", "-"))
    command = main.commands[subcommand]
    option = next((p for p in command.params if isinstance(p, click.Option) and wanted in p.opts), None)
    assert option is not None, f"{process}: params.{param} is passed as {wanted}, which `cellassign-nf {subcommand}` lacks"
    return option


def _cli_default(subcommand: str, option: click.Option):
    from cellassign_nf.cli import main

    default = option.get_default(click.Context(main.commands[subcommand]))
    return default if default is None or isinstance(default, (bool, int, float, str)) else None  # no default: None


def _schema() -> dict[str, dict]:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    groups = schema.get("$defs") or schema.get("definitions") or {}
    return {name: spec for group in groups.values() for name, spec in group.get("properties", {}).items()}


def _groovy_value(text: str):
    """A value as `nextflow config -o flat` prints it: 'text', a number, true, false or null."""
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*(E-?\d+)?", text):
        return float(text)
    assert text.startswith("'") and text.endswith("'"), text
    return text[1:-1]


@pytest.fixture(scope="module")
def config_params(tmp_path_factory, nxf_home) -> dict[str, object]:
    result = nextflow(["config", str(REPO), "-o", "flat"], tmp_path_factory.mktemp("config"), nxf_home)
    assert result.returncode == 0, explain(result)
    return {m.group(1): _groovy_value(m.group(2)) for m in re.finditer(r"^params\.(\w+) = (.*)$", result.stdout, re.M)}


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b and type(a) is type(b)
    return float(a) == float(b)  # 2 == 2.0


def test_modules_config_passes_the_parameters_of_every_cellassign_step():
    passed = passed_params()
    assert {p for p, _, _ in passed} >= {"QC", "DESIGN", "TRAIN", "PREDICT", "ANNOTATE", "REPORT"}, passed
    assert all(sub for _, sub, _ in passed), f"a parameter is passed to a process that calls no cellassign-nf: {passed}"
    blocks = _modules_config_blocks()
    for (process, param), option in RENAMED.items():
        assert f"params.{param}" in blocks[process] and option in blocks[process], (process, param, option)


@pytest.mark.parametrize("process,subcommand,param", passed_params(), ids=lambda v: str(v))
def test_each_passed_parameter_has_one_default(config_params, process, subcommand, param):
    option = _option(subcommand, process, param)
    cli = _cli_default(subcommand, option)
    if option.is_flag:  # true: the flag is given; false: left out
        cli = bool(cli)
    assert param in config_params, f"nextflow.config sets no params.{param}"
    spec = _schema().get(param)
    assert spec is not None, f"nextflow_schema.json does not describe {param}"
    config, schema = config_params[param], spec.get("default")
    assert _same(config, cli), f"params.{param} = {config!r} in nextflow.config, {max(option.opts, key=len)} {cli!r} in the CLI"
    assert _same(schema, cli), f"nextflow_schema.json: {param} default {schema!r}, {max(option.opts, key=len)} {cli!r} in the CLI"


def test_nextflow_config_and_schema_have_the_same_parameters(config_params):
    schema = set(_schema())
    assert set(config_params) - schema == set(), "in nextflow.config, not in nextflow_schema.json"
    assert schema - set(config_params) == set(), "in nextflow_schema.json, not in nextflow.config"
