"""Command-line side of training and the demo (Rich display; used by cli.py only)."""

from __future__ import annotations

import logging
import re
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoorgan.cli.text import terminal_safe

_EPOCH = re.compile(r"Epoch (\d+)$")
_LOSS = re.compile(r"(train_loss|val_loss|Pseudo dice) (.+)$")


class EpochProgress(logging.Handler):
    """A progress bar over training epochs, fed by nnU-Net's epoch lines (logged by the engine).

    The lines themselves are still logged above the bar; the bar shows the epoch count and the
    latest losses and pseudo Dice.
    """

    def __init__(self, console: Console, total_epochs: int | None, *, enabled: bool = True):
        super().__init__(level=logging.INFO)
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=not enabled)
        self._bar = self._progress.add_task("preparing", total=total_epochs)
        self._latest: dict[str, str] = {}
        self._logger = logging.getLogger("autoorgan.engine")
        self._saved_level = self._logger.level
        self._enabled = enabled

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        epoch = _EPOCH.search(message)
        if epoch:
            self._progress.update(self._bar, completed=int(epoch.group(1)), description="training")
            return
        loss = _LOSS.search(message)
        if loss:
            self._latest[loss.group(1)] = terminal_safe(loss.group(2))
            summary = ", ".join(f"{k} {v}" for k, v in self._latest.items())
            self._progress.update(self._bar, description=f"training ({summary})")

    def __enter__(self) -> EpochProgress:
        if self._enabled and self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)  # nnU-Net's epoch lines are logged at INFO
        self._logger.addHandler(self)
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved_level)
        task = self._progress.tasks[0]
        if exc_type is None and task.total is not None:
            self._progress.update(self._bar, completed=task.total, description="trained")
        self._progress.stop()


def demo_table(dice: dict[str, float]) -> Table:
    """Dice per structure of the demo, with the mean."""
    table = Table(title="demo model vs. phantom truth")
    table.add_column("structure")
    table.add_column("Dice", justify="right")
    for name, score in dice.items():
        style = "green" if score >= 0.9 else "yellow"
        table.add_row(terminal_safe(name), f"[{style}]{score:.3f}[/]")
    if dice:
        table.add_row("[bold]mean[/]", f"[bold]{sum(dice.values()) / len(dice):.3f}[/]")
    return table
