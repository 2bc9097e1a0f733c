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


class TooFewCellsError(InputError, ValueError):
    """Fewer cells than ``ModelSettings.min_cells_fit``: too few to fit CellAssign reliably. Exit code 2
    from the CLI; the pipeline sets such a sample aside with this message as the reason."""

    def __init__(self, n_cells: int, min_cells_fit: int, path: str | Path | None = None) -> None:
        self.n_cells, self.min_cells_fit = int(n_cells), int(min_cells_fit)
        cells = f"{self.n_cells:,} cell{'' if self.n_cells == 1 else 's'}"
        super().__init__(path, f"{cells}, fewer than min_cells_fit={self.min_cells_fit:,}: too few to fit CellAssign "
                               "reliably",
                         "Fit more cells (e.g. cohort mode), or lower --min-cells-fit / min_cells_fit at your own "
                         "risk.")


class DuplicateMarkerError(InputError, AssertionError):
    """A marker matrix lists a gene more than once. Also an AssertionError, the error scvi-tools'
    CellAssign raises for it, so that code written for scvi-tools catches it unchanged."""
