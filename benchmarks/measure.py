"""Wall time and peak memory of a command's whole process tree, for the side-by-side benchmarks.

    from measure import run_measured, compare
    result = run_measured(["autoorgan", "predict", ...])

Peak memory is the largest sum of resident set sizes (RSS) over the process and all its
descendants, sampled every ``interval`` seconds (worker pools count too; shared pages are
counted once per process, as ``ps`` would). Runs alternate between the commands compared so
that a slow period of the machine hits all of them alike; figures are medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class Measurement:
    """One run of a command: exit status, wall seconds and peak RSS of its process tree (bytes)."""

    returncode: int
    wall_s: float
    peak_rss: int
    output: str = ""

    @property
    def peak_gib(self) -> float:
        return self.peak_rss / 2**30


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        processes = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_measured(command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 interval: float = 0.05, timeout: float | None = None) -> Measurement:
    """Run ``command`` to completion, sampling the RSS of its process tree every ``interval`` s."""
    full_env = {**os.environ, **(env or {})}
    start = time.perf_counter()
    popen = subprocess.Popen(list(command), env=full_env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(popen.pid)
    peak = 0
    chunks: list[str] = []
    # stdout is drained by a thread so that a chatty command never blocks on a full pipe.
    import threading

    reader = threading.Thread(target=lambda: chunks.append(popen.stdout.read() if popen.stdout else ""))
    reader.start()
    while popen.poll() is None:
        peak = max(peak, _tree_rss(proc))
        if timeout is not None and time.perf_counter() - start > timeout:
            for child in proc.children(recursive=True):
                child.kill()
            popen.kill()
            break
        time.sleep(interval)
    popen.wait()
    wall = time.perf_counter() - start
    reader.join()
    return Measurement(popen.returncode, wall, peak, "".join(chunks))


@dataclass
class Comparison:
    """Measurements of several named commands run alternately ``repeats`` times."""

    runs: dict[str, list[Measurement]] = field(default_factory=dict)

    def median_wall(self, name: str) -> float:
        return statistics.median(m.wall_s for m in self.runs[name])

    def median_peak_gib(self, name: str) -> float:
        return statistics.median(m.peak_gib for m in self.runs[name])

    def table(self, baseline: str) -> str:
        """A Markdown table of medians and ratios against ``baseline``."""
        lines = ["| command | runs | median wall (s) | ratio | median peak RSS (GiB) | ratio |",
                 "|---|---|---|---|---|---|"]
        for name in self.runs:
            lines.append(
                f"| {name} | {len(self.runs[name])} | {self.median_wall(name):.1f} | "
                f"{self.median_wall(name) / self.median_wall(baseline):.2f} | {self.median_peak_gib(name):.2f} | "
                f"{self.median_peak_gib(name) / self.median_peak_gib(baseline):.2f} |")
        return "\n".join(lines)


def compare(commands: Mapping[str, Sequence[str]], *, repeats: int = 3, env: Mapping[str, str] | None = None,
            before_each: Mapping[str, object] | None = None) -> Comparison:
    """Run each named command ``repeats`` times, alternating; a failed run raises ``RuntimeError``.

    ``before_each`` may map a name to a callable run before each of its runs (e.g. to empty its
    output folder, so that no run is a resumed one).
    """
    result = Comparison({name: [] for name in commands})
    for _ in range(repeats):
        for name, command in commands.items():
            hook = (before_each or {}).get(name)
            if callable(hook):
                hook()
            m = run_measured(command, env=env)
            if m.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {m.returncode}):\n{m.output[-3000:]}")
            result.runs[name].append(m)
    return result
