"""What ``autoorgan check-precision`` shows: progress over the float32 and bfloat16 runs, the table
of each structure's Dice and the verdict against the bounds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoorgan.cli.text import terminal_safe

if TYPE_CHECKING:
    from autoorgan.runs.precision_check import PrecisionCheck

#: Rows of the table, lowest Dice first; the others are counted below it.
SHOWN = 20


@contextmanager
def run_progress(console: Console, task: str, *, enabled: bool = True) -> Iterator[Callable[[str, float, int], None]]:
    """A progress bar over the float32 and bfloat16 runs; yields the callback the check calls."""
    if not enabled:
        yield lambda what, done, total: None
        return
    with Progress(TextColumn(f"checking {terminal_safe(task)}:"), TextColumn("{task.description}"), BarColumn(),
                  TaskProgressColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
        job = bar.add_task("", total=None)

        def advance(what: str, done: float, total: int) -> None:
            bar.update(job, description=terminal_safe(what), completed=done, total=total)

        yield advance


def dice_table(result: PrecisionCheck) -> Table:
    """Each structure's Dice in each CT, lowest first (at most :data:`SHOWN` rows)."""
    table = Table(title=f"bf16 against fp32 labels, task '{terminal_safe(result.task.name)}'", title_justify="left")
    for column in ("structure", "case", "Dice", "voxels fp32", "voxels bf16"):
        table.add_column(column, justify="left" if column in ("structure", "case") else "right")
    ranked = result.worst_first()
    for score in ranked[:SHOWN]:
        style = "red" if score.dice < result.agreement.min_dice_bound else None
        table.add_row(terminal_safe(score.structure), terminal_safe(score.case), f"{score.dice:.5f}",
                      str(score.voxels_fp32), str(score.voxels_bf16), style=style)
    if len(ranked) > SHOWN:
        table.caption = f"{len(ranked) - SHOWN} more, each with Dice of at least {ranked[SHOWN].dice:.5f}"
    return table


def summary(result: PrecisionCheck) -> str:
    """One line: the minimum and the median against their bounds, the verdict and the times."""
    agreement = result.agreement
    verdict = "[green]agrees[/]" if result.agrees else "[bold red]does not agree[/]"
    times = ", ".join(f"{run} {seconds:.0f} s" for run, seconds in result.seconds.items())
    return (f"min Dice {agreement.min_dice:.5f} (at least {agreement.min_dice_bound:g} needed), median "
            f"{agreement.median_dice:.5f} (at least {agreement.median_dice_bound:g}) over {len(agreement.scores)} structure(s) in {len(agreement.dice)} CT(s): "
            f"{verdict} ({times})")


def emulation_note(result: PrecisionCheck) -> str | None:
    """The line said where this CPU has no native bfloat16, or ``None``."""
    if not result.emulated:
        return None
    return (f"this CPU has no native bfloat16 ({result.support.describe()}): bf16 was emulated (slow; nearly "
            "the same numbers as on a CPU that has it)")


def outcome(result: PrecisionCheck) -> str:
    """The last line: what ``--precision auto`` does with the model from now on, and where it is recorded."""
    if result.check_path is None:
        return terminal_safe(f"task '{result.task.name}': bf16 {'agrees' if result.agrees else 'does not agree'}; "
                             "not recorded (--dry-run)")
    effect = ("'--precision auto' runs it in bf16 on CPUs with native bfloat16" if result.agrees
              else "'--precision auto' keeps it in fp32")
    return terminal_safe(f"task '{result.task.name}': {effect}; recorded in {result.check_path}")
