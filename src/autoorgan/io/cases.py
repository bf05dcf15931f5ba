"""Finding the cases of an input: one file, or a folder of image files with any names, DICOM
series (in nested folders too) and zip archives of DICOM folders."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoorgan.errors import InputError

if TYPE_CHECKING:
    from autoorgan.io.dicom import DicomSeries

log = logging.getLogger(__name__)

#: File endings read as images, longest first so that ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Case:
    """One CT to segment: its id and where it is.

    An image file's id is its name without the ending. A DICOM series (``dicom`` set) has a
    readable id from its folder, series number and description; ``path`` is then the folder or
    zip archive it was found in.
    """

    case_id: str
    path: Path
    dicom: DicomSeries | None = None

    @property
    def kind(self) -> str:
        """``image`` (a file SimpleITK reads) or ``dicom`` (a series or multi-frame file)."""
        return "image" if self.dicom is None else "dicom"


def image_suffix(path: Path) -> str | None:
    """The recognised image ending of ``path`` (lower case), or ``None``."""
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def case_id_of(path: Path) -> str:
    """Case id: the file name without its image ending (``ct_01.nii.gz`` → ``ct_01``)."""
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and image_suffix(path) is not None


def find_cases(input_path: Path, *, exclude: Path | None = None) -> list[Case]:
    """The cases of ``input_path``, sorted by case id.

    A file is one case: an image file, a DICOM file (a multi-frame image, or a single slice that
    then fails as such), or a ``.zip`` of DICOM files (one case per series). A folder contributes
    each image file directly inside it, each ``.zip`` directly inside it, and every DICOM series
    found below it at any depth. Hidden files are ignored; so is ``exclude``, the output folder,
    when it lies inside the input folder. Two inputs with the same case id are an error naming
    both; DICOM series ids are made unique with a ``_2`` suffix.
    """
    from autoorgan.io import dicom

    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    if input_path.is_file():
        if image_suffix(input_path) is not None:
            return [Case(case_id_of(input_path), input_path)]
        if input_path.suffix.lower() == ".zip":
            found = dicom.scan_zip(input_path)
            if not found:
                raise InputError(f"input {input_path} holds no DICOM images")
            return _dicom_cases(found, input_path.stem, input_path)
        if dicom.looks_like_dicom(input_path) or input_path.suffix.lower() == ".dcm":
            return _dicom_cases(dicom.scan_file(input_path), case_id_of(input_path).removesuffix(".dcm"),
                                input_path)
        raise InputError(f"input {input_path} is not a supported image "
                         f"({', '.join(IMAGE_SUFFIXES)}, a DICOM file or folder, or a .zip of DICOM files)")
    excluded = exclude.resolve() if exclude is not None else None
    by_id: dict[str, Case] = {}

    def add(case: Case) -> None:
        if case.case_id in by_id:
            raise InputError(f"two inputs have the case id '{case.case_id}': "
                             f"{_describe(by_id[case.case_id])} and {_describe(case)}; rename one")
        by_id[case.case_id] = case

    taken: set[Path] = set()
    for path in sorted(input_path.iterdir()):
        if excluded is not None and path.resolve() == excluded:
            continue
        if _is_candidate(path):
            add(Case(case_id_of(path), path))
            taken.add(path)
        elif path.is_file() and not path.name.startswith(".") and path.suffix.lower() == ".zip":
            taken.add(path)
            found = dicom.scan_zip(path)
            if not found:
                log.warning("%s holds no DICOM images; skipped", path.name)
            for case in _dicom_cases(found, path.stem, path):
                add(case)
    for case in _dicom_cases(dicom.scan_folder(input_path, exclude=exclude, top_level_skip=taken),
                             input_path.resolve().name, input_path):
        add(case)
    if not by_id:
        raise InputError(f"input folder {input_path} holds no image files "
                         f"({', '.join(IMAGE_SUFFIXES)}) and no DICOM series")
    return [by_id[k] for k in sorted(by_id)]


def _dicom_cases(found: list[DicomSeries], root_name: str, where: Path) -> list[Case]:
    from autoorgan.io.dicom import series_case_ids

    if not found and where.is_file() and where.suffix.lower() != ".zip":
        raise InputError(f"input {where} holds no DICOM images")
    ids = series_case_ids(found, root_name)
    if where.suffix.lower() == ".zip" and where.is_file():
        # Named after the archive: its only series is the archive's name, several are prefixed by it.
        stem = re.sub(r"[^A-Za-z0-9.-]+", "_", where.stem).strip("._-") or "archive"
        ids = [stem] if len(ids) == 1 else [f"{stem}_{cid}" for cid in ids]
    return [Case(cid, where if s.archive is not None or where.is_file() else where / s.folder, dicom=s)
            for cid, s in zip(ids, found, strict=True)]


def _describe(case: Case) -> str:
    if case.dicom is None:
        return case.path.name
    return f"the DICOM series in {case.path.name}"
