"""The repository stands on its own: no tracked file reads or cites a path outside the clone.

`.ci/run` proves it for real by running the test suite in a fresh clone in an empty temporary
folder; this test is the cheap guard that names the offending file and line on every run.
"""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Paths that exist only on the developers' machines: the reference folder beside the checkout
# (reached as a sibling folder or through the parent of ROOT), the original design brief and the
# developers' checkouts. The forms are assembled from parts, so this file cites none of them.
SIBLING, BRIEF = "shared", "DESIGN" + ".md"
OUTSIDE = re.compile(
    rf"\.\./{SIBLING}|/work/|parents?(\[\d\]|\b)\s*/\s*['\"]{SIBLING}['\"]|{re.escape(BRIEF)}",
)


# The one permitted reference: .ci/run hands the vendored nf-amazon source beside the checkout it was
# started from (or beside the local repository that checkout was cloned from) to its fresh clone,
# through $CELLASSIGN_NF_AMAZON_SRC (the clone reads only the variable).
ALLOWED = {(".ci/run", 'nf_amazon_rel="../' + SIBLING + '/vendor/nf-amazon-2.9.0"')}


def tracked_text_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or Path(name) == Path(__file__).relative_to(ROOT) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192]:  # text only
            yield name, data.decode("utf-8", errors="replace")


def test_no_tracked_file_refers_outside_the_repository():
    hits = [f"{name}:{i}: {line.strip()}"
            for name, text in tracked_text_files()
            for i, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line) and (name, line.strip()) not in ALLOWED]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_guard_catches_the_known_forms():
    # the forms this guard exists for (the conftest once read the reference data through ROOT's parent)
    for line in [f'ORIGINAL = ROOT.parent / "{SIBLING}" / "data"', f"see ../{SIBLING}/data", f"/work/{SIBLING}/{BRIEF}",
                 f"the math of {BRIEF} section 2"]:
        assert OUTSIDE.search(line), line
    for line in ['ORIGINAL = ROOT / "tests" / "data"', "shared by two types", "nextflow work/ folder"]:
        assert not OUTSIDE.search(line), line


def test_reference_data_ships_with_origin_and_licence():
    data = ROOT / "tests" / "data" / "cellassign-original"
    readme = (data / "README.md").read_text()
    assert "Irrationone/cellassign" in readme and "Apache" in readme
    assert "Apache License" in (data / "LICENSE").read_text()
    tracked = subprocess.run(["git", "ls-files", str(data)], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.split()
    names = {Path(t).name for t in tracked}
    for needed in ["example_counts.csv", "example_cells.csv", "example_markers.csv", "example_fit_gamma.csv",
                   "example_fit_delta.csv", "example_fit_celltypes.csv"]:
        assert needed in names, f"{needed} is not committed under tests/data"


def _local_imports(folder: Path) -> dict[str, set[str]]:
    """For each module in ``folder``: the sibling modules it imports (anywhere in the file)."""
    import ast

    modules = {p.stem: p for p in folder.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = found & modules.keys() - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_benchmark_scripts_import_without_circles():
    graph = _local_imports(ROOT / "benchmarks")
    assert {"bench", "harness", "report", "rbf_memory"} <= graph.keys()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert graph["harness"] == set()  # the shared helpers import no other script
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None  # the check itself finds a loop


def test_model_doc_names_what_the_code_has():
    """docs/model.md names symbols as in the code: each `identifier` it cites exists in the package
    or the tests (file names as files); the original implementation's own names are listed."""
    doc = (ROOT / "docs" / "model.md").read_text()
    code = "\n".join(p.read_text() for p in [*(ROOT / "src" / "cellassign_nf").rglob("*.py"),
                                              *(ROOT / "tests").glob("*.py")])
    original_names = {"ld_mean", "ld_var", "num_runs", "theta"}  # the R package's names; theta: math
    cited = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)(?:\(\))?`", doc))
    assert len(cited) > 50
    missing = []
    for name in sorted(cited - original_names):
        if name.endswith(".py"):
            if not list((ROOT / "src" / "cellassign_nf").rglob(name)):
                missing.append(name)
        elif not re.search(r"\b" + re.escape(name.split(".")[-1]) + r"\b", code):
            missing.append(name)
    assert not missing, f"docs/model.md names what the code does not have: {missing}"


def _function_body_lengths(path: Path):
    """(name, lines of the body without its docstring) of every function in a module."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if (isinstance(node.body[0], ast.Expr) and isinstance(
                getattr(node.body[0], "value", None), ast.Constant) and len(node.body) > 1) else node.body
            yield node.name, node.end_lineno - body[0].lineno + 1


def test_functions_are_of_a_readable_size():
    """No function body of the package over 60 lines (docstrings and signatures not counted)."""
    too_long = [f"{p.relative_to(ROOT)}:{name} ({n} lines)"
                for p in sorted((ROOT / "src" / "cellassign_nf").rglob("*.py"))
                for name, n in _function_body_lengths(p) if n > 60]
    assert not too_long, "split these: " + ", ".join(too_long)
