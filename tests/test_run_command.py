"""runCommand, through which the container check of `-profile docker` reads the daemon's answers.

A command that writes to stdout and to stderr must come back with its exit status and the last
line it wrote, every time: reading the two streams with two threads into one buffer, and using
the buffer before those threads had finished, returned a wrong last line in 77 of 300 calls
here and once crashed one of the threads, whose Java stack trace then followed the pipeline's
one-line error (tests/test_docker.py). tests/nf/run_command.nf makes the calls in one
Nextflow start.
"""
from __future__ import annotations

from test_pipeline import REPO, _explain, nextflow, nxf_home  # noqa: F401 (fixture)

CALLS = 300


def test_run_command_returns_the_last_line_written_every_time(tmp_path, nxf_home):
    result = nextflow(["run", str(REPO / "tests" / "nf" / "run_command.nf"), "--times", str(CALLS)],
                      tmp_path, nxf_home, timeout=300)
    assert result.returncode == 0, _explain(result)
    assert f"DONE\t{CALLS}\t0" in result.stdout.splitlines(), _explain(result)
    assert "Exception" not in result.stdout + result.stderr, _explain(result)
