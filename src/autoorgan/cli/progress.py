"""Rich progress display for batch runs (used by the CLI only; the library just emits events).

On a terminal: a bar for the case being predicted (sliding-window tiles done of all, percentage,
the case's elapsed time and the time left of its network), and a line for the batch (cases done
of all, percentage, the batch's elapsed time and the time left). The batch's estimate is the mean
time of the cases this run finished times the cases left; before the first one finishes, the
current case's own estimate (its elapsed time and what its tiles say is left) stands for each case.

Elsewhere (``console.is_terminal`` false: a log file, a cluster job's output) nothing is redrawn:
one line per finished case, ``done ct_01 (12.3 s)``.

Case ids come from file names: they are shown through :func:`~autoorgan.cli.text.terminal_safe`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from autoorgan.batch.job import CaseResult, ProgressListener
from autoorgan.cli.text import terminal_safe

if TYPE_CHECKING:
    from typing_extensions import Self


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on) of a non-negative number of seconds."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _CountColumn(ProgressColumn):
    """``12/40 tiles 30%``; nothing while the total is unknown (field ``counting`` false)."""

    def render(self, task: Task) -> Text:
        if task.total is None or not task.fields.get("counting", True):
            return Text("")
        unit = task.fields.get("unit", "")
        return Text(f"{int(task.completed)}/{int(task.total)} {unit} {task.percentage:3.0f}%",
                    style="progress.percentage")


class _EtaColumn(ProgressColumn):
    """``ETA 1:23``, counting down to the task's ``finish_at`` (a ``time.monotonic()`` time)."""

    def render(self, task: Task) -> Text:
        finish_at = task.fields.get("finish_at")
        if finish_at is None:
            return Text("")
        return Text(f"ETA {clock(finish_at - time.monotonic())}", style="progress.remaining")


class RichProgress(ProgressListener):
    """A bar for the current case's tiles and a line for the batch's cases (see the module's
    docstring); one line per finished case where the console is no terminal; with
    ``enabled=False`` (``--quiet``) nothing at all."""

    def __init__(self, console: Console, *, enabled: bool = True):
        self._console = console
        self._enabled = enabled
        self._live = enabled and console.is_terminal
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            _CountColumn(),
            TimeElapsedColumn(),
            _EtaColumn(),
            console=console,
            disable=not self._live,
            transient=False,
        )
        self._batch = self._progress.add_task("cases", total=None, visible=False, unit="cases", finish_at=None)
        self._case = self._progress.add_task("", total=None, visible=False, unit="tiles", finish_at=None)
        self._to_do = 0
        #: Seconds of the cases this run worked on and finished (not those complete before it).
        self._durations: list[float] = []
        self._case_id: str | None = None
        self._case_start = 0.0
        self._tiles_start = 0.0
        self._tiles_done = 0

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.update(self._case, visible=False)
        self._progress.stop()

    def batch_started(self, total: int, to_do: int) -> None:
        self._to_do = to_do
        self._progress.update(self._batch, total=total, completed=0, visible=True,
                              description=f"cases ({total - to_do} already complete)" if to_do < total else "cases")

    def case_started(self, case_id: str) -> None:
        self._case_id, self._case_start, self._tiles_done = case_id, time.monotonic(), 0
        # (reset keeps the last total, and replaces the fields)
        self._progress.reset(self._case, completed=0, visible=True, unit="tiles", counting=False, finish_at=None,
                             description=f"{terminal_safe(case_id)}: starting")
        self._update_batch_eta()

    def case_stage(self, case_id: str, stage: str) -> None:
        self._progress.update(self._case, description=f"{terminal_safe(case_id)}: {terminal_safe(stage)}")

    def case_progress(self, case_id: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0 or done < self._tiles_done:  # a new sliding window (another model, another region)
            self._tiles_start = now
        self._tiles_done = done
        finish_at = None
        if 0 < done and total > 0:
            finish_at = now + (now - self._tiles_start) / done * (total - done)
        self._progress.update(self._case, total=max(total, 1), completed=min(done, total), counting=True,
                              finish_at=finish_at)
        self._update_batch_eta(finish_at)

    def case_finished(self, result: CaseResult) -> None:
        self._progress.advance(self._batch)
        worked = result.case_id == self._case_id
        if worked:
            self._durations.append(result.seconds)
            self._case_id = None
            self._progress.update(self._case, visible=False, finish_at=None)
        self._update_batch_eta()
        if not self._enabled:
            return
        case_id = terminal_safe(result.case_id)
        if not self._live:
            self._console.print(f"{result.status} {case_id} ({result.seconds:.1f} s)", markup=False,
                                highlight=False, soft_wrap=True)
        elif result.status == "done":
            self._console.print(f"[green]✓[/] {case_id} ({result.seconds:.1f} s)", highlight=False)

    def _update_batch_eta(self, case_finish_at: float | None = None) -> None:
        """The batch's finish: the mean finished case times the cases left, or, before any has
        finished, the current case's estimated length (from ``case_finish_at``) for each."""
        left = self._to_do - len(self._durations)  # the current case included
        finish_at = None
        if left <= 0:
            pass
        elif self._durations:
            mean = sum(self._durations) / len(self._durations)
            start = self._case_start if self._case_id is not None else time.monotonic()
            finish_at = start + mean * left
        elif case_finish_at is not None and self._case_id is not None:
            finish_at = self._case_start + (case_finish_at - self._case_start) * left
        self._progress.update(self._batch, finish_at=finish_at)
