"""``--output-type rtstruct``: the label map as a DICOM RT Structure Set, for DICOM input.

Radiotherapy planning systems take structures as contours, not as voxel masks. The RT Structure
Set written here has one ROI per structure present in the label map: its name, its colour (the
run's label colours), its SNOMED CT code where one is known, and closed planar contours on every
slice of the source series the structure reaches, each contour referencing the image it lies on.

Contours are the iso-lines at 0.5 of each slice's binary mask (marching squares), i.e. they run
half-way between the voxel centres inside and outside the structure. Filled with the usual rule
(a voxel belongs to the ROI when its centre lies inside an odd number of the slice's contours,
so holes are inner contours), they give back the label map's voxels. Points are in the patient
coordinates (mm, LPS) of the series' own grid, whatever its orientation; straight runs are kept
as their end points only, so no point is moved.

The file carries the source series' Patient and General Study modules (the structure set belongs
to that patient and study, as DICOM requires), like the DICOM SEG. Anonymised series with blank
UIDs get generated ones in what the structure set references, with a warning.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autoorgan import __version__
from autoorgan.errors import CaseError
from autoorgan.io.dicom_seg import algorithm_identification, referencable_datasets, structure_code
from autoorgan.io.writing import atomic_path

if TYPE_CHECKING:
    from autoorgan.batch.job import CaseContext
    from autoorgan.io.image import Geometry

log = logging.getLogger(__name__)

RTSTRUCT_SUFFIX = ".rtstruct.dcm"
#: RT Structure Set Storage (pydicom's ``RTStructureSetStorage``).
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: What the RT Referenced Study Sequence names as the study's SOP class (Detached Study Management),
#: as planning systems expect it.
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
#: Series number of the structure set (the DICOM SEG is 9900).
SERIES_NUMBER = 9901
#: Decimals of the contour coordinates in mm (DS values of at most 16 characters).
_DECIMALS = 4
#: How far (mm) a slice of the series may lie from the label map's grid (as the DICOM reader allows).
_SLICE_TOLERANCE_MM = 0.05


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed contours of one slice's binary ``mask`` (``[column, row]``, i.e. ``[x, y]``).

    Each contour is an ``(n, 2)`` array of (column, row) index coordinates, not closed by a
    repeated point, without points in the middle of a straight run. Contours run between voxel
    centres (iso-level 0.5); inner contours outline holes (even-odd filling).
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    contours: list[np.ndarray] = []
    for contour in find_contours(padded, 0.5):
        points = contour[:-1] - 1.0  # drop the repeated closing point; undo the padding
        if len(points) < 3:
            continue
        before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
        turning = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
        points = points[turning]
        if len(points) >= 3:
            contours.append(points)
    return contours


def contour_points_mm(points: np.ndarray, k: int, geometry: Geometry) -> np.ndarray:
    """(column, row) index coordinates on slice ``k`` of ``geometry`` as LPS points in mm, ``(n, 3)``."""
    index = np.column_stack([points[:, 0], points[:, 1], np.full(len(points), float(k))])
    return np.asarray(geometry.origin) + (index * np.asarray(geometry.spacing)) @ geometry.direction_matrix.T


def contour_data_element(points_mm: np.ndarray) -> Any:
    """Contour Data (3006,0050) of ``(n, 3)`` points, already encoded: DS values of at most 16
    characters, ``_DECIMALS`` decimals, trailing zeros dropped.

    The element is handed to pydicom encoded (a raw element, written as it is): pydicom would
    otherwise turn every coordinate into a validated decimal-string object, which takes seconds
    per hundred thousand points, and a whole-body structure set has millions.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    rounded = np.round(points_mm.ravel(), _DECIMALS) + 0.0  # + 0.0: no "-0"
    text = "\\".join(f"{v:.{_DECIMALS}f}".rstrip("0").rstrip(".") for v in rounded.tolist())
    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    return RawDataElement(Tag(0x3006, 0x0050), "DS", len(value), value, 0, False, True, True, False)


def _slice_references(datasets: Sequence[Any], geometry: Geometry, case_id: str) -> list[tuple[str, str, int | None]]:
    """(SOP class, SOP instance, frame number or ``None``) of the image of each slice ``k``.

    A single-frame series is sorted like the volume's slices; each image's position is checked
    against the grid's slice so that a contour never references the wrong image. A multi-frame
    image is referenced frame by frame.
    """
    size_z = geometry.size[2]
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        ds = datasets[0]
        if int(ds.NumberOfFrames) != size_z:
            raise CaseError(f"{case_id}: the DICOM image has {ds.NumberOfFrames} frames for {size_z} slices")
        return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID), k + 1) for k in range(size_z)]
    if len(datasets) != size_z:
        raise CaseError(f"{case_id}: the DICOM series has {len(datasets)} images for {size_z} slices")
    origin, step = np.asarray(geometry.origin), geometry.direction_matrix[:, 2] * geometry.spacing[2]
    references: list[tuple[str, str, int | None]] = []
    for k, ds in enumerate(datasets):
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        if float(np.linalg.norm(position - (origin + k * step))) > max(_SLICE_TOLERANCE_MM, 0.01 * geometry.spacing[2]):
            raise CaseError(f"{case_id}: DICOM image {k + 1} does not lie on slice {k + 1} of the volume; "
                            "no RT structure set written")
        references.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), None))
    return references


def _image_item(reference: tuple[str, str, int | None]) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = reference[0], reference[1]
    if reference[2] is not None:
        item.ReferencedFrameNumber = reference[2]
    return item


