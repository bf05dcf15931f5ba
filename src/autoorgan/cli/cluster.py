"""Command-line side of multi-process runs and batch status (Rich display; used by cli.py only)."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoorgan.batch.launcher import FolderProgress, WorkerOutcome, parse_devices, plan_workers, run_workers
from autoorgan.batch.status import BatchStatus
from autoorgan.cli.text import terminal_safe


def predict_multi(console: Console, *, predict_args: list[str], input: Path, output: Path,
                  devices: str | None, workers: int | None, device: str, quiet: bool) -> int:
    """Run one worker per device / CPU worker with one combined progress bar; the exit code."""
    specs = plan_workers(devices=parse_devices(devices) if devices else None, workers=workers, device=device,
                         env=os.environ)
    folder = FolderProgress(input, output)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=quiet) as bars:
        bar = bars.add_task(f"cases on {len(specs)} worker(s)", total=len(folder.case_ids))

        def update() -> None:
            done, failed, _ = folder.poll()
            bars.update(bar, completed=done + failed,
                        description=f"cases on {len(specs)} worker(s)" + (f", {failed} failed" if failed else ""))

        outcomes = run_workers(specs, predict_args, progress=update)
    done, failed, total = folder.poll()
    _report(console, outcomes, done, failed, total, output)
    return max((o.returncode for o in outcomes), default=0) if any(not o.ok for o in outcomes) else 0


def _report(console: Console, outcomes: list[WorkerOutcome], done: int, failed: int, total: int,
            output: Path) -> None:
    bad = [o for o in outcomes if not o.ok]
    colour = "green" if not bad and done == total else "red"
    console.print(f"[{colour}]{done} of {total} done, {failed} failed, {len(outcomes) - len(bad)} of "
                  f"{len(outcomes)} worker(s) succeeded → {terminal_safe(output)}[/]", highlight=False)
    for o in bad:
        why = f"killed by signal {-o.returncode}" if o.returncode < 0 else f"exit code {o.returncode}"
        console.print(f"  [red]{terminal_safe(o.spec.label)} failed ({why})[/]", highlight=False)
        for line in o.tail[-3:]:
            console.print(f"    {terminal_safe(line, markup=False)}", highlight=False, markup=False, soft_wrap=True)


def print_status(console: Console, out: Console, status: BatchStatus, *, show_cases: bool) -> None:
    """The per-shard table (and per-case lines for failed/missing cases, or all with ``show_cases``)."""
    table = Table(title=f"{len(status.cases)} case(s) in {status.num_parts} part(s)")
    for column in ("part", "done", "failed", "missing"):
        table.add_column(column, justify="right")
    for shard, counts in status.per_shard().items():
        table.add_row(str(shard), str(counts["done"]), str(counts["failed"]), str(counts["missing"]))
    if status.num_parts > 1:
        table.add_row("all", *(str(status.count(s)) for s in ("done", "failed", "missing")), style="bold")
    out.print(table)
    for c in status.cases:
        if show_cases or c.state != "done":
            colour = {"done": "green", "failed": "red", "missing": "yellow"}[c.state]
            line = f"[{colour}]{c.state:7}[/] part {c.shard}  {terminal_safe(c.case_id)}"
            out.print(line + (f": {terminal_safe(c.error)}" if c.error else ""), highlight=False, soft_wrap=True)
    summary = "complete" if status.complete else "incomplete"
    console.print(f"[{'green' if status.complete else 'red'}]{summary}: {status.count('done')} done, "
                  f"{status.count('failed')} failed, {status.count('missing')} missing[/]", highlight=False)
