"""DICOM input: finding the series in a folder or a ``.zip``, and reading one as a checked volume.

A DICOM series becomes a case. Series are found by reading headers only (pydicom); files need no
``.dcm`` ending and may lie in nested folders. Slices are grouped by SeriesInstanceUID, image size and
orientation; where anonymisation blanked the UIDs, by frame of reference (else folder), series
number, description, image size and orientation.

Pixel data are decoded by SimpleITK (GDCM, which handles the compressed transfer syntaxes,
JPEG 2000 included). The geometry SimpleITK builds is checked against every slice's own position
and orientation before it is used: a series whose slices do not form one regular grid (gantry
tilt, uneven or missing slices, several images at one position) is refused with a clear error
rather than read with a silently wrong geometry.

A ``.zip`` is never inflated whole: headers are read from streamed members, and a series' members
are streamed to a temporary folder only while it is read, within a size cap
(:data:`DEFAULT_MAX_ARCHIVE_GB`, ``--max-archive-size``) and a ratio cap
(:data:`MAX_COMPRESSION_RATIO`), counted while inflating; a zip over them fails its own case.

Case ids depend only on the series itself (:func:`series_case_ids`), so adding a series to an
input never renames the cases already there.

Patient identifiers (name, ID, birth date) are never read into anything autoorgan writes or logs.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.errors import CaseError, InputError
from autoorgan.io.archives import MemberOverflow, stream_member
from autoorgan.io.safe_paths import printable

log = logging.getLogger(__name__)

#: Header fields read to find and group series (never patient data).
_SCAN_TAGS = [
    "SOPClassUID", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID",
    "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "NumberOfFrames", "PixelSpacing",
]
#: SOP classes that are never CT volumes (segmentations, structure sets, reports, ...).
_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
}
#: Position tolerance (mm) and relative spacing tolerance of the slice checks.
_POSITION_TOL_MM = 0.01
_SPACING_REL_TOL = 0.01

#: Default cap (GB) on what one DICOM series of a zip may inflate to, each member and all together
#: (``--max-archive-size`` raises it): a whole-body CT at 0.5 mm is about 1 GB.
DEFAULT_MAX_ARCHIVE_GB = 16.0
#: Inflation ratio above which a member, or a series as a whole, is refused as a zip bomb. Real CT
#: slices deflate about 2-5:1; only members and series above :data:`_RATIO_FLOOR_BYTES` are held
#: to it (a blank slice alone compresses about 1000:1).
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR_BYTES = 16 * 2**20
#: Bytes of one zip member that header scanning may inflate (a header ends before the pixel data).
_HEADER_READ_CAP = 64 * 2**20
_max_archive_gb: ContextVar[float | None] = ContextVar("autoorgan_max_archive_gb", default=None)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series (or one multi-frame file): where its files are and what identifies it.

    ``files`` are paths relative to ``root`` (a folder), or member names of ``archive`` (a zip).
    """

    root: Path
    files: tuple[str, ...]
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    folder: str
    multiframe: bool
    archive: Path | None = None

    def sidecar(self) -> dict[str, Any]:
        """What the sidecar records of the source series (no patient data)."""
        return {
            "series_instance_uid": self.series_uid,
            "series_number": self.series_number,
            "series_description": self.description,
            "modality": self.modality,
            "files": len(self.files),
        }


def looks_like_dicom(path: Path) -> bool:
    """True if ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(source: Path | Any) -> dict[str, Any] | None:
    """The scan tags of one file (a path or an open binary stream) as plain values, or ``None`` if
    it is not a usable DICOM image. Only the header is read (never the pixel data)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
        header = {kw: ds[kw].value for kw in _SCAN_TAGS if kw in ds}
        meta = getattr(ds, "file_meta", None)
        sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or header.get("SOPClassUID", ""))
    except _HeaderTooLarge:
        raise
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    except Exception as exc:  # noqa: BLE001 - a corrupt header must not stop the search for series
        log.debug("skipping an unreadable DICOM header: %s", type(exc).__name__)
        return None
    if sop_class in _NOT_IMAGES or "Rows" not in header:
        return None
    return header


class _HeaderTooLarge(OSError):
    """A zip member's header runs past :data:`_HEADER_READ_CAP`."""


