"""Atomic writing of outputs: a temporary file in the target folder, then a rename.

A reader (or a resumed run) therefore sees either no file or a complete one. The file is
``fsync``-ed before the rename and the folder after it, so a crash of the machine cannot leave a
later file (the sidecar) on disk without an earlier one (its label map).

Temporary files are hidden (leading dot), carry the target's name and say whose they are:
``.<stem>.tmp-<host>-<pid>-<random><ending>``. Several runs may write into one folder at once
(shards, machines, a user starting a run twice), so a run removes only temporaries that are
*abandoned*: its own, or those of a process of this host that is gone, or, for another host (whose
processes cannot be checked), those untouched for :data:`ABANDONED_AFTER_SECONDS`. A live run's
temporary file is never removed by another run.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from autoorgan.errors import OutputError

log = logging.getLogger(__name__)

_TMP_MARK = ".tmp-"
#: ``<host>-<pid>-<random>`` after the mark; the host part never holds ``-`` or ``.``.
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<random>[0-9a-f]{12})(?![0-9a-f])")
#: A temporary file of another host (or of an older autoorgan that did not name its owner) is taken
#: for abandoned only after this long without a change: a live write touches its file all the time.
ABANDONED_AFTER_SECONDS = 24 * 3600.0
#: Slack between a process's start time and a file's modification time (clock granularity).
_START_SLACK_SECONDS = 2.0


@lru_cache(maxsize=1)
def _namespace() -> str:
    """What makes process ids comparable: the host name plus, on Linux, the pid namespace.

    Two containers with one host name but separate pid namespaces are different "hosts" here. (A
    reboot needs no mark: a process id reused since then belongs to a process that started after
    the file was written, which :func:`is_abandoned` tells.)
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


@lru_cache(maxsize=1)
def host_token() -> str:
    """This host in temporary names: its name (letters, digits, ``_``) and a short hash of
    :func:`_namespace`, so hosts whose names look alike are still told apart."""
    readable = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:24] or "host"
    return f"{readable}_{hashlib.sha256(_namespace().encode()).hexdigest()[:6]}"


def temporary_sibling(target: Path) -> Path:
    """A unique hidden temporary path next to ``target``, keeping its file ending and naming its
    owner (this host and process)."""
    name = target.name
    ext = ".nii.gz" if name.lower().endswith(".nii.gz") else target.suffix
    stem = name[: len(name) - len(ext)]
    owner = f"{host_token()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return target.with_name(f".{stem}{_TMP_MARK}{owner}{ext}")


@dataclass(frozen=True)
class TemporaryOwner:
    """Who wrote a temporary file: the host token and the process id."""

    host: str
    pid: int


def temporary_owner(path: Path) -> TemporaryOwner | None:
    """The owner named in a temporary file's name, or ``None`` (not ours, or an older format)."""
    name = path.name
    at = name.rfind(_TMP_MARK)
    if not name.startswith(".") or at < 0:
        return None
    found = _OWNER.match(name, at + len(_TMP_MARK))
    return None if found is None else TemporaryOwner(found["host"], int(found["pid"]))


def _process_gone(pid: int, file_mtime: float) -> bool:
    """True if no process ``pid`` of this host can have written a file last changed at ``file_mtime``."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        # The id was reused by a process started after the file was last written.
        return process.create_time() > file_mtime + _START_SLACK_SECONDS
    except ImportError:
        return False
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and friends: it just ended
        return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def is_abandoned(path: Path, *, now: float | None = None,
                 abandoned_after: float = ABANDONED_AFTER_SECONDS) -> bool:
    """True if nobody can still be writing the temporary file ``path`` (see the module's rules)."""
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return False
    owner = temporary_owner(path)
    if owner is not None and owner.host == host_token():
        return owner.pid != os.getpid() and _process_gone(owner.pid, mtime)
    return (time.time() if now is None else now) - mtime > abandoned_after


def leftover_temporaries(folder: Path, stem: str, infixes: tuple[str, ...] = ()) -> list[Path]:
    """Temporary files of writes of ``stem.*`` (or ``stem.<infix>.*``) in ``folder``, whoever wrote them
    (see :func:`is_abandoned` for which of them may go)."""
    found = set(folder.glob(f".{glob.escape(stem)}{_TMP_MARK}*"))
    for infix in infixes:
        found.update(folder.glob(f".{glob.escape(stem)}.{glob.escape(infix)}{_TMP_MARK}*"))
    return sorted(found)


def all_temporaries(folder: Path) -> list[Path]:
    """Every temporary file (of any target) directly in ``folder``."""
    return sorted(folder.glob(f".*{_TMP_MARK}*"))


def remove_abandoned(paths: Iterable[Path]) -> int:
    """Delete those of ``paths`` that are abandoned temporary files (:func:`is_abandoned`); how many.

    Live runs' files are left alone, and so is anything that is not a plain file.
    """
    removed = 0
    for path in paths:
        if path.is_file() and not path.is_symlink() and is_abandoned(path):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove the leftover temporary file %s: %s", path.name, exc.strerror or exc)
                continue
            removed += 1
    return removed


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (filesystems that cannot are skipped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (where the platform and filesystem allow)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows, or no read access to the folder: nothing more can be done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path, *, inspect: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success flush it to disk, rename it onto ``target`` and
    flush the folder; else (any exception, a signal included) remove it.

    ``inspect`` is called with the finished temporary file before the rename (e.g. to hash it).
    """
    tmp = temporary_sibling(target)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written for {target.name}")
        _fsync_file(tmp)
        if inspect is not None:
            inspect(tmp)
        os.replace(tmp, target)
        fsync_folder(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class FileDigest:
    """A file's SHA-256 (hex) and size in bytes, as recorded in a sidecar."""

    sha256: str
    size: int


def file_digest(path: Path, chunk: int = 1 << 20) -> FileDigest:
    """SHA-256 and size of ``path``, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return FileDigest(digest.hexdigest(), size)


def _write(target: Path, writer: Callable[[Path], None], inspect: Callable[[Path], None] | None = None) -> Path:
    try:
        with atomic_path(target, inspect=inspect) as tmp:
            writer(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # SimpleITK reports I/O failures as RuntimeError
        raise OutputError(f"cannot write {target}: {str(exc).strip().splitlines()[-1]}") from None
    return target


def write_image(image: sitk.Image, target: Path, *, compress: bool = True) -> Path:
    """Write an ITK image atomically (format from the file ending)."""
    return _write(target, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress))


def write_image_digest(image: sitk.Image, target: Path, *,
                       compress: bool = True) -> tuple[FileDigest, tuple[int, int] | None]:
    """Like :func:`write_image`; returns the digest and :func:`file_identity` of exactly the file
    that was renamed into place (taken before the rename, so a concurrent writer of ``target``
    cannot slip in between)."""
    found: list[tuple[FileDigest, tuple[int, int] | None]] = []
    _write(target, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress),
           inspect=lambda tmp: found.append((file_digest(tmp), file_identity(tmp))))
    return found[0]


def write_json(data: Any, target: Path) -> Path:
    """Write JSON atomically, pretty-printed, with a trailing newline."""

    def writer(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")

    return _write(target, writer)


def write_text(text: str, target: Path) -> Path:
    """Write UTF-8 text atomically."""

    def writer(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return _write(target, writer)


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path``: tells whether a file is still the one a run wrote."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def remove_if_unchanged(path: Path, identity: tuple[int, int] | None) -> bool:
    """Remove ``path`` only if it is still the file with ``identity`` (the one this run wrote), so a
    file another run has since put there is never deleted; True if removed."""
    if identity is None or file_identity(path) != identity:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
