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

Patient identifiers (name, ID, birth date) are never read into anything autoorgan writes or logs.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.errors import CaseError, InputError

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


def _read_header(source: Path | io.BytesIO) -> Any | None:
    """The scan tags of one file, or ``None`` if it is not a usable DICOM image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    except Exception as exc:  # noqa: BLE001 - a corrupt header must not stop the search for series
        log.debug("skipping an unreadable DICOM header: %s", type(exc).__name__)
        return None
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class in _NOT_IMAGES or "Rows" not in ds:
        return None
    return ds


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
                groups[(*key, str(Path(rel).parent))].append((rel, ds))
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

    ``top_level_skip`` lists files directly in ``root`` already taken as other inputs.
    """
    excluded = exclude.resolve() if exclude is not None else None
    skip = top_level_skip or set()
    entries: list[tuple[str, Any]] = []
    stack = [root]
    visited: set[Path] = set()
    while stack:
        folder = stack.pop()
        if folder.resolve() in visited:  # a symbolic link back up the tree
            continue
        visited.add(folder.resolve())
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            raise InputError(f"cannot list {folder}: {exc.strerror or exc}") from None
        for path in children:
            if path.name.startswith(".") or path in skip:
                continue
            if excluded is not None and path.resolve() == excluded:
                continue
            if path.is_dir():
                stack.append(path)
            elif path.is_file() and (looks_like_dicom(path) or path.suffix.lower() == ".dcm"):
                ds = _read_header(path)
                if ds is not None:
                    entries.append((path.relative_to(root).as_posix(), ds))
    return _collect(entries, root, None)


def scan_file(path: Path) -> list[DicomSeries]:
    """The single DICOM file ``path`` as a series of one file (or :class:`InputError`)."""
    ds = _read_header(path)
    if ds is None:
        raise InputError(f"input {path} is not a readable DICOM image")
    return _collect([(path.name, ds)], path.parent, None)


def scan_zip(archive: Path) -> list[DicomSeries]:
    """The DICOM series inside a zip archive (headers read in memory, nothing extracted)."""
    entries: list[tuple[str, Any]] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or any(part.startswith(".") or part == "__MACOSX" for part in name.split("/")):
                    continue
                with zf.open(info) as fh:
                    head = fh.read(132)
                if not (head[128:132] == b"DICM" or name.lower().endswith(".dcm")):
                    continue
                ds = _read_header(io.BytesIO(zf.read(info)))
                if ds is not None:
                    entries.append((name, ds))
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{archive.name}: not a readable zip archive ({exc})") from None
    return _collect(entries, archive.parent, archive)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("._-")


def series_case_ids(series: Sequence[DicomSeries], root_name: str) -> list[str]:
    """Readable case ids: the series' folder (relative to the input, or ``root_name`` for the input
    folder itself), plus series number and description where a folder holds several series."""
    per_folder: dict[str, int] = defaultdict(int)
    for s in series:
        per_folder[s.folder] += 1
    ids: list[str] = []
    for s in series:
        at_root = s.folder in ("", ".")
        base = root_name if at_root else "_".join(Path(s.folder).parts)
        if s.multiframe and (at_root or per_folder[s.folder] > 1):
            # a multi-frame file beside other series is named after its file
            stem = Path(s.files[0]).stem
            base = stem if at_root else f"{base}_{stem}"
        elif per_folder[s.folder] > 1:
            number = "" if s.series_number is None else str(s.series_number)
            detail = f"{number}_{s.description}".strip("_") if s.description else f"series{number}"
            base = f"{base}_{detail}"
        name = _sanitize(base) or "series"
        candidate, n = name, 2
        while candidate in ids:
            candidate, n = f"{name}_{n}", n + 1
        ids.append(candidate)
    return ids


@contextmanager
def local_files(series: DicomSeries) -> Iterator[list[Path]]:
    """The series' files as local paths; a zip's members are extracted to a temporary folder
    (under safe names) that is removed afterwards."""
    if series.archive is None:
        yield [series.root / rel for rel in series.files]
        return
    with tempfile.TemporaryDirectory(prefix="autoorgan-dicom-") as tmp:
        paths = []
        try:
            with zipfile.ZipFile(series.archive) as zf:
                for i, member in enumerate(series.files):
                    target = Path(tmp) / f"{i:06d}.dcm"
                    target.write_bytes(zf.read(member))
                    paths.append(target)
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise CaseError(f"{series.archive.name}: cannot extract the series ({exc})") from None
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