class _CappedStream:
    """A read-only view of a zip member that refuses to inflate past ``cap`` bytes.

    Header scanning streams each member through this: pydicom skips unwanted elements by seeking,
    which in a zip member means inflating them, so a member with a huge element before its pixel
    data (or a lying size) costs at most ``cap`` bytes of work, never the whole member in memory.
    """

    def __init__(self, stream: Any, cap: int) -> None:
        self._stream = stream
        self._cap = cap
        self.name = getattr(stream, "name", "")

    def _check(self, position: int) -> None:
        if position > self._cap:
            raise _HeaderTooLarge(f"header larger than {self._cap // 2**20} MiB")

    def read(self, size: int | None = -1) -> bytes:
        position = self._stream.tell()
        room = self._cap - position + 1
        data = self._stream.read(room if size is None or size < 0 else min(size, room))
        self._check(position + len(data))
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:  # would inflate the whole member; headers never need it
            raise _HeaderTooLarge("seek from the end of a zip member")
        self._check(offset if whence == os.SEEK_SET else self._stream.tell() + offset)
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int_or_none(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _group_key(ds: Any, rel: str) -> tuple[Any, ...]:
    orientation = tuple(round(float(v), 4) for v in (ds.get("ImageOrientationPatient") or []))
    size = (_int_or_none(ds, "Rows"), _int_or_none(ds, "Columns"))
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return (uid, size, orientation)
    # Anonymised exports may blank the UIDs: fall back to what else tells series apart (the frame
    # of reference, which ties the slices of one scan together; the folder where that is blank too).
    scan = _text(ds, "FrameOfReferenceUID") or f"folder:{Path(rel).parent}"
    return ("", scan, _text(ds, "SeriesNumber"), _text(ds, "SeriesDescription"), size, orientation)


def _collect(entries: Sequence[tuple[str, Any]], root: Path, archive: Path | None) -> list[DicomSeries]:
    groups: dict[tuple[Any, ...], list[tuple[str, Any]]] = defaultdict(list)
    for rel, ds in entries:
        frames = _int_or_none(ds, "NumberOfFrames") or 1
        key = ("multiframe", rel) if frames > 1 else _group_key(ds, rel)
        groups[key].append((rel, ds))
    for key in [k for k in groups if k[0] == ""]:
        members = groups[key]
        positions = [tuple(round(float(v), 2) for v in (ds.get("ImagePositionPatient") or [])) for _, ds in members]
        folders = {str(Path(rel).parent) for rel, _ in members}
        if len(set(positions)) < len(positions) and len(folders) > 1:
            # Without UIDs, copies of one scan in several folders look alike: keep folders apart.
            del groups[key]
            for rel, ds in members:
                groups[key + (str(Path(rel).parent),)].append((rel, ds))
    series = []
    for key, members in groups.items():
        members.sort(key=lambda m: m[0])
        first = members[0][1]
        # the deepest folder holding all the series' files (a series may span numbered sub-folders)
        folder = os.path.commonpath([Path(rel).parent.as_posix() for rel, _ in members]) or "."
        series.append(DicomSeries(
            root=root, files=tuple(rel for rel, _ in members), series_uid=_text(first, "SeriesInstanceUID"),
            series_number=_int_or_none(first, "SeriesNumber"), description=_text(first, "SeriesDescription"),
            modality=_text(first, "Modality"), folder=folder,
            multiframe=key[0] == "multiframe", archive=archive,
        ))
    return sorted(series, key=lambda s: s.files[0])


def scan_folder(root: Path, *, exclude: Path | None = None, top_level_skip: set[Path] | None = None) -> list[DicomSeries]:
    """The DICOM series below ``root`` (all depths; hidden files/folders and ``exclude`` skipped).

    ``top_level_skip`` lists entries directly in ``root`` already taken as other inputs. Only
    regular files are opened (a FIFO or device never is); a symbolic link loop, a dangling link, a
    FIFO or a sub-folder that cannot be listed is skipped with a warning, never the end of the batch.
    """
    skip = top_level_skip or set()
    entries: list[tuple[str, Any]] = []
    stack = [root]
    visited: set[Path] = set()
    while stack:
        folder = stack.pop()
        try:
            real = folder.resolve(strict=True)
        except (OSError, RuntimeError):  # a loop or a link that vanished
            log.warning("skipped %s: cannot follow it", printable(str(folder)))
            continue
        if real in visited:  # a symbolic link back up the tree
            continue
        visited.add(real)
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            if folder == root:
                raise InputError(f"cannot list {printable(str(folder))}: {exc.strerror or exc}") from None
            log.warning("skipped folder %s: cannot list it (%s)", printable(str(folder)), exc.strerror or exc)
            continue
        for path in children:
            if path.name.startswith(".") or path in skip:
                continue
            kind = entry_kind(path)
            if kind == "folder":
                if not is_same_path(path, exclude):  # the output folder inside the input
                    stack.append(path)
            elif kind == "file" and (looks_like_dicom(path) or path.suffix.lower() == ".dcm"):
                ds = _read_header(path)
                if ds is not None:
                    entries.append((path.relative_to(root).as_posix(), ds))
            elif kind != "file":
                log.warning("skipped %s: %s", printable(str(path)), kind)
    return _collect(entries, root, None)


def entry_kind(path: Path) -> str:
    """``file`` (a regular file, or a link to one), ``folder``, or why ``path`` is neither, without
    opening it: ``a symbolic link loop``, ``a dangling symbolic link``, ``a FIFO`` (or socket,
    device), ``not accessible (...)``."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if path.is_symlink():
            return "a dangling symbolic link"
        return f"not accessible ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file"


def is_same_path(path: Path, other: Path | None) -> bool:
    """True if ``path`` is ``other`` (the output folder), where both exist; never raises."""
    if other is None:
        return False
    try:
        return path.samefile(other)
    except (OSError, RuntimeError):
        return False


def scan_file(path: Path) -> list[DicomSeries]:
    """The single DICOM file ``path`` as a series of one file (or :class:`InputError`)."""
    ds = _read_header(path)
    if ds is None:
        raise InputError(f"input {path} is not a readable DICOM image")
    return _collect([(path.name, ds)], path.parent, None)


def scan_zip(archive: Path) -> list[DicomSeries]:
    """The DICOM series inside a zip archive.

    Nothing is extracted and no member is inflated whole: each member is streamed, its first
    132 bytes tell DICOM from other files, and pydicom reads a DICOM member's header from the
    stream, stopping before the pixel data (at most :data:`_HEADER_READ_CAP` bytes inflated). An
    archive that is not a readable zip, is encrypted, or uses a compression method Python cannot
    read is an :class:`InputError` naming it.
    """
    entries: list[tuple[str, Any]] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or any(_hidden(part) for part in name.split("/")):
                    continue  # (names that climb out with ".." are read too: members are extracted under safe names)
                if info.flag_bits & 0x1:
                    raise InputError(f"{archive.name}: the archive is encrypted (member '{name}'); unzip it with its "
                                     "password and give the folder")
                if info.compress_type not in _ZIP_METHODS:
                    # compressor_names is zipfile's own table of method names, missing from its stubs
                    method = zipfile.compressor_names.get(info.compress_type, "unknown")  # type: ignore[attr-defined]
                    raise InputError(f"{archive.name}: member '{name}' uses compression method {info.compress_type} "
                                     f"({method}), which Python's zipfile cannot read; unzip it with another tool "
                                     "and give the folder")
                ds = _zip_member_header(zf, info, archive)
                if ds is not None:
                    entries.append((name, ds))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{archive.name}: not a readable zip archive ({exc})") from None
    except NotImplementedError as exc:
        raise InputError(f"{archive.name}: {exc}; unzip it with another tool and give the folder") from None
    return _collect(entries, archive.parent, archive)


def _hidden(part: str) -> bool:
    return part == "__MACOSX" or (part.startswith(".") and part not in (".", ".."))


_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _zip_member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> dict[str, Any] | None:
    """The scan tags of one zip member, read from a capped stream (``None``: not a DICOM image)."""
    with zf.open(info) as fh:
        head = fh.read(132)
    if not (head[128:132] == b"DICM" or info.filename.lower().endswith(".dcm")):
        return None
    try:
        with zf.open(info) as fh:
            return _read_header(_CappedStream(fh, _HEADER_READ_CAP))
    except _HeaderTooLarge as exc:
        log.warning("%s: member '%s' skipped: %s", archive.name, info.filename, exc)
        return None


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("._-")


#: Characters of a series description kept in a case id.
_DESCRIPTION_CHARS = 48


def series_label(series: DicomSeries) -> str:
    """What tells a series apart within its folder, from the series alone: its number and
    description (``2_CT_Body_3.0``; ``series2`` without a description), a multi-frame file's name,
    or ``""`` where it has neither."""
    if series.multiframe:
        name = Path(series.files[0]).name
        return name[: -len(".dcm")] if name.lower().endswith(".dcm") else name
    number = "" if series.series_number is None else str(series.series_number)
    if not series.description:
        return f"series{number}" if number else ""
    return "_".join(part for part in (number, series.description[:_DESCRIPTION_CHARS]) if part)


def _series_hash(series: DicomSeries, *, with_file: bool = False) -> str:
    key = series.series_uid or series.files[0]
    if with_file:
        key = f"{key}\0{series.files[0]}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:6]


def series_case_ids(series: Sequence[DicomSeries], root_name: str, *, archive: bool = False) -> list[str]:
    """Readable case ids that depend only on each series itself, never on the others found beside
    it, so adding a series never renames a case (shards and ``--continue`` stay right).

    An id is the series' folder (its path below the input, ``root_name`` for the input folder
    itself; for a zip, ``root_name`` is the archive's name and its inner folders are left out)
    plus :func:`series_label`: ``patient1_2_CT_Body_3.0``. Where two series still get one id (same
    folder, number and description), each gets a short hash of its SeriesInstanceUID (of its first
    file where the UID is blank): ``patient1_2_CT_3f9a1c``.
    """
    def base(s: DicomSeries) -> str:
        parts = [root_name] if archive or s.folder in ("", ".") else list(Path(s.folder).parts)
        label = series_label(s)
        return _sanitize("_".join([*parts, label] if label else parts)) or "series"

    ids = [base(s) for s in series]
    for with_file in (False, True):
        counts = Counter(ids)
        ids = [f"{cid}_{_series_hash(s, with_file=with_file)}" if counts[cid] > 1 else cid
               for cid, s in zip(ids, series, strict=True)]
    return ids


def set_max_archive_size(gigabytes: float | None) -> None:
    """Set the cap (GB, ``None``: :data:`DEFAULT_MAX_ARCHIVE_GB`) on what one DICOM series of a zip
    may inflate to, for the cases read from now on in this context (``--max-archive-size``)."""
    if gigabytes is not None and not (gigabytes > 0 and np.isfinite(gigabytes)):
        raise InputError(f"--max-archive-size must be a positive number of GB, got {gigabytes}")
    _max_archive_gb.set(gigabytes)


def max_archive_bytes() -> int:
    """The cap in bytes that :func:`set_max_archive_size` set (or the default)."""
    gigabytes = _max_archive_gb.get()
    return int((DEFAULT_MAX_ARCHIVE_GB if gigabytes is None else gigabytes) * 1e9)


def _gb(size: float) -> str:
    if size >= 1e8:
        return f"{size / 1e9:.3g} GB"
    return f"{size / 1e6:.3g} MB" if size >= 1e5 else f"{int(size)} bytes"


def check_archive_sizes(archive: Path, infos: Sequence[zipfile.ZipInfo], limit: int) -> None:
    """:class:`CaseError` (one line naming the archive and member) if the members of a series, as
    their headers declare them, inflate past ``limit`` bytes, each or all together, or inflate
    more than :data:`MAX_COMPRESSION_RATIO`:1 (each, or all together, above 16 MiB)."""
    raise_it = "raise the limit with --max-archive-size (GB) if the archive is genuine"
    for info in infos:
        if info.file_size > limit:
            raise CaseError(f"member '{info.filename}' of {archive.name} inflates to {_gb(info.file_size)}, over the "
                            f"{_gb(limit)} limit for a DICOM archive; {raise_it}")
        _check_ratio(f"member '{info.filename}' of {archive.name}", info.file_size, info.compress_size)
    total = sum(info.file_size for info in infos)
    if total > limit:
        raise CaseError(f"the series' {len(infos)} members in {archive.name} inflate to {_gb(total)}, over the "
                        f"{_gb(limit)} limit for a DICOM archive; {raise_it}")
    _check_ratio(f"the series' {len(infos)} members in {archive.name}", total,
                 sum(info.compress_size for info in infos))


def _check_ratio(what: str, size: int, compressed: int) -> None:
    ratio = size / max(compressed, 1)
    if size > _RATIO_FLOOR_BYTES and ratio > MAX_COMPRESSION_RATIO:
        raise CaseError(f"{what} would inflate {ratio:.0f}:1 (to {_gb(size)}), over the "
                        f"{MAX_COMPRESSION_RATIO}:1 limit for a DICOM archive (a zip bomb?); if the archive is "
                        "genuine, unzip it and give the folder")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def local_files(series: DicomSeries) -> Iterator[list[Path]]:
    """The series' files as local paths that SimpleITK can open; a zip's members are streamed to a
    temporary folder (under safe names, within :func:`max_archive_bytes` and the ratio cap), and
    files whose path is not UTF-8 are linked there under safe names; the folder is removed
    afterwards."""
    if series.archive is None:
        paths = [series.root / rel for rel in series.files]
        if all(_utf8(str(path)) for path in paths):
            yield paths
            return
        # SimpleITK aborts the process on a path that is not UTF-8: give it links with safe names.
        with tempfile.TemporaryDirectory(prefix="autoorgan-dicom-") as tmp:
            links = []
            for i, path in enumerate(paths):
                link = Path(tmp) / f"{i:06d}.dcm"
                link.symlink_to(path.absolute())
                links.append(link)
            yield links
        return
    archive, limit = series.archive, max_archive_bytes()
    with tempfile.TemporaryDirectory(prefix="autoorgan-dicom-") as tmp:
        paths = []
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = [zf.getinfo(member) for member in series.files]
                check_archive_sizes(archive, infos, limit)
                used = 0
                for i, info in enumerate(infos):
                    target = Path(tmp) / f"{i:06d}.dcm"
                    used += stream_member(zf, info, target, limit - used)
                    paths.append(target)
        except MemberOverflow as exc:
            if exc.past_declared:
                raise CaseError(f"member '{exc.member}' of {archive.name} inflates past its declared "
                                f"{_gb(exc.declared)} (a corrupt or crafted archive)") from None
            raise CaseError(f"the series in {archive.name} inflates past the {_gb(limit)} limit for a DICOM "
                            "archive; raise the limit with --max-archive-size (GB) if the archive is genuine") from None
        except (zipfile.BadZipFile, OSError, KeyError, EOFError, zlib.error, RuntimeError,
                NotImplementedError) as exc:
            raise CaseError(f"cannot extract the series from {archive.name} ({exc})") from None
        yield paths


def load_datasets(series: DicomSeries, *, with_pixels: bool = False) -> list[Any]:
    """The series' datasets, sorted like the volume's slices (see :func:`read_series`)."""
    import pydicom

    with local_files(series) as paths:
        datasets = [pydicom.dcmread(p, stop_before_pixels=not with_pixels) for p in paths]
    if series.multiframe:
        return datasets
    normal = _slice_normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(_position(ds), normal)))


def _orientation(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        raise CaseError("DICOM image has no ImageOrientationPatient; its geometry is unknown")
    values = np.asarray([float(v) for v in iop])
    return values[:3], values[3:]


def _slice_normal(ds: Any) -> np.ndarray:
    row, col = _orientation(ds)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def _position(ds: Any) -> np.ndarray:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        raise CaseError("DICOM image has no ImagePositionPatient; its geometry is unknown")
    return np.asarray([float(v) for v in ipp])


def check_slice_positions(positions: np.ndarray, normal: np.ndarray) -> float:
    """The regular slice spacing of slices at ``positions`` (sorted along ``normal``), or
    :class:`CaseError` if they do not form one regular grid.

    Refused: several images at one position (4D or multi-phase series), slices displaced within
    their plane (gantry tilt), and uneven or missing slices.
    """
    count = len(positions)
    if count < 2:
        raise CaseError("DICOM series has a single slice, not a volume; a 3D CT is needed")
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(along < _POSITION_TOL_MM):
        distinct = len(np.unique(np.round(positions @ normal, 2)))
        raise CaseError(f"DICOM series has {count} images at {distinct} slice positions (a 4D or multi-phase "
                        "series); split it into one series per phase")
    offset = positions - positions[0]
    in_plane = offset - np.outer(offset @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > max(_POSITION_TOL_MM, 1e-3 * float(np.ptp(positions @ normal))):
        extent = float((positions[-1] - positions[0]) @ normal)
        angle = float(np.degrees(np.arctan2(drift, extent)))
        raise CaseError(f"DICOM series has a gantry tilt (slices displaced {drift:.1f} mm within their plane, "
                        f"about {angle:.1f} degrees); resample it to a regular grid first (e.g. dcm2niix)")
    spacing = float(np.mean(along))
    if float(np.max(np.abs(along - spacing))) > max(_POSITION_TOL_MM, _SPACING_REL_TOL * spacing):
        raise CaseError(f"DICOM series has uneven slice spacing ({float(along.min()):.2f} to "
                        f"{float(along.max()):.2f} mm; missing slices?); a regular grid is needed")
    return spacing


def read_series(series: DicomSeries, name: str) -> Any:
    """Read a DICOM series (or multi-frame file) into a checked :class:`~autoorgan.io.image.Volume`.

    ``name`` prefixes error messages (the case id). The geometry SimpleITK builds is compared with
    the slices' own positions and orientation; any disagreement is an error.
    """
    import SimpleITK as sitk

    from autoorgan.io.image import volume_from_image

    if series.modality and series.modality != "CT":
        log.warning("%s: modality is %s, not CT; the model was trained on CT", name, series.modality)
    try:
        with local_files(series) as paths:
            datasets = _headers(paths)
            if series.multiframe:
                positions, normal = _frame_positions(datasets[0])
                spacing = check_slice_positions(positions, normal)
                image = _read_itk(lambda: sitk.ReadImage(str(paths[0])))
            else:
                normal = _slice_normal(datasets[0])
                order = np.argsort([float(np.dot(_position(ds), normal)) for ds in datasets], kind="stable")
                positions = np.asarray([_position(datasets[i]) for i in order])
                spacing = check_slice_positions(positions, normal)
                files = [str(paths[i]) for i in order]

                def read() -> Any:
                    reader = sitk.ImageSeriesReader()
                    reader.SetFileNames(files)
                    return reader.Execute()

                image = _read_itk(read)
    except CaseError as exc:
        raise CaseError(f"{name}: {exc}") from None
    _check_itk_geometry(image, positions, normal, spacing, name)
    return volume_from_image(image, name)


def _headers(paths: Sequence[Path]) -> list[Any]:
    import pydicom

    try:
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    except (OSError, ValueError, EOFError) as exc:
        raise CaseError(f"cannot read DICOM header ({exc})") from None


def _frame_positions(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Frame positions and slice normal of an enhanced multi-frame image."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames or int(ds.get("NumberOfFrames", 1)) < 2:
        raise CaseError("DICOM file has a single frame, not a volume; a 3D CT is needed")

    def plane(group: Any, seq: str) -> Any:
        item = group.get(seq) if group is not None else None
        return item[0] if item else None

    orient = plane(frames[0], "PlaneOrientationSequence") or plane(shared[0] if shared else None,
                                                                    "PlaneOrientationSequence")
    if orient is None:
        raise CaseError("multi-frame DICOM has no plane orientation; its geometry is unknown")
    normal = _slice_normal(orient)
    positions = []
    for frame in frames:
        pos = plane(frame, "PlanePositionSequence")
        if pos is None:
            raise CaseError("multi-frame DICOM lacks a frame position; its geometry is unknown")
        positions.append(_position(pos))
    array = np.asarray(positions)
    heights = np.diff(array @ normal)
    if np.all(heights < 0):  # frames stored against the normal: the volume's slice axis points the other way
        normal = -normal
    elif not np.all(heights > 0):
        raise CaseError("multi-frame DICOM frames are not stored in slice order (or repeat a position); "
                        "not supported")
    return array, normal


def _read_itk(read: Any) -> Any:
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return read()
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CaseError(f"cannot decode DICOM pixel data ({lines[-1] if lines else 'unknown error'})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _check_itk_geometry(image: Any, positions: np.ndarray, normal: np.ndarray, spacing: float, name: str) -> None:
    """:class:`CaseError` unless SimpleITK's grid puts slice k exactly at ``positions[k]``."""
    if image.GetDimension() != 3 or image.GetSize()[2] != len(positions):
        raise CaseError(f"{name}: DICOM reader returned {image.GetSize()} for {len(positions)} slices")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin())
    step = direction[:, 2] * image.GetSpacing()[2]
    expected = origin + np.outer(np.arange(len(positions)), step)
    error = float(np.max(np.linalg.norm(expected - positions, axis=1)))
    if error > max(0.05, 0.01 * spacing):
        raise CaseError(f"{name}: DICOM geometry is inconsistent (slices up to {error:.2f} mm from the grid); "
                        "not read to avoid a misaligned result")
