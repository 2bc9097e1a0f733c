"""User-facing errors: one message naming the file, the problem and the fix."""
from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input that the user can fix. The CLI prints it on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.path}: " if self.path else ""
        fix = f" {self.fix}" if self.fix else ""
        return f"{where}{self.problem}.{fix}"


class DeviceError(InputError, ValueError):
    """A GPU was asked for (``--device cuda``) but CUDA is not usable here. Exit code 2 from the CLI."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(None, problem, fix)
