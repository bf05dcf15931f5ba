"""nnU-Net's surroundings: its installed version, the folders it reads from the environment, and its
printed progress turned into log records.

nnU-Net reads its folders from the environment variables ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results``; :func:`nnunet_environment` sets them for the
duration of a call (and child processes inherit them), so nothing relies on them being set when
a module is imported. nnU-Net also ``print``\\ s progress; :func:`quiet_nnunet` sends that text to
this module's logger at DEBUG level instead of the user's terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

#: nnU-Net versions this adapter is tested with (also the dependency range in pyproject.toml).
SUPPORTED_NNUNET = ">=2.8.1,<2.9"


def nnunet_version() -> str:
    """Installed nnunetv2 version."""
    return metadata.version("nnunetv2")


class _LogStream(io.TextIOBase):
    """A write-only text stream that forwards whole lines to a logger.

    Lines matching ``promote`` (training progress) are logged at INFO, the rest at DEBUG.
    """

    def __init__(self, logger: logging.Logger, promote: re.Pattern[str] | None = None):
        self._logger, self._promote, self._buffer = logger, promote, ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                level = logging.INFO if self._promote and self._promote.search(line) else logging.DEBUG
                self._logger.log(level, "nnU-Net: %s", line.strip())
        return len(text)


@contextlib.contextmanager
def quiet_nnunet(promote: re.Pattern[str] | None = None) -> Iterator[None]:
    """Send what nnU-Net prints inside the block to the log (see :class:`_LogStream`)."""
    stream = _LogStream(log, promote)
    with contextlib.redirect_stdout(stream):
        yield


@dataclass(frozen=True)
class NnUNetPaths:
    """The three folders nnU-Net works with (any may be ``None`` when a step does not need it)."""

    raw: Path | None = None
    preprocessed: Path | None = None
    results: Path | None = None


@contextlib.contextmanager
def nnunet_environment(paths: NnUNetPaths, **extra: str) -> Iterator[None]:
    """Set nnU-Net's environment variables (and ``extra`` ones) for the duration of the block."""
    wanted = {
        "nnUNet_raw": paths.raw,
        "nnUNet_preprocessed": paths.preprocessed,
        "nnUNet_results": paths.results,
        **extra,
    }
    saved = {key: os.environ.get(key) for key in wanted}
    try:
        for key, value in wanted.items():
            if value is not None:
                os.environ[key] = str(value)
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
