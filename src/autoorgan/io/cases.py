"""Finding the cases of an input: one file, or a folder of image files with any names."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from autoorgan.errors import InputError

log = logging.getLogger(__name__)

#: File endings read as images, longest first so that ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Case:
    """One CT to segment: its id (file name without extension) and where it is."""

    case_id: str
    path: Path


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

    A file is one case. A folder contributes each image file directly inside it (hidden files
    are ignored; so is ``exclude``, the output folder, when it lies inside the input folder).
    Two files with the same case id (``a.nii`` and ``a.nii.gz``) are an error naming both.
    """
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    if input_path.is_file():
        if image_suffix(input_path) is None:
            raise InputError(f"input {input_path} is not a supported image "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        return [Case(case_id_of(input_path), input_path)]
    excluded = exclude.resolve() if exclude is not None else None
    by_id: dict[str, Case] = {}
    for path in sorted(input_path.iterdir()):
        if excluded is not None and path.resolve() == excluded:
            continue
        if not _is_candidate(path):
            continue
        case = Case(case_id_of(path), path)
        if case.case_id in by_id:
            raise InputError(f"two inputs have the case id '{case.case_id}': "
                             f"{by_id[case.case_id].path.name} and {path.name}; rename one")
        by_id[case.case_id] = case
    if not by_id:
        raise InputError(f"input folder {input_path} holds no image files "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return [by_id[k] for k in sorted(by_id)]
