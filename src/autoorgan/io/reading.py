"""Reading a case, whatever its kind: one function the pipeline calls for every case."""

from __future__ import annotations

from typing import Any

from autoorgan.errors import CaseError
from autoorgan.io.cases import Case
from autoorgan.io.image import Volume, read_volume


def read_case(case: Case) -> Volume:
    """The checked 3D volume of ``case``: an image file (SimpleITK) or a DICOM series / multi-frame
    file (:func:`autoorgan.io.dicom.read_series`). Failures are :class:`~autoorgan.errors.CaseError`;
    so is an input found unusable (``case.problem``: a FIFO, a corrupt zip...), which is never opened."""
    if case.problem is not None:
        raise CaseError(case.problem)
    if case.dicom is None:
        return read_volume(case.path)
    from autoorgan.io.dicom import read_series

    return read_series(case.dicom, case.case_id)


def source_sidecar(case: Case) -> dict[str, Any]:
    """What the sidecar records about the input beyond its name: for DICOM, the series' UID,
    number, description and modality (never patient data)."""
    if case.dicom is None:
        return {}
    return {"dicom": case.dicom.sidecar()}
