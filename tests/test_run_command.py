"""runCommand, through which the container check of `-profile docker` reads the daemon's answers.

A command that writes to stdout and to stderr must come back with its exit status and the last
line it wrote, every time, and without a Java stack trace: the two streams are read by two
threads into one buffer, so a runCommand that used the buffer before both threads had finished
would return a wrong last line now and then. tests/nf/run_command.nf makes the calls in one
Nextflow start; 300 calls make such a race show.
"""
from __future__ import annotations

from nextflow_helpers import REPO, explain, nextflow

CALLS = 300


def test_run_command_returns_the_last_line_written_every_time(tmp_path, nxf_home):
    result = nextflow(["run", str(REPO / "tests" / "nf" / "run_command.nf"), "--times", str(CALLS)],
                      tmp_path, nxf_home)
    assert result.returncode == 0, explain(result)
    assert f"DONE\t{CALLS}\t0" in result.stdout.splitlines(), explain(result)
    assert "Exception" not in result.stdout + result.stderr, explain(result)
