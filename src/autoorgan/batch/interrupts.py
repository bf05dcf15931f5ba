"""SIGTERM and SIGINT end a run the way a crash should: cleanly, with a record, and exit 128 + signal.

A scheduler's time limit sends SIGTERM (Slurm: ``scancel`` or the job's end, then SIGKILL after
its grace period); Ctrl-C sends SIGINT. Inside :func:`signals_as_interrupts` both raise
:class:`Interrupted` (a :class:`KeyboardInterrupt`) in the main thread, so the batch unwinds:
the file being written is removed (:func:`autoorgan.io.writing.atomic_path`), the half-written case
is undone, the run record says ``aborted`` and the overview is written
(:meth:`autoorgan.batch.job.BatchJob.run`), a multi-process run terminates its workers
(:func:`autoorgan.batch.launcher.run_workers`), and the command exits with 143 (SIGTERM) or 130 (SIGINT).
A second signal during that clean-up is ignored (SIGKILL still ends the process at once).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

#: The signals a run turns into :class:`Interrupted`.
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum``; :attr:`exit_code` is the shell's ``128 + signum``."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """The exit code for an interruption: ``128 + signal``; a plain Ctrl-C is 130."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (once); the previous handlers
    come back afterwards. Outside the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            log.warning("%s received while stopping; finishing the clean-up", signal.Signals(signum).name)
            return
        received.append(signum)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
