"""The run record: ``OUT/autoorgan_run-part{I}of{N}-{time}-{id}.json``, one file per run of a shard.

It says how the outputs were made — command, options, software versions, the model's checkpoint
checksums, the device — and how each case of the shard went (status, error, seconds). Every run
writes a new file, named by shard, start time and a random id, so concurrent shards (or several
machines writing into one folder) never share or overwrite a record. The overview page reads all
records of a folder to know each case's latest status.
"""

from __future__ import annotations

import json
import logging
import platform
import shlex
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from autoorgan import __version__
from autoorgan.batch.job import BatchResult
from autoorgan.io.writing import file_digest, write_json

log = logging.getLogger(__name__)

RECORD_PREFIX = "autoorgan_run"
RECORD_GLOB = f"{RECORD_PREFIX}*.json"
_PACKAGES = ("nnunetv2", "torch", "SimpleITK", "numpy", "nibabel", "matplotlib")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def record_name(part_id: int, num_parts: int, started: datetime, run_id: str) -> str:
    """File name of a run record; unique per shard, start time and run id."""
    return f"{RECORD_PREFIX}-part{part_id}of{num_parts}-{started.strftime('%Y%m%dT%H%M%SZ')}-{run_id}.json"


#: SHA-256 of files already hashed by this process, by (path, device, inode, size, mtime): a
#: checkpoint is hashed once per run (for the sidecars' ``--continue`` check and the run record).
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints are hundreds of MB); a file unchanged since
    this process last hashed it is not read again."""
    info = path.stat()
    key = (str(Path(path).resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    known = _DIGESTS.get(key)
    if known is not None:
        return known
    if len(_DIGESTS) > 64:
        _DIGESTS.clear()
    _DIGESTS[key] = file_digest(path, chunk).sha256
    return _DIGESTS[key]


def software_versions() -> dict[str, str]:
    """Versions of autoorgan, Python and the libraries that shape the results."""
    versions = {"autoorgan": __version__, "python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def describe_device(device: object) -> dict[str, str]:
    """The torch device used, with the GPU's name when it is one (no torch import if unused)."""
    text = str(device)
    info = {"device": text, "host_platform": platform.platform()}
    if text.startswith("cuda"):
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(device)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a description must never fail the run
            info["gpu"] = f"unknown ({type(exc).__name__})"
    return info


@dataclass
class RunRecorder:
    """A :class:`~autoorgan.batch.job.BatchStep` that writes this run's record at the end of the batch.

    Build it before the batch starts (it notes the start time); checkpoints are hashed when the
    record is written.
    """

    part_id: int
    num_parts: int
    options: Mapping[str, Any]
    checkpoints: Sequence[Path] = ()
    device: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] = field(default_factory=lambda: list(sys.argv))
    started: datetime = field(default_factory=utc_now)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    #: Where the record was written (set by ``__call__``).
    written: Path | None = None

    @property
    def file_name(self) -> str:
        return record_name(self.part_id, self.num_parts, self.started, self.run_id)

    def build(self, results: BatchResult, finished: datetime | None = None) -> dict[str, Any]:
        """The record's content."""
        finished = finished or utc_now()
        checkpoints: list[dict[str, str | None]] = []
        for path in self.checkpoints:
            try:
                checkpoints.append({"file": str(path), "sha256": sha256_file(path)})
            except OSError as exc:
                checkpoints.append({"file": str(path), "sha256": None, "error": exc.strerror or str(exc)})
        return {
            "record": "autoorgan run",
            "run_id": self.run_id,
            "part_id": self.part_id,
            "num_parts": self.num_parts,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "command": shlex.join(str(a) for a in self.command),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()},
            "versions": software_versions(),
            "model": {"checkpoints": checkpoints},
            "device": dict(self.device),
            "summary": {status: results.count(status) for status in ("done", "skipped", "failed")},
            # "aborted": the batch stopped before its end (an interruption such as SIGTERM, an output
            # error, a model that cannot load); "aborted" below says why.
            "status": "aborted" if results.aborted else "completed",
            "aborted": results.aborted,
            "cases": [
                {"case": r.case_id, "status": r.status, "error": r.error, "seconds": round(r.seconds, 3)}
                for r in results.results
            ],
        }

    def __call__(self, results: BatchResult, output_dir: Path) -> None:
        """Write the record (also when the batch aborted: then ``aborted`` says why)."""
        self.written = write_json(self.build(results), output_dir / self.file_name)
        log.info("run record: %s", self.written.name)


def read_run_records(folder: Path) -> list[dict[str, Any]]:
    """All readable run records of ``folder``, oldest first (unreadable ones are skipped with a warning)."""
    records = []
    for path in sorted(folder.glob(RECORD_GLOB)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable run record %s (%s)", path.name, exc)
            continue
        if isinstance(data, dict) and isinstance(data.get("cases"), list):
            data["_file"] = path.name
            records.append(data)
    return sorted(records, key=lambda r: (str(r.get("finished", "")), r["_file"]))


def latest_case_entries(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each case's latest entry over ``records`` (oldest first).

    A later ``skipped`` does not hide an earlier ``done``: the case was done then, and that
    entry has the time it took.
    """
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        for entry in record.get("cases", []):
            if not isinstance(entry, dict) or "case" not in entry:
                continue
            case = str(entry["case"])
            previous = latest.get(case)
            if entry.get("status") == "skipped" and previous is not None and previous.get("status") == "done":
                continue
            latest[case] = {**entry, "run": record.get("_file"), "finished": record.get("finished")}
    return latest
