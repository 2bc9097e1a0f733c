"""Progress bars on stderr (rich), shown on interactive terminals only; one implementation for
the steps' stages and the training epochs."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

log = logging.getLogger(__name__)


@contextlib.contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, counted: bool = False
                 ) -> Iterator[tuple[Callable[..., None], bool]]:
    """Yield ``(update, shown)``: ``update(completed, description=None, info="")`` moves the bar;
    ``shown`` says whether a bar is drawn (stderr is a terminal and ``enabled``). ``counted``:
    show ``completed/total``, the ``info`` text and the time left instead of the time spent."""
    if not enabled:
        yield (lambda *a, **k: None), False
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn()] if counted \
        else [TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total, info="")

        def update(completed: int, description: str | None = None, info: str = "") -> None:
            progress.update(task, completed=completed, info=info,
                            **({"description": description} if description else {}))

        yield update, console.is_terminal


@contextlib.contextmanager
def stage_progress(stages: Sequence[str]) -> Iterator[Callable[[], None]]:
    """A bar over the stages of a long step; ``advance()`` moves to the next stage."""
    quiet = logging.getLogger("cellassign_nf").getEffectiveLevel() > logging.INFO
    with progress_bar(stages[0], len(stages), enabled=not quiet) as (update, _):
        done = [0]

        def advance() -> None:
            done[0] += 1
            update(done[0], description=stages[min(done[0], len(stages) - 1)])

        yield advance
