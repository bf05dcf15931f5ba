"""Rich progress display for batch runs (used by the CLI only; the library just emits events).

Case ids come from file names: they are shown through :func:`~autoorgan.cli.text.terminal_safe`.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from autoorgan.batch.job import CaseResult, ProgressListener
from autoorgan.cli.text import terminal_safe


class RichProgress(ProgressListener):
    """One bar for the batch and a line that says which case is in which stage."""

    def __init__(self, console: Console, *, enabled: bool = True):
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._batch = self._progress.add_task("cases", total=None, visible=False)
        self._case = self._progress.add_task("", total=None, visible=False)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.update(self._case, visible=False)
        self._progress.stop()

    def batch_started(self, total: int, to_do: int) -> None:
        self._progress.update(self._batch, total=total, completed=0, visible=True,
                              description=f"cases ({total - to_do} already complete)" if to_do < total else "cases")

    def case_started(self, case_id: str) -> None:
        self._progress.update(self._case, description=f"{terminal_safe(case_id)}: starting", visible=True)

    def case_stage(self, case_id: str, stage: str) -> None:
        self._progress.update(self._case, description=f"{terminal_safe(case_id)}: {terminal_safe(stage)}")

    def case_finished(self, result: CaseResult) -> None:
        self._progress.advance(self._batch)
        if result.status == "done":
            self._progress.console.print(f"[green]✓[/] {terminal_safe(result.case_id)} ({result.seconds:.1f} s)",
                                         highlight=False)
