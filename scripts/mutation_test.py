"""Mutation testing of the model and the training loop (not part of CI: it takes a while).

    scripts/mutation-test named            # the named model mutations, which tests kill each
    scripts/mutation-test mutmut           # mutmut over model.py and train.py, killed / survived per file
    scripts/mutation-test mutmut --jobs 8  # in parallel

Both work on a scratch copy of the repository (``--workdir``, default a temporary folder), so the
working tree is never modified. ``named`` applies each mutation below as a text replacement and
runs the model tests against it; a mutation that no test fails on is reported as SURVIVED.
``mutmut`` needs ``pip install -r requirements-dev.txt`` (mutmut 3); it writes its own
``[tool.mutmut]`` settings into the copy's pyproject.toml and reads the results from ``mutants/``.
Exit status: 0 when every named mutation is killed (``named``) or always 0 (``mutmut``, a report).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_TESTS = ["tests/test_model.py", "tests/test_train.py", "tests/test_fit.py"]

# name -> list of (file, text, replacement); each text must occur exactly once in its file
NAMED = {
    "shrinkage off (default)": [("settings.py", "shrinkage: bool = option(True,", "shrinkage: bool = option(False,")],
    "B = 2 RBF centres": [("settings.py", "N_CENTRES = 10", "N_CENTRES = 2")],
    "min_delta 3 (default)": [("settings.py", "min_delta: float = option(2.0,", "min_delta: float = option(3.0,")],
    "prior variance used as an SD": [("model.py", "z.square() / var - 0.5 * torch.log(2 * math.pi * var)",
                                      "z.square() / var.square() - 0.5 * torch.log(2 * math.pi * var.square())")],
    "prior mean sign flipped": [("model.py", "z = self.delta_log - self.delta_log_mean",
                                 "z = self.delta_log + self.delta_log_mean")],
    "gamma not detached in the M step": [("train.py", "gamma_from_joint(joint.detach())", "gamma_from_joint(joint)")],
    "Dirichlet concentration ignored (model)": [("model.py", "C, alpha = self.n_types, self.dirichlet_concentration",
                                                 "C, alpha = self.n_types, 1e-2")],
    "Dirichlet concentration ignored (API)": [("api.py", "dirichlet_concentration=p.dirichlet_concentration,", "")],
    "size factors ignored (model)": [("model.py", "log_mu = log_s[:, None] + column",
                                      "log_mu = 0.0 * log_s[:, None] + column")],
    "size factors ignored (API)": [("api.py", "log_s=torch.as_tensor(np.log(s[keep]), dtype=torch.float32)",
                                    "log_s=torch.zeros(int(keep.sum()))")],
}

MUTMUT_CONFIG = """
[tool.mutmut]
source_paths = ["src"]
only_mutate = {paths}
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]
also_copy = ["tests", "assets"]
"""


def copy_repo(dest: Path, source: Path = REPO) -> Path:
    """The tracked and untracked (not ignored) files of the working tree, as they are now."""
    if not (source / ".git").exists():  # e.g. an exported older revision: copy it whole
        shutil.copytree(source, dest)
        return dest
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = source / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run_named(workdir: Path, tests: list[str]) -> int:
    survived = []
    print(f"{'mutation':42s} {'result':9s} tests that fail (of {' '.join(tests)})")
    for name, edits in NAMED.items():
        copy = workdir / re.sub(r"\W+", "_", name)
        shutil.copytree(REPO / "src", copy / "src")
        applied = True
        for file, text, replacement in edits:
            path = copy / "src" / "cellassign_nf" / file
            source = path.read_text()
            if source.count(text) != 1:
                applied = False
                break
            path.write_text(source.replace(text, replacement))
        if not applied:
            print(f"{name:42s} {'NOT FOUND':9s} (the code changed: update NAMED in {Path(__file__).name})")
            survived.append(name)
            continue
        env = {**os.environ, "PYTHONPATH": str(copy / "src")}
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                              cwd=REPO, env=env, capture_output=True, text=True)
        failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
        failed = sorted({f.split(" - ")[0].replace("tests/", "") for f in failed})
        status = "killed" if failed else "SURVIVED"
        if not failed:
            survived.append(name)
        print(f"{name:42s} {status:9s} {', '.join(failed) or '-'}  ({time.time() - t0:.0f} s)", flush=True)
    print(f"\n{len(NAMED) - len(survived)} of {len(NAMED)} named mutations killed")
    return 1 if survived else 0


def run_mutmut(workdir: Path, tests: list[str], jobs: int, paths: list[str], source: Path) -> int:
    repo = copy_repo(workdir / "repo", source)
    with open(repo / "pyproject.toml", "a") as fh:
        fh.write(MUTMUT_CONFIG.format(tests=json.dumps(tests), paths=json.dumps(paths)))
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": ""}  # mutmut imports the mutated copy under mutants/src
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=repo, env=env)
    print(f"mutmut run: {time.time() - t0:.0f} s")
    status = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", 36: "timeout",
              None: "not checked"}
    for meta in sorted((repo / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        counts = Counter(status.get(c, "suspicious") for c in codes.values())
        total = sum(counts.values())
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        name = meta.relative_to(repo / "mutants").as_posix()[:-5]
        print(f"{name}: {total} mutants, killed {killed} ({100 * killed / max(total, 1):.1f}%), "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "killed"))
        for key, code in sorted(codes.items()):
            if status.get(code) != "killed":
                print(f"    {status.get(code, 'suspicious'):10s} {key}")
    print(f"details: cd {repo} && python -m mutmut show <name>")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["named", "mutmut"])
    parser.add_argument("--tests", nargs="+", default=MODEL_TESTS, help="test files to run against each mutant")
    parser.add_argument("--paths", nargs="+", default=["src/cellassign_nf/model.py", "src/cellassign_nf/train.py"],
                        help="mutmut: files to mutate")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="mutmut: the tree to test (default this one; e.g. an exported older revision)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutmut: mutants tested at once")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cellassign-mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"scratch copy in {workdir}")
    if args.what == "named":
        return run_named(workdir, args.tests)
    return run_mutmut(workdir, args.tests, args.jobs, args.paths, args.source.resolve())


if __name__ == "__main__":
    sys.exit(main())
