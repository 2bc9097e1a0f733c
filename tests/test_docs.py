"""The documentation is true: every shell and Python block of README.md and docs/*.md runs as written.

Which blocks
    Every fenced block whose info string is ``bash``, ``sh``, ``shell`` or ``python`` in README.md and
    docs/*.md (README first, then docs/ by name; blocks in file order). Other fences (``csv``,
    ``text``, none) show files or output and are not run.

Marking a block that cannot run here -- the only convention
    An HTML comment on the line right before the opening fence, with a reason:

        <!-- docs-test: syntax REASON -->   only checked: `bash -n` (Python: compiled), and every
                                            `scripts/...` file it names exists
        <!-- docs-test: config REASON -->   as `syntax`, and the profiles of every `nextflow run`
                                            line resolve: `scripts/nextflow config . -profile P`

    e.g. ``<!-- docs-test: config needs AWS Batch -->``. Use it only for what this machine cannot
    host (AWS, a GPU, docker, a scheduler) or for commands that would recurse or reinstall (the
    test suite, scripts/setup). Every other block runs.

How a block runs
    All blocks run in one temporary folder laid out like a checkout after `scripts/setup`: the
    repository's top-level entries linked in, ``.venv`` linked to the environment running these
    tests, and the placeholder files of ``PLACEHOLDERS`` (the names the docs use for "your data").
    So README's relative paths (``assets/demo/...``, ``scripts/nextflow run .``) work as written,
    and a block may use what an earlier block wrote (README's steps feed docs/report.md's).
    Shell blocks run as ``bash`` with ``set -euo pipefail`` after ``source .venv/bin/activate``
    (README tells a user to do that once per shell; the venv is not otherwise on PATH); Python
    blocks run with the venv's python.

    The one change to what is written: ``scripts/nextflow run`` gets ``-resume`` (the folder's
    ``scripts/nextflow`` is a wrapper), so a pipeline command that the docs repeat, or a run
    that shares steps with an earlier one, reuses the finished tasks instead of computing them
    again. The outputs are the same (tests/test_pipeline.py checks -resume gives identical files).

    A failure names the Markdown file, the line of the block's opening fence, the block, the
    exit code and the output. Run one file's blocks with ``-k README`` (blocks of a file depend
    on the earlier ones of the same file only through the folder; docs/report.md uses README's).

Other checks here: the documented defaults (docs/pipeline.md's parameter table, docs/steps.md's
options) equal the code's, and `--help` of the pipeline lists every profile and option there is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
RUN_TIMEOUT = 2400  # seconds per block (a block may run the whole pipeline on the demo)
MARK = re.compile(r"^<!--\s*docs-test:\s*(\w+)\s+(.+?)\s*-->\s*$")
MODES = {"run", "syntax", "config"}


def _make_counts_h5(path: Path) -> None:
    """Demo sample 1 as a Cell Ranger (v3) filtered_feature_bc_matrix.h5."""
    import anndata as ad

    from tenx_files import plain_sample, write_cellranger_h5

    demo = ad.read_h5ad(REPO / "assets" / "demo" / "sample1.h5ad")
    write_cellranger_h5(path, plain_sample(demo.X, demo.obs_names, demo.var_names))


def _make_samplesheet(path: Path) -> None:
    # counts paths relative to the samplesheet's folder (the checkout): the same files the test
    # profile reads, so QC tasks of the test profile and of this samplesheet share the cache
    text = (REPO / "assets" / "samplesheet_test.csv").read_text()
    path.write_text(text.replace(",demo/", ",assets/demo/"))


# The names the docs use for "your data", and what stands in for them (made in the folder).
PLACEHOLDERS = {
    "counts.h5": _make_counts_h5,                                                 # demo sample1 as a 10x .h5
    "markers.csv": lambda p: shutil.copy(REPO / "assets" / "demo" / "markers.csv", p),  # the demo markers
    "samplesheet.csv": _make_samplesheet,                                         # the demo samplesheet
}

# the folder's scripts/nextflow: the real one, with -resume added to `run`
NEXTFLOW_WRAPPER = """#!/usr/bin/env bash
# docs test: the repository's scripts/nextflow, with -resume added to `run` (see tests/test_docs.py)
if [ "${1:-}" = run ]; then shift; exec "%(real)s" run -resume "$@"; fi
exec "%(real)s" "$@"
"""


@dataclass
class Block:
    file: Path
    line: int          # line of the opening fence (1-based)
    lang: str
    text: str
    mode: str          # run | syntax | config
    reason: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def find_blocks(path: Path) -> list[Block]:
    """The shell and Python blocks of one Markdown file, with their docs-test marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.group(1), fence.group(2), fence.group(3).lower()
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang not in SHELL and lang != "python":
            continue
        mode, reason = "run", ""
        prev = lines[start - 1].strip() if start else ""
        mark = MARK.match(prev)
        if prev.startswith("<!--") and "docs-test" in prev:
            assert mark and mark.group(1) in MODES - {"run"}, (
                f"{path.relative_to(REPO)}:{start}: bad docs-test mark {prev!r}; write "
                "<!-- docs-test: syntax REASON --> or <!-- docs-test: config REASON -->")
            mode, reason = mark.group(1), mark.group(2)
        blocks.append(Block(path, start + 1, "bash" if lang in SHELL else "python", "\n".join(body) + "\n",
                            mode, reason))
    return blocks


