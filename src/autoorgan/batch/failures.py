"""Failure records: ``OUT/<case>.error.json`` says that (and why) a case failed.

A record is written atomically when a case fails and removed when the case later succeeds, so
the output folder alone tells which cases are done, failed or still missing — across shards,
processes and machines. It holds the case id, the error line, the time and the host name; no
image metadata (no patient data).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan import __version__
from autoorgan.errors import OutputError
from autoorgan.io.writing import write_json

log = logging.getLogger(__name__)

ERROR_SUFFIX = ".error.json"


def error_record_path(folder: Path, case_id: str) -> Path:
    """Where the failure record of ``case_id`` lives."""
    return folder / f"{case_id}{ERROR_SUFFIX}"


@dataclass(frozen=True)
class FailureRecord:
    """What a failure record holds."""

    case_id: str
    error: str
    time: str
    host: str


def write_failure(folder: Path, case_id: str, error: str) -> Path:
    """Record that ``case_id`` failed with ``error``, atomically.

    The error is kept whole: it is one message, but a file name in it may hold a newline, and
    the record must name the file exactly (JSON escapes it; displays escape it too).
    """
    data: dict[str, Any] = {
        "case_id": case_id,
        "error": error.strip() or "unknown error",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "autoorgan": __version__,
    }
    return write_json(data, error_record_path(folder, case_id))


def clear_failure(folder: Path, case_id: str) -> bool:
    """Remove the failure record of ``case_id`` (after a success); True if there was one."""
    path = error_record_path(folder, case_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(f"cannot remove {path}: {exc.strerror or exc}") from None
    return True


def read_failure(folder: Path, case_id: str) -> FailureRecord | None:
    """The failure record of ``case_id``, or ``None`` if there is none.

    An unreadable record still counts as a failure (its error says so).
    """
    path = error_record_path(folder, case_id)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return FailureRecord(case_id=case_id, error=str(data.get("error", f"unreadable failure record {path.name}")),
                         time=str(data.get("time", "")), host=str(data.get("host", "")))
