"""Segmentation of one case by task models: the CT reoriented into the model's orientation,
predicted and brought back onto its own grid; the task models of a run, loaded at most once and
only when a case needs them; and the segmenter of a one-task run.

A run with several tasks uses :class:`autoorgan.steps.cascade.MultiTaskSegmenter` on the same
pieces; both are :class:`autoorgan.batch.job.CaseSegmenter`\\ s, the only kind of segmenter a
batch job knows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from autoorgan import __version__
from autoorgan.anatomy.checks import AnatomyReport, check_anatomy, side_swaps
from autoorgan.batch.job import CaseContext, ProgressListener, Segmentation
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.errors import CaseError
from autoorgan.io.cases import Case
from autoorgan.io.image import Volume
from autoorgan.io.orientation import DEFAULT_ORIENTATION, plan_reorientation
from autoorgan.io.reading import source_sidecar
from autoorgan.models.orientation import ModelOrientation, resolve_model_orientation
from autoorgan.models.store import ModelLocation
from autoorgan.registry.tasks import DEMO_NOTE, Task
from autoorgan.steps.repair import repair_task_map, warn_on_repair_flags

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What a run needs of a loaded model (see :class:`autoorgan.engine.Segmenter`)."""

    #: The nnU-Net trainer of the loaded checkpoint.
    trainer_name: str
    #: Seconds per stage of the last prediction (``preprocess``, ``network``, ``export``).
    last_timing: Mapping[str, float]
    #: Tiles of the last prediction: (run, of the whole image's).
    last_tiles: tuple[int, int]
    #: Called with (tiles done, tiles in all) while a prediction runs the network, or ``None``.
    progress: Callable[[int, int], None] | None
    #: The precision the network runs in (``fp32``, ``bf16``; ``fp16``: nnU-Net's CUDA autocast),
    #: and why (see :mod:`autoorgan.engine.precision`).
    precision: str
    precision_reason: str

    def predict(self, array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                roi: tuple[slice, slice, slice] | None = None) -> np.ndarray: ...


def label_dtype(max_label: int) -> type[np.unsignedinteger[Any]]:
    """uint8 where every label fits, else uint16."""
    return np.uint8 if max_label <= np.iinfo(np.uint8).max else np.uint16


def prepare_intensities(array: np.ndarray) -> np.ndarray:
    """Float32 copy of the CT for the network; non-finite voxels become the image's minimum."""
    data = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        fill = float(data[finite].min()) if finite.any() else 0.0
        data = np.where(finite, data, fill)
        log.warning("%d non-finite voxel(s) replaced by %g before prediction", int((~finite).sum()), fill)
    return data