BLOCKS = [b for doc in DOCS for b in find_blocks(doc)]


# --------------------------------------------------------------------------------------------------
# the folder the blocks run in
# --------------------------------------------------------------------------------------------------
def _venv() -> Path:
    venv = Path(sys.prefix)
    assert (venv / "bin" / "activate").is_file(), (
        f"the tests run from {sys.executable}, not from a virtual environment: run them with "
        "scripts/test (or .venv/bin/python -m pytest) so that the docs' `source .venv/bin/activate` works")
    return venv


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkout")
    skip = {".git", ".venv", "scripts", "results", "work", ".nextflow", ".pytest_cache"}
    for entry in REPO.iterdir():
        if entry.name not in skip and not entry.name.startswith(".nextflow.log"):
            (root / entry.name).symlink_to(entry)
    (root / ".venv").symlink_to(_venv())
    scripts = root / "scripts"
    scripts.mkdir()
    for entry in (REPO / "scripts").iterdir():
        if entry.name != "nextflow":
            (scripts / entry.name).symlink_to(entry)
    wrapper = scripts / "nextflow"
    wrapper.write_text(NEXTFLOW_WRAPPER % {"real": REPO / "scripts" / "nextflow"})
    wrapper.chmod(0o755)
    for name, make in PLACEHOLDERS.items():
        make(root / name)
    (root / ".docs-test").mkdir()
    return root


def block_env(root: Path) -> dict[str, str]:
    """The environment of a new shell: the venv not on PATH until the block's shell activates it."""
    env = os.environ.copy()
    venv_bin = str(_venv() / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    env.setdefault("NXF_HOME", str(root / ".docs-test" / "nxf_home"))
    env["NXF_ANSI_LOG"] = "false"
    env.setdefault("NXF_OPTS", "-Xms64m -Xmx1g")
    env["MPLBACKEND"] = "Agg"
    return env


def _lines(text: str) -> list[str]:
    """Logical shell lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [ln.split(" #")[0].strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _explain(block: Block, what: str, proc: subprocess.CompletedProcess | None = None, wall: float = 0.0) -> str:
    out = f"\n{block.id}: {what}" + (f" (exit {proc.returncode}, {wall:.0f} s)" if proc else "")
    out += f"\n--- block ({block.lang}, {block.mode}) ---\n{block.text}"
    if proc is not None:
        output = (proc.stdout or "") + (proc.stderr or "")
        out += f"--- output (last 8000 characters) ---\n{output[-8000:]}"
    return out


def check_syntax(block: Block) -> None:
    if block.lang == "python":
        compile(block.text, block.id, "exec")
        return
    proc = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, _explain(block, "shell syntax error", proc)
    for script in re.findall(r"(?<![\w/.-])(scripts/[\w.-]+)", block.text):
        assert (REPO / script).is_file(), _explain(block, f"{script} does not exist")


def check_config(block: Block, root: Path, env: dict[str, str]) -> None:
    """Every `nextflow run .` line's profiles resolve (what can be checked without AWS, a GPU, docker ...)."""
    runs = [ln for ln in _lines(block.text) if re.search(r"(^|\s|/)nextflow run \.(\s|$)", ln)]
    assert runs, _explain(block, "marked 'config' but has no `nextflow run .` line")
    for ln in runs:
        profile = re.search(r"-profile\s+(\S+)", ln)
        cmd = [str(REPO / "scripts" / "nextflow"), "config", ".", *(["-profile", profile.group(1)] if profile else [])]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, _explain(block, f"`{' '.join(cmd[1:])}` failed for: {ln}", proc)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, checkout: Path) -> None:
    check_syntax(block)
    env = block_env(checkout)
    if block.mode == "syntax":
        return
    if block.mode == "config":
        check_config(block, checkout, env)
        return
    name = f"{block.file.stem}_{block.line}"
    if block.lang == "python":
        script = checkout / ".docs-test" / f"{name}.py"
        script.write_text(block.text)
        cmd = [str(checkout / ".venv" / "bin" / "python"), str(script)]
    else:
        script = checkout / ".docs-test" / f"{name}.sh"
        script.write_text("source .venv/bin/activate\nset -euo pipefail\n" + block.text)
        cmd = ["bash", str(script)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=False)
    wall = time.monotonic() - start
    print(f"{block.id}: {wall:.1f} s")
    assert proc.returncode == 0, _explain(block, "failed", proc, wall)


