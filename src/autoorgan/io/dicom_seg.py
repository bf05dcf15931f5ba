"""``--output-type dicom-seg``: the label map as a DICOM Segmentation (highdicom), for DICOM input.

One segment per structure present in the label map, labelled with the structure's name and coded
with SNOMED CT (category "Anatomical Structure"; the type is the structure's SNOMED concept where
pydicom's code dictionary has one, e.g. Liver, Sacrum, Femur, else "Anatomical Structure"). A
sided structure (``hip_left``) carries its laterality, SNOMED CT Left (7771000) or Right
(24028007), as the modifier of its property type and of its anatomic region, so that ``hip_left``
and ``hip_right`` are told apart by code as well as by name. Each segment has its recommended
display colour (CIELab, from the run's label colours) and names the algorithm that made it:
autoorgan, its version, and the model (task, dataset, trainer, plans, configuration, fold and
checkpoint checksum) as the algorithm's parameters. The SEG references the source series image
by image, so viewers and PACS show it on that series.

Anonymised series with blank UIDs (which DICOM forbids but exports contain) cannot be referenced;
the SEG then carries generated UIDs for what is missing and a warning says so.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autoorgan import __version__
from autoorgan.errors import CaseError
from autoorgan.io.writing import atomic_path

if TYPE_CHECKING:
    from autoorgan.batch.job import CaseContext

log = logging.getLogger(__name__)

SEG_SUFFIX = ".seg.dcm"
_SIDES = {"left", "right", "l", "r"}
#: Structure-name words whose SNOMED concept in pydicom's dictionary is spelt differently.
_ALIASES = {"vertebrae": "vertebra", "ribs": "rib", "lungs": "lung", "kidneys": "kidney"}


def structure_code(name: str) -> Any:
    """The SNOMED CT concept of a structure name (``kidney_left`` → Kidney), else Anatomical Structure."""
    from pydicom.sr.codedict import codes

    words = [_ALIASES.get(w, w) for w in name.lower().split("_")
             if w not in _SIDES and not re.fullmatch(r"[a-z]?\d+", w)]
    candidates = ["".join(w.capitalize() for w in words)] + [w.capitalize() for w in words]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return getattr(codes.SCT, candidate)
        except AttributeError:
            continue
    return codes.SCT.AnatomicalStructure


def laterality_code(name: str) -> Any | None:
    """SNOMED CT Left or Right for a sided structure name (``kidney_left``, ``rib_right_4``), else ``None``."""
    from pydicom.sr.codedict import codes

    words = set(name.lower().split("_"))
    if "left" in words and "right" not in words:
        return codes.SCT.Left
    if "right" in words and "left" not in words:
        return codes.SCT.Right
    return None


def algorithm_identification(ctx: CaseContext) -> Any:
    """The Algorithm Identification of a run's outputs: autoorgan, its version, family "Artificial
    Intelligence", and the model as parameters (task; per model the dataset, trainer, plans,
    configuration, fold and checkpoint SHA-256, as the sidecar's ``made_with`` records them)."""
    import highdicom as hd

    models = (ctx.sidecar.get("made_with") or {}).get("models") or {
        ctx.task.name: {"dataset_id": ctx.task.dataset_id, "trainer": ctx.task.trainer, "plans": ctx.task.plans,
                        "configuration": ctx.task.configuration, "fold": ctx.task.fold}}
    parameters = {"task": ctx.task.name}
    for task, identity in models.items():
        prefix = "" if len(models) == 1 else f"{task}."
        for key in ("dataset_id", "trainer", "plans", "configuration", "fold", "checkpoint_sha256"):
            if identity.get(key) is not None:
                parameters[f"{prefix}{key}"] = str(identity[key])
    return hd.AlgorithmIdentificationSequence(
        name="autoorgan", version=__version__, source="autoorgan",
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"), parameters=parameters)


@contextmanager
def quiet_highdicom() -> Iterator[None]:
    """While highdicom builds a file: its progress messages (INFO, "copy attributes of module ...")
    stay off the console and the log; its warnings still show."""
    logger = logging.getLogger("highdicom")
    previous = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def referencable_datasets(datasets: list[Any], case_id: str, what: str = "DICOM SEG") -> list[Any]:
    """Source datasets with the UIDs a SEG (or RT structure set, ``what``) must reference; blank
    ones are filled (with a warning)."""
    from pydicom.uid import generate_uid

    filled: list[str] = []
    study, series = generate_uid(), generate_uid()
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # blank: the default repertoire
        if not str(ds.get("SOPClassUID", "") or ""):
            sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
            if not sop_class:
                raise CaseError(f"{case_id}: a source DICOM file names no SOP Class UID; a {what} cannot "
                                "reference it")
            ds.SOPClassUID = sop_class
        if not str(ds.get("SOPInstanceUID", "") or ""):
            uid = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
            ds.SOPInstanceUID = uid or generate_uid()
            filled.append("SOPInstanceUID")
        for keyword, value in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
            if not str(ds.get(keyword, "") or ""):
                setattr(ds, keyword, value)
                filled.append(keyword)
    if filled:
        log.warning("%s: the source series has blank %s; the %s references generated UIDs", case_id,
                    "/".join(sorted(set(filled))), what)
    return datasets


@dataclass(frozen=True)
class DicomSegStep:
    """Extra output ``OUT/<case>.seg.dcm``: the label map as a DICOM SEG referencing its source series.

    ``colors``: label value → RGB of the run's label table (the run's colours, see
    :func:`autoorgan.registry.colors.label_colors`), the segments' recommended display colours.
    """

    colors: Mapping[int, tuple[int, int, int]]
    name: str = "DICOM SEG"

    def __call__(self, ctx: CaseContext) -> None:
        import highdicom as hd

        from autoorgan.io.dicom import load_datasets

        series = ctx.case.dicom_source("--output-type dicom-seg")
        present = [int(v) for v in np.unique(ctx.labels) if v != 0 and int(v) in ctx.task.labels]
        target = ctx.outputs.folder / f"{ctx.case.case_id}{SEG_SUFFIX}"
        if not present:
            log.warning("%s: no structure found; no DICOM SEG written", ctx.case.case_id)
            target.unlink(missing_ok=True)
            ctx.sidecar["dicom_seg"] = None
            return
        datasets = referencable_datasets(load_datasets(series), ctx.case.case_id)
        # Segment numbers 1..k for the present labels, in label order.
        numbers = np.zeros(int(max(present)) + 1, dtype=np.uint16)
        numbers[present] = np.arange(1, len(present) + 1)
        frames = numbers[ctx.labels.transpose(2, 1, 0)]  # [x, y, z] -> frames [z, row=y, column=x]
        algorithm = algorithm_identification(ctx)
        descriptions = [_segment(i, ctx.task.labels[value], self.colors[value], algorithm)
                        for i, value in enumerate(present, start=1)]
        try:
            with warnings.catch_warnings(), quiet_highdicom():
                # highdicom's warnings quote header values such as the patient's name: never shown.
                warnings.simplefilter("ignore")
                seg = hd.seg.Segmentation(
                    source_images=datasets, pixel_array=frames,
                    segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                    segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9900,
                    sop_instance_uid=hd.UID(), instance_number=1, manufacturer="autoorgan",
                    manufacturer_model_name=f"autoorgan {ctx.task.name}", software_versions=__version__,
                    device_serial_number="0", series_description=f"autoorgan {ctx.task.name}"[:64],
                    omit_empty_frames=False)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CaseError(f"{ctx.case.case_id}: cannot build the DICOM SEG ({exc})".splitlines()[0]) from None
        with atomic_path(target) as tmp:
            seg.save_as(tmp)
        ctx.sidecar["dicom_seg"] = {"file": target.name,
                                    "segments": {str(i): ctx.task.labels[v] for i, v in enumerate(present, start=1)}}


def _segment(number: int, name: str, rgb: tuple[int, int, int], algorithm: Any) -> Any:
    """The description of segment ``number``: name, SNOMED codes with laterality, colour, algorithm."""
    import highdicom as hd

    code = structure_code(name)
    side = laterality_code(name)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=_category(),
        segmented_property_type=code, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=name[:64],
        anatomic_regions=[code] if side is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb))
    if side is not None:
        # highdicom takes no modifiers; DICOM nests them in the coded items themselves.
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(side)]
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [hd.sr.CodedConcept.from_code(side)]
    return description


def _category() -> Any:
    from pydicom.sr.codedict import codes

    return codes.SCT.AnatomicalStructure