def _copy(source: Any, target: Any, keywords: Sequence[str]) -> None:
    """Copy ``keywords`` from ``source`` (blank where the source has none: type 2 attributes)."""
    for keyword in keywords:
        value = source.get(keyword)
        setattr(target, keyword, value if value is not None else "")


def build_rtstruct(datasets: Sequence[Any], labels: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                   colors: Mapping[int, tuple[int, int, int]], *, case_id: str, description: str,
                   algorithm: Any | None = None) -> tuple[Any, dict[int, int]]:
    """The RT Structure Set of ``labels`` (``[x, y, z]`` on ``geometry``, the grid of ``datasets``).

    ``names`` and ``colors`` give each label value's ROI name and RGB colour; one ROI per value
    of ``names`` present in ``labels``, numbered 1.. in label order. ``datasets`` are the source
    images, sorted like the volume's slices, with the UIDs they are referenced by. Returns the
    dataset and, per ROI number, the label value it holds. :class:`CaseError` when the images
    do not match the grid.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
    from scipy import ndimage

    references = _slice_references(datasets, geometry, case_id)
    source = datasets[0]
    frame_of_reference = str(source.get("FrameOfReferenceUID", "") or "")
    if not frame_of_reference:
        frame_of_reference = str(generate_uid())
        log.warning("%s: the source series names no frame of reference; the RT structure set gets a generated one",
                    case_id)
    present = [int(v) for v in np.unique(labels) if v != 0 and int(v) in names]
    boxes = ndimage.find_objects(labels, max_label=max(present, default=0))

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(RT_STRUCTURE_SET_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    charset = str(source.get("SpecificCharacterSet", "") or "")
    if charset:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    # Patient and General Study: those of the source images (the same patient and study).
    _copy(source, ds, ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
    _copy(source, ds, ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                       "AccessionNumber"))
    if source.get("StudyDescription"):
        ds.StudyDescription = source.StudyDescription
    # RT Series and General Equipment.
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = description[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "autoorgan"
    ds.ManufacturerModelName = description[:64]
    ds.SoftwareVersions = __version__
    ds.DeviceSerialNumber = "0"
    # Frame of Reference.
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "") or ""
    # Structure Set.
    ds.StructureSetLabel = "autoorgan"
    ds.StructureSetName = description[:64]
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = date, time
    series_item = Dataset()
    series_item.SeriesInstanceUID = source.SeriesInstanceUID
    unique_references = list(dict.fromkeys(references))
    series_item.ContourImageSequence = [_image_item(r) for r in unique_references]
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = _STUDY_SOP_CLASS
    study_item.ReferencedSOPInstanceUID = source.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = [series_item]
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_of_reference
    frame_item.RTReferencedStudySequence = [study_item]
    ds.ReferencedFrameOfReferenceSequence = [frame_item]

    rois, contours, observations = [], [], []
    numbers: dict[int, int] = {}
    for number, value in enumerate(present, start=1):
        numbers[number] = value
        name = names[value]
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = description[:64]
        if algorithm is not None:
            roi.ROIDerivationAlgorithmIdentificationSequence = algorithm
        rois.append(roi)
        contour_items: list[Any] = []
        box = boxes[value - 1]
        if box is not None:
            x0, y0, z0 = (s.start for s in box)
            block = labels[box] == value
            for dz in range(block.shape[2]):
                k = z0 + dz
                for points in slice_contours(block[:, :, dz]):
                    points = points + (x0, y0)
                    item = Dataset()
                    item.ContourImageSequence = [_image_item(references[k])]
                    item.ContourGeometricType = "CLOSED_PLANAR"
                    item.NumberOfContourPoints = len(points)
                    item.ContourNumber = len(contour_items) + 1
                    item[0x30060050] = contour_data_element(contour_points_mm(points, k, geometry))
                    contour_items.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [int(c) for c in colors[value]]
        roi_contour.ContourSequence = contour_items
        roi_contour.ReferencedROINumber = number
        contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIIdentificationCodeSequence = [_code_item(structure_code(name))]
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    # Approval: made by a program, not reviewed by anyone.
    ds.ApprovalStatus = "UNAPPROVED"
    return ds, numbers


def _code_item(code: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


@dataclass(frozen=True)
class RtStructStep:
    """Extra output ``OUT/<case>.rtstruct.dcm``: the label map as an RT Structure Set on its source series.

    ``colors``: label value → RGB of the run's label table (see
    :func:`autoorgan.registry.colors.label_colors`), the ROIs' display colours.
    """

    colors: Mapping[int, tuple[int, int, int]]
    name: str = "RT structure set"

    def __call__(self, ctx: CaseContext) -> None:
        from autoorgan.io.dicom import load_datasets

        series = ctx.case.dicom_source("--output-type rtstruct")
        names = dict(ctx.task.labels)
        target = ctx.outputs.folder / f"{ctx.case.case_id}{RTSTRUCT_SUFFIX}"
        if not any(int(v) in names for v in np.unique(ctx.labels) if v != 0):
            log.warning("%s: no structure found; no RT structure set written", ctx.case.case_id)
            target.unlink(missing_ok=True)
            ctx.sidecar["rtstruct"] = None
            return
        datasets = referencable_datasets(load_datasets(series), ctx.case.case_id, "RT structure set")
        ds, numbers = build_rtstruct(
            datasets, ctx.labels, ctx.volume.geometry, names, self.colors, case_id=ctx.case.case_id,
            description=f"autoorgan {ctx.task.name}", algorithm=algorithm_identification(ctx))
        with atomic_path(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        ctx.sidecar["rtstruct"] = {"file": target.name, "rois": {str(n): names[v] for n, v in numbers.items()}}