def test_every_doc_has_its_blocks_found():
    """The block finder sees what a reader sees: the docs' shell blocks are found, none is unterminated."""
    ids = {b.id.split(":")[0] for b in BLOCKS}
    assert {"README.md", "docs/pipeline.md", "docs/report.md"} <= ids, ids
    for doc in DOCS:
        fences = [ln for ln in doc.read_text(encoding="utf-8").splitlines() if re.match(r"^\s*```", ln)]
        assert len(fences) % 2 == 0, f"{doc.relative_to(REPO)}: unbalanced ``` fences"
        for ln in doc.read_text(encoding="utf-8").splitlines():
            if "docs-test" in ln and ln.strip().startswith("<!--"):
                assert MARK.match(ln.strip()), f"{doc.relative_to(REPO)}: bad mark {ln!r}"


def test_readme_says_how_to_get_the_commands():
    """Bare `cellassign-nf` / `multiqc` in the docs work after the one step README gives, said once."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count("source .venv/bin/activate") == 1, "README: say `source .venv/bin/activate` exactly once"
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert ".venv/bin/cellassign-nf" not in text, f"{doc.name}: use `cellassign-nf` after activating the venv"


# --------------------------------------------------------------------------------------------------
# documented defaults == the code's defaults
# --------------------------------------------------------------------------------------------------
def _schema_params() -> dict[str, dict]:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    out: dict[str, dict] = {}
    for group in (schema.get("$defs") or schema.get("definitions") or {}).values():
        for name, spec in group.get("properties", {}).items():
            out[name] = {**spec, "required": name in group.get("required", [])}
    return out


def _pipeline_param_rows() -> dict[str, str]:
    """docs/pipeline.md's parameter table: {name: documented default} (rows naming one parameter)."""
    rows = {}
    for ln in (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in ln.strip().strip("|").split("|")] if ln.startswith("| `--") else []
        if len(cells) >= 3:
            names = re.findall(r"`--(\w+)`", cells[0])
            for name in names:
                rows[name] = cells[1] if len(names) == 1 else "(several)"
    return rows


def _norm(value) -> str:
    text = str(value).strip().strip("`")
    return {"True": "true", "False": "false", "None": "none"}.get(text, text)


def test_pipeline_parameter_table_matches_the_schema():
    rows, schema = _pipeline_param_rows(), _schema_params()
    hidden = {k for k, v in schema.items() if v.get("hidden")}
    missing = sorted(set(schema) - set(rows) - hidden)
    assert not missing, f"docs/pipeline.md's parameter table lacks: {', '.join('--' + m for m in missing)}"
    unknown = sorted(set(rows) - set(schema))
    assert not unknown, f"docs/pipeline.md documents parameters the pipeline does not have: {unknown}"
    for name, documented in rows.items():
        if documented == "(several)" or name in ("max_cpus", "max_memory", "max_time"):
            continue
        spec = schema[name]
        if spec["required"]:
            assert documented == "(required)", f"--{name}: required, documented default {documented!r}"
            continue
        default = _norm(spec["default"]) if "default" in spec else "none"
        if name == "multiqc_config":
            default = default.replace("${projectDir}/", "")
        assert _norm(documented) == default, f"docs/pipeline.md: --{name} default {documented!r}, schema {default!r}"


