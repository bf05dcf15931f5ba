"""Atomic writing of outputs: a temporary file in the target folder, then a rename.

A reader (or a resumed run) therefore sees either no file or a complete one. Temporary files
are hidden (leading dot) and carry the case name, so a later run can remove what a killed run
left behind without touching other cases.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from autoorgan.errors import OutputError

_TMP_MARK = ".tmp-"


def temporary_sibling(target: Path) -> Path:
    """A unique hidden temporary path next to ``target`` that keeps its file ending."""
    name = target.name
    ext = ".nii.gz" if name.lower().endswith(".nii.gz") else target.suffix
    stem = name[: len(name) - len(ext)]
    return target.with_name(f".{stem}{_TMP_MARK}{uuid.uuid4().hex[:12]}{ext}")


def leftover_temporaries(folder: Path, stem: str, infixes: tuple[str, ...] = ()) -> list[Path]:
    """Temporary files that an interrupted write of ``stem.*`` (or ``stem.<infix>.*``) left in ``folder``."""
    found = set(folder.glob(f".{glob.escape(stem)}{_TMP_MARK}*"))
    for infix in infixes:
        found.update(folder.glob(f".{glob.escape(stem)}.{glob.escape(infix)}{_TMP_MARK}*"))
    return sorted(found)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto ``target``, else remove it."""
    tmp = temporary_sibling(target)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written for {target.name}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(target: Path, writer: Callable[[Path], None]) -> Path:
    try:
        with atomic_path(target) as tmp:
            writer(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # SimpleITK reports I/O failures as RuntimeError
        raise OutputError(f"cannot write {target}: {str(exc).strip().splitlines()[-1]}") from None
    return target


def write_image(image: sitk.Image, target: Path, *, compress: bool = True) -> Path:
    """Write an ITK image atomically (format from the file ending)."""
    return _write(target, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress))


def write_json(data: Any, target: Path) -> Path:
    """Write JSON atomically, pretty-printed, with a trailing newline."""

    def writer(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

    return _write(target, writer)