def intensity_warnings(array: np.ndarray) -> list[str]:
    """Plain-language warnings when an image does not look like a CT in Hounsfield units.

    The models are trained on CT: an MR image or a CT whose rescale slope/intercept was not
    applied gives meaningless labels, so the user is told (the case is still processed).
    """
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if finite.size == 0:
        return ["the image holds no finite intensities"]
    low, high = (float(v) for v in np.percentile(finite[:: max(1, finite.size // 200_000)], [0.5, 99.5]))
    warnings = []
    if low > -200.0:
        warnings.append(f"intensities do not look like CT in Hounsfield units (0.5th percentile {low:.0f}, "
                        "no air below -200); is this MR, or CT without rescale slope/intercept applied?")
    elif high - low < 100.0:
        warnings.append(f"intensity range is very narrow ({low:.0f}..{high:.0f}); results may be meaningless")
    return warnings


def segment_volume(volume: Volume, task: Task, predictor: Predictor,
                   roi: tuple[slice, slice, slice] | None = None,
                   progress: Callable[[int, int], None] | None = None, *,
                   orientation: str | None = DEFAULT_ORIENTATION) -> np.ndarray:
    """Label map of ``volume`` on its own grid (``[x, y, z]``, the volume's shape).

    The CT is permuted/flipped into ``orientation``, the one the task's model was trained in
    (axis codes; ``None``: as stored; see :func:`autoorgan.models.orientation.resolve_model_orientation`),
    predicted, and the prediction is brought back with the exact inverse permutation — no
    resampling of the CT or of the labels by autoorgan. ``roi`` (a box of the volume's array) limits the
    prediction to that region, exactly as the whole image's prediction there (see
    :meth:`autoorgan.engine.Segmenter.predict`); the rest is background. ``progress`` is given
    (tiles done, tiles in all) while the network runs (see :func:`case_progress`).
    """
    reorientation = plan_reorientation(volume.geometry.direction_matrix, orientation)
    oriented = reorientation.to_target(prepare_intensities(volume.array))
    spacing = reorientation.spacing(volume.geometry.spacing)
    box = None if roi is None else reorientation.box_to_target(roi, volume.array.shape)
    before = predictor.progress
    predictor.progress = progress
    try:
        prediction_zyx = predictor.predict(oriented.transpose(2, 1, 0), (spacing[2], spacing[1], spacing[0]),
                                           roi=None if box is None else (box[2], box[1], box[0]))
    finally:
        predictor.progress = before
    labels = reorientation.to_source(np.asarray(prediction_zyx).transpose(2, 1, 0))
    if labels.shape != volume.array.shape:
        raise CaseError(f"prediction shape {labels.shape} differs from the image {volume.array.shape}")
    return np.ascontiguousarray(labels.astype(label_dtype(task.max_label), copy=False))


def case_progress(listener: ProgressListener, case_id: str) -> Callable[[int, int], None]:
    """The tile progress of a prediction, sent to ``listener`` as :meth:`ProgressListener.case_progress`."""
    def report(done: int, total: int) -> None:
        listener.case_progress(case_id, done, total)
    return report


def build_sidecar(task: Task, case: Case, *, trainer: str, nnunet: str, label_file: str, orientation: str,
                  model_orientation: ModelOrientation) -> dict[str, Any]:
    """The sidecar written next to a label map: what made it and what its values mean.

    It deliberately holds no image metadata beyond the input file's name and, for DICOM, the
    series' UID, number, description and modality (no patient data). The demo model's sidecar
    says so (``"demo": true`` and a ``"note"``).
    """
    demo: dict[str, Any] = {}
    if task.demo:
        demo = {"demo": True, "note": DEMO_NOTE}
    return {
        "task": task.name,
        **demo,
        "dataset_id": task.dataset_id,
        "trainer": trainer,
        "plans": task.plans,
        "configuration": task.configuration,
        "fold": task.fold,
        "labels": {str(value): name for value, name in task.labels.items()},
        "label_map": label_file,
        "input": case.name,
        "input_orientation": orientation,
        "model_orientation": model_orientation.label,
        "orientation_source": model_orientation.source.value,
        "versions": {"autoorgan": __version__, "nnunetv2": nnunet},
        **source_sidecar(case),
    }


@dataclass(frozen=True)
class TaskModel:
    """One task of a run with its installed model; ``lut`` maps its values into the whole-body
    table (several tasks), ``half_patch_mm`` sizes the cascade's margin; ``orientation`` is the one
    its model is fed in (:func:`~autoorgan.models.orientation.resolve_model_orientation`)."""

    task: Task
    location: ModelLocation
    orientation: ModelOrientation
    lut: np.ndarray | None = None
    half_patch_mm: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, task: Task, location: ModelLocation, *, override: str | None = None,
           lut: np.ndarray | None = None, half_patch_mm: tuple[float, float, float] | None = None) -> TaskModel:
        """``task``'s installed model with its orientation resolved (``override``: ``--orientation``)."""
        return cls(task, location, resolve_model_orientation(task, location.folder, override), lut, half_patch_mm)


def anatomy_checks(task: Task, raw: np.ndarray, repaired: np.ndarray, volume: Volume) -> AnatomyReport:
    """The anatomical checks of a task's raw prediction (before any repair), with the repair's side
    swaps counted as a failure of the ``sides`` check (see :mod:`autoorgan.anatomy.checks`)."""
    report = check_anatomy(raw, volume.geometry, task.labels, ct=volume.array)
    swapped = side_swaps(raw, repaired, task.labels) if repaired is not raw else []
    if not swapped:
        return report
    checks = tuple(replace(c, tested=c.tested + len(swapped),
                           failures=(*c.failures, *(f"the repair moved most of {n} to the other side" for n in swapped)))
                   if c.name == "sides" else c for c in report.checks)
    return AnatomyReport(checks)


def warn_on_checks(case_id: str, report: AnatomyReport, model: TaskModel) -> None:
    """One warning line for a case whose prediction failed the anatomical checks."""
    if report.passed:
        return
    failures = report.failures
    shown = "; ".join(failures[:3]) + (f" (and {len(failures) - 3} more)" if len(failures) > 3 else "")
    log.warning("%s: %s labels fail the anatomical checks: %s; check the model's orientation (%s, from %s; "
                "'autoorgan calibrate') and the series' patient position", case_id, model.task.name, shown,
                model.orientation.label, model.orientation.source.value)


@dataclass
class ModelPool:
    """The models of a run, each loaded by ``load`` at most once, when a case first needs it."""

    load: Callable[[TaskModel], Predictor]
    loaded: dict[str, Predictor] = field(default_factory=dict)

    def get(self, model: TaskModel, case_id: str, listener: ProgressListener, stage: str) -> Predictor:
        name = model.task.name
        if name not in self.loaded:
            listener.case_stage(case_id, stage)
            self.loaded[name] = self.load(model)
        return self.loaded[name]

    def trainer_name(self, model: TaskModel) -> str:
        """The trainer of the loaded checkpoint (the task table's until the model is loaded)."""
        loaded = self.loaded.get(model.task.name)
        return loaded.trainer_name if loaded is not None else model.task.trainer


@dataclass
class TaskSegmenter:
    """Segments a case with one task's model, in the task's own label values; with ``repair`` the
    map is repaired anatomically (:func:`autoorgan.steps.repair.repair_task_map`)."""

    model: TaskModel
    pool: ModelPool
    nnunet_version: str
    repair: bool = False

    @property
    def dataset_id(self) -> int | None:
        """The dataset recorded in (and required of) each finished sidecar."""
        return self.model.task.dataset_id

    def __call__(self, case: Case, volume: Volume, out: CaseOutputs, listener: ProgressListener) -> Segmentation:
        task = self.model.task
        predictor = self.pool.get(self.model, case.case_id, listener, "loading model")
        listener.case_stage(case.case_id, "predicting")
        labels = segment_volume(volume, task, predictor, progress=case_progress(listener, case.case_id),
                                orientation=self.model.orientation.codes)
        orientation = plan_reorientation(volume.geometry.direction_matrix, None).source_codes
        sidecar = build_sidecar(task, case, trainer=predictor.trainer_name, nnunet=self.nnunet_version,
                                label_file=out.label_map.name, orientation=orientation,
                                model_orientation=self.model.orientation)
        if self.model.location.stands_in_for is not None:
            sidecar["model_folder_note"] = self.model.location.note()
        raw = labels
        sidecar["precision"] = {"precision": predictor.precision, "reason": predictor.precision_reason}
        if self.repair:
            listener.case_stage(case.case_id, "repairing")
            result = repair_task_map(task, labels, volume.geometry, ct=volume.array)
            labels = result.labels
            sidecar["postprocess"] = result.report()
            warn_on_repair_flags(case.case_id, result)
        checks = anatomy_checks(task, raw, labels, volume)
        sidecar["checks"] = checks.record()
        warn_on_checks(case.case_id, checks, self.model)
        return Segmentation(labels=labels, sidecar=sidecar, timing=dict(predictor.last_timing))


class IntensityCheck:
    """Warns (log and sidecar ``"warnings"``) when the input does not look like CT in Hounsfield
    units: the first step of every predict run."""

    name = "checking intensities"

    def __call__(self, ctx: CaseContext) -> None:
        warnings = intensity_warnings(ctx.volume.array)
        for warning in warnings:
            log.warning("%s: %s", ctx.case.case_id, warning)
        if warnings:
            ctx.sidecar["warnings"] = warnings


__all__ = ["IntensityCheck", "ModelPool", "TaskModel", "TaskSegmenter"]