def test_schema_defaults_match_nextflow_config():
    config = (REPO / "nextflow.config").read_text()
    block = re.search(r"^params \{(.*?)^\}", config, re.S | re.M).group(1)
    for name, spec in _schema_params().items():
        m = re.search(rf"^\s*{name}\s*=\s*(.+?)\s*(//.*)?$", block, re.M)
        assert m, f"nextflow.config sets no params.{name}"
        raw = m.group(1).strip()
        literal = re.fullmatch(r"'[^'$]*'|\"[^\"$]*\"|-?[\d.]+|true|false|null", raw)
        if not literal:
            continue  # an expression (e.g. the host's CPUs)
        value = raw.strip("'\"")
        if "default" in spec:
            assert _norm(value) == _norm(spec["default"]), f"params.{name}: config {value}, schema {spec['default']}"
        elif "default" not in spec:
            assert value == "null" or spec["required"], f"params.{name} = {value} in nextflow.config, no schema default"


def _cli_commands():
    from cellassign_nf.cli import main

    return main.commands


def test_steps_doc_lists_every_cli_option_with_its_default():
    """docs/steps.md's table: every option of each subcommand, and `[--opt VALUE]` shows the default."""
    text = (REPO / "docs" / "steps.md").read_text(encoding="utf-8")
    rows = {}
    for ln in text.splitlines():
        m = re.match(r"^\| [^|]+ \| `cellassign-nf ([\w-]+) (.*?)` \|", ln)
        if m:
            rows[m.group(1)] = m.group(2)
    commands = _cli_commands()
    assert set(rows) == set(commands), f"docs/steps.md rows {sorted(rows)} vs commands {sorted(commands)}"
    for name, usage in rows.items():
        cmd = commands[name]
        for param in cmd.params:
            if param.name == "help" or not getattr(param, "opts", None) or param.param_type_name == "argument":
                continue
            long = max(param.opts, key=len)
            if name == "run":
                continue  # run: "[all qc/train/annotate/diagnose options]"
            assert any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", usage) for o in param.opts), (
                f"docs/steps.md, `{name}`: option {long} is not documented")
            shown = re.search(rf"\[{re.escape(long)} ([^\]\s|\\]+)", usage)
            placeholder = shown and re.fullmatch(r"[A-Z_=]+", shown.group(1))
            literal = isinstance(param.default, (str, int, float)) and not param.is_flag
            if shown and not placeholder and literal:
                documented = shown.group(1).replace(",", "")
                default = param.default
                assert _norm(documented) == _norm(default) or (
                    isinstance(default, float) and float(documented) == default), (
                    f"docs/steps.md, `{name}`: [{long} {shown.group(1)}] but the default is {default}")
    run_help = " ".join(commands["run"].help.split())
    assert "report" in run_help and "OUTDIR/report/" in run_help


def test_pipeline_help_lists_every_profile_and_marks_only_required_params(checkout):
    config = (REPO / "nextflow.config").read_text()
    profiles_block = re.search(r"^profiles \{(.*?)^\}", config, re.S | re.M).group(1)
    profiles = re.findall(r"^    (\w+)\s*\{", profiles_block, re.M)
    proc = subprocess.run([str(REPO / "scripts" / "nextflow"), "run", ".", "--help"], cwd=checkout,
                          env=block_env(checkout), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("Profiles:"))
    listed = re.findall(r"\b(\w+)\b", line.split(":", 1)[1].split("(")[0])
    assert sorted(listed) == sorted(profiles), f"--help lists {listed}, nextflow.config defines {profiles}"
    doc = (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    table = doc.split("## Profiles", 1)[1].split("\n## ", 1)[0]
    documented = {n for ln in table.splitlines() if ln.startswith("| `") for n in re.findall(r"`(\w+)`", ln.split("|")[1])}
    assert set(profiles) <= documented, f"docs/pipeline.md's profile table lacks {sorted(set(profiles) - documented)}"
    for ln in proc.stdout.splitlines():
        if "(required)" in ln:
            assert "[default:" not in ln, f"a parameter marked required has a default: {ln}"
