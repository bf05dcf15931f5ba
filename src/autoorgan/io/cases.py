"""Finding the cases of an input: one file, or a folder of image files with any names, DICOM
series (in nested folders too) and zip archives of DICOM folders.

One bad entry never stops the batch: an entry named like an image or a zip that cannot be one (a
folder, a FIFO, a dangling link, a link loop, a name that is not UTF-8, a corrupt or encrypted
zip) becomes a case of its own that fails with that reason, in one line, when its turn comes.
Nothing is opened that is not a regular file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoorgan.errors import CaseError, InputError
from autoorgan.io.safe_paths import printable

if TYPE_CHECKING:
    from autoorgan.io.dicom import DicomSeries

log = logging.getLogger(__name__)

#: File endings read as images, longest first so that ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Longest case id (UTF-8 bytes): its outputs and their temporaries (``.<id>.stats…tmp….json``)
#: must fit the file systems' 255-byte names.
MAX_CASE_ID_BYTES = 150


@dataclass(frozen=True)
class Case:
    """One CT to segment: its id and where it is.

    An image file's id is its name without the ending. A DICOM series (``dicom`` set) has a
    readable id from its folder, series number and description (see
    :func:`autoorgan.io.dicom.series_case_ids`); ``path`` is then the folder or zip archive it was
    found in. ``problem`` is set for an input found but unusable as a whole (see the module's
    docstring): reading the case fails with it.
    """

    case_id: str
    path: Path
    dicom: DicomSeries | None = None
    problem: str | None = None

    @property
    def kind(self) -> str:
        """``image`` (a file SimpleITK reads) or ``dicom`` (a series or multi-frame file)."""
        return "image" if self.dicom is None else "dicom"

    def dicom_source(self, output: str) -> DicomSeries:
        """The DICOM series an output made from it needs (a DICOM SEG, an RT structure set);
        a :class:`~autoorgan.errors.CaseError` naming ``output`` for another input."""
        if self.dicom is None:
            raise CaseError(f"{self.case_id}: {output} needs DICOM input ({self.name} is not DICOM)")
        return self.dicom

    @property
    def name(self) -> str:
        """The input's file or folder name as text safe to print and record (bytes of the name
        that are not UTF-8 shown as ``\\xNN``)."""
        return printable(self.path.name)


def image_suffix(path: Path) -> str | None:
    """The recognised image ending of ``path`` (lower case), or ``None``."""
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def case_id_of(path: Path) -> str:
    """Case id: the file name without its image ending (``ct_01.nii.gz`` → ``ct_01``)."""
    name = printable(path.name)
    suffix = image_suffix(path)
    return name[: -len(suffix)] if suffix else name


def fit_case_id(case_id: str) -> str:
    """``case_id``, or where it is too long for output names (:data:`MAX_CASE_ID_BYTES`), its
    first 120 bytes plus a short hash of the whole id (stable, and unique as the whole id is)."""
    raw = case_id.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_CASE_ID_BYTES:
        return case_id
    head = raw[:120].decode("utf-8", "ignore").rstrip("._- ")
    return f"{head}_{hashlib.sha256(raw).hexdigest()[:8]}"


def _fitted(case: Case) -> Case:
    fitted = fit_case_id(case.case_id)
    if fitted == case.case_id:
        return case
    log.warning("%s: name too long for output file names; its case id is %s", case.name, fitted)
    return replace(case, case_id=fitted)


def _zip_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", path.stem).strip("._-") or "archive"


def find_cases(input_path: Path, *, exclude: Path | None = None) -> list[Case]:
    """The cases of ``input_path``, sorted by case id.

    A file is one case: an image file, a DICOM file (a multi-frame image, or a single slice that
    then fails as such), or a ``.zip`` of DICOM files (one case per series). A folder contributes
    each image file directly inside it, each ``.zip`` directly inside it, and every DICOM series
    found below it at any depth. Hidden files are ignored; so is ``exclude``, the output folder,
    when it lies inside the input folder. Two inputs with the same case id are an error naming
    both. An input that is neither a regular file nor a folder (a FIFO, a link loop) is an
    :class:`InputError`; bad entries of a folder fail only themselves (see the module docstring).
    """
    from autoorgan.io import dicom

    if not input_path.exists() and not input_path.is_symlink():
        raise InputError(f"input {printable(str(input_path))} does not exist")
    if printable(str(input_path)) != str(input_path):
        raise InputError(f"input {printable(str(input_path))}: the path is not valid UTF-8, which the image "
                         "readers cannot open; rename it, or give a link to it with a UTF-8 name")
    kind = dicom.entry_kind(input_path)
    if kind == "file":
        return [_fitted(case) for case in _file_cases(input_path)]
    if kind != "folder":
        raise InputError(f"input {printable(str(input_path))} is {kind}, not a file or folder")
    by_id: dict[str, Case] = {}

    def add(case: Case) -> None:
        case = _fitted(case)
        if case.case_id in by_id:
            raise InputError(f"two inputs have the case id '{case.case_id}': "
                             f"{_describe(by_id[case.case_id])} and {_describe(case)}; rename one")
        by_id[case.case_id] = case

    taken: set[Path] = set()
    try:
        children = sorted(input_path.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list {printable(str(input_path))}: {exc.strerror or exc}") from None
    for path in children:
        if path.name.startswith(".") or dicom.is_same_path(path, exclude):
            continue
        if image_suffix(path) is None and path.suffix.lower() != ".zip":
            continue  # any other file or folder: the DICOM scan below looks at it
        taken.add(path)
        for case in _entry_cases(path):
            add(case)
    for case in _dicom_cases(dicom.scan_folder(input_path, exclude=exclude, top_level_skip=taken),
                             input_path.resolve().name, input_path):
        add(case)
    if not by_id:
        raise InputError(f"input folder {printable(str(input_path))} holds no image files "
                         f"({', '.join(IMAGE_SUFFIXES)}) and no DICOM series")
    return [by_id[k] for k in sorted(by_id)]


def _entry_cases(path: Path) -> list[Case]:
    """The cases of one entry of a folder named like an image or a zip; a failing case where it
    cannot be one."""
    from autoorgan.io import dicom

    is_image = image_suffix(path) is not None
    case_id = case_id_of(path) if is_image else _zip_id(path)
    kind = dicom.entry_kind(path)
    if kind != "file":
        what = "an image file" if is_image else "a zip archive"
        kind = "a folder" if kind == "folder" else kind
        return [Case(case_id, path, problem=f"{printable(path.name)} is {kind}, not {what}")]
    if printable(path.name) != path.name:
        return [Case(case_id, path, problem=f"{printable(path.name)}: the file name is not valid UTF-8; "
                                            "rename the file")]
    if is_image:
        return [Case(case_id, path)]
    try:
        found = dicom.scan_zip(path)
    except InputError as exc:
        return [Case(case_id, path, problem=str(exc))]
    if not found:
        log.warning("%s holds no DICOM images; skipped", printable(path.name))
    return _dicom_cases(found, path.stem, path)


def _file_cases(path: Path) -> list[Case]:
    """The cases of a single input file."""
    from autoorgan.io import dicom

    if image_suffix(path) is not None:
        return _entry_cases(path)
    if path.suffix.lower() == ".zip":
        found = dicom.scan_zip(path)
        if not found:
            raise InputError(f"input {printable(str(path))} holds no DICOM images")
        return _dicom_cases(found, path.stem, path)
    if dicom.looks_like_dicom(path) or path.suffix.lower() == ".dcm":
        found = dicom.scan_file(path)
        # a single file is one series: named after the file alone
        return [Case(case_id_of(path).removesuffix(".dcm") or "series", path, dicom=found[0])]
    raise InputError(f"input {printable(str(path))} is not a supported image "
                     f"({', '.join(IMAGE_SUFFIXES)}, a DICOM file or folder, or a .zip of DICOM files)")


def _dicom_cases(found: list[DicomSeries], root_name: str, where: Path) -> list[Case]:
    from autoorgan.io.dicom import series_case_ids

    archive = where.suffix.lower() == ".zip" and where.is_file()
    ids = series_case_ids(found, _zip_id(where) if archive else root_name, archive=archive)
    return [Case(cid, where if s.archive is not None or where.is_file() else where / s.folder, dicom=s)
            for cid, s in zip(ids, found, strict=True)]


def _describe(case: Case) -> str:
    if case.dicom is None:
        return case.name
    return f"the DICOM series in {case.name}"
