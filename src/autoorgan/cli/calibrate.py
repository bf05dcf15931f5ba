"""What ``autoorgan calibrate`` shows: progress over the candidates and the table of their scores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from autoorgan.runs.calibrate import Calibration

#: Rows of the table besides the winner and the runner-up.
SHOWN = 8


@contextmanager
def candidate_progress(console: Console, task: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over the orientations tried; yields the callback calibration calls."""
    if not enabled:
        yield lambda done, total: None
        return
    with Progress(TextColumn(f"calibrating {task}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("candidates", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(job, completed=done, total=total)

        yield advance


def candidate_table(result: Calibration) -> Table:
    """The best candidates (and the runner-up, wherever it ranks) with their scores."""
    runner = result.runner_up
    table = Table(title=f"orientations tried for task '{result.task.name}' ({len(result.candidates)})",
                  title_justify="left")
    for column in ("orientation", "score", "anatomy", "certainty", "coherence", "foreground", "Dice w/ winner", ""):
        table.add_column(column, justify="left" if column in ("orientation", "") else "right")
    for rank, c in enumerate(result.candidates):
        if rank >= SHOWN and c is not runner:
            continue
        note = "winner" if rank == 0 else ("runner-up" if c is runner else
                                           ("same labels" if (c.same_as_winner or 0) >= 0.9 else ""))
        table.add_row(c.codes, f"{c.score:.3f}", f"{c.anatomy:.2f}", f"{c.certainty:.3f}", f"{c.coherence:.3f}",
                      f"{c.foreground:.2f}", f"{c.same_as_winner:.2f}" if c.same_as_winner is not None else "-", note)
    return table


def summary(result: Calibration) -> str:
    """One line: the winner, its margin over the runner-up, the time."""
    runner = result.runner_up
    lead = f"leads {runner.codes} by {result.margin:.3f}" if runner is not None else "has no rival"
    return (f"{result.winner.codes} {lead} (at least {result.min_margin:g} needed), "
            f"{len(result.candidates)} orientations in {result.seconds:.0f} s")
