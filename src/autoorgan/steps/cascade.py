"""Multi-task prediction of one case: the skeleton first, each subdivision model on its ROI.

When the skeleton task is among a run's tasks, its model runs first on the whole image. Each
requested subdivision task (the skeleton table's ``subdivisions``: vertebrae, ribs, upper_limb,
hip, lower_limb) then runs only on the region of interest — the bounding box of its coarse
skeleton class plus a margin — and is skipped (its model not even loaded) when the skeleton
found no voxel of that class. Organs (and every task when the skeleton is not requested, or
with ``--no-cascade``) run on the whole image.

Running "on the ROI" means: of nnU-Net's sliding-window tiles over the whole image, only those
that reach into the ROI run, and only the ROI is exported (:meth:`autoorgan.engine.Segmenter.predict`).
Inside the ROI every voxel sees the same tiles, Gaussian weights and sums as in the whole-image
prediction, so the cascade's labels there are the whole image's, whatever the model; outside it
the task's map is background. Nothing is resampled by autoorgan; the output keeps the input's grid.

The margin is, per image axis, the larger of half the subdivision model's patch (in its working
grid, converted to mm) and :data:`DEFAULT_MARGIN_FLOOR_MM`; ``--cascade-margin MM`` replaces it.
It catches the parts of a structure that the coarse skeleton map missed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan import __version__
from autoorgan.batch.job import ProgressListener, Segmentation
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.errors import ModelLoadError
from autoorgan.io.cases import Case
from autoorgan.io.image import Volume
from autoorgan.io.orientation import Reorientation, plan_reorientation
from autoorgan.io.reading import source_sidecar
from autoorgan.registry.tasks import Task
from autoorgan.registry.whole_body import SKELETON, WholeBodyTable, merge_task_maps, to_whole_body
from autoorgan.steps.repair import repair_task_map, warn_on_repair_flags
from autoorgan.steps.segment import (
    ModelPool,
    TaskModel,
    anatomy_checks,
    case_progress,
    label_dtype,
    segment_volume,
    warn_on_checks,
)

log = logging.getLogger(__name__)

#: Smallest cascade margin (mm) on every side of a coarse class's bounding box.
DEFAULT_MARGIN_FLOOR_MM = 20.0

Box = tuple[slice, slice, slice]


def half_patch_mm(model_folder: Path, configuration: str) -> tuple[float, float, float]:
    """Half the model's patch in mm along its own array axes (nnU-Net's z, y, x order).

    Read from the model's ``plans.json`` (patch size in voxels of the working grid times the
    working spacing), so nothing needs to be loaded to plan a crop.
    """
    plans_file = model_folder / "plans.json"
    try:
        configurations = json.loads(plans_file.read_text(encoding="utf-8"))["configurations"]
        config = dict(configurations[configuration])
        seen = {configuration}
        while "inherits_from" in config and ("patch_size" not in config or "spacing" not in config):
            parent = config.pop("inherits_from")
            if parent in seen:
                break
            seen.add(parent)
            config = {**configurations[parent], **config}
        patch, spacing = config["patch_size"], config["spacing"]
        values = tuple(float(p) * float(s) / 2.0 for p, s in zip(patch, spacing, strict=True))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the patch size of configuration '{configuration}' from {plans_file}: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    if len(values) != 3:
        raise ModelLoadError(f"{plans_file}: configuration '{configuration}' is not 3D")
    return (values[0], values[1], values[2])


def margin_voxels(spacing_xyz: Sequence[float], *, model_half_patch_mm: Sequence[float] | None = None,
                  reorientation: Reorientation | None = None, floor_mm: float = DEFAULT_MARGIN_FLOOR_MM,
                  margin_mm: float | None = None) -> tuple[int, int, int]:
    """Margin in voxels along each image axis (``[x, y, z]`` of the stored array).

    ``margin_mm`` (``--cascade-margin``) is used as given on every axis; otherwise each image
    axis gets max(half the model's patch along the model axis it becomes, ``floor_mm``).
    ``reorientation`` maps image axes to the model's (see :func:`plan_reorientation`).
    """
    if margin_mm is not None:
        wanted = [float(margin_mm)] * 3
    else:
        wanted = [float(floor_mm)] * 3
        if model_half_patch_mm is not None:
            order = reorientation.axis_order if reorientation is not None else (0, 1, 2)
            # The model sees the target array transposed (z, y, x): its axis j is target axis 2 - j,
            # which is stored axis order[2 - j].
            for j, half in enumerate(model_half_patch_mm):
                axis = order[2 - j]
                wanted[axis] = max(wanted[axis], float(half))
    x, y, z = (math.ceil(w / float(s) - 1e-9) for w, s in zip(wanted, spacing_xyz, strict=True))
    return (x, y, z)


def class_box(labels: np.ndarray, value: int, margin: Sequence[int]) -> Box | None:
    """Bounding box of the voxels equal to ``value``, grown by ``margin`` voxels per axis and
    clipped to the array; ``None`` when ``value`` is absent. Pure."""
    mask = labels == value
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - int(margin[axis]), 0),
                         min(int(hits[-1]) + int(margin[axis]) + 1, labels.shape[axis])))
    return (box[0], box[1], box[2])


@dataclass(frozen=True)
class CascadeOptions:
    """Settings of a multi-task run."""

    cascade: bool = True
    #: ``--cascade-margin``: margin in mm on every side, instead of the half-patch default.
    margin_mm: float | None = None
    floor_mm: float = DEFAULT_MARGIN_FLOOR_MM
    #: Tasks whose maps are repaired (:mod:`autoorgan.postprocess`) before the merge.
    repair: frozenset[str] = frozenset()


def run_order(tasks: Sequence[str]) -> list[str]:
    """Tasks in the order they run: the skeleton first, the others in the given order."""
    return [*(t for t in tasks if t == SKELETON), *(t for t in tasks if t != SKELETON)]


@dataclass
class MultiTaskSegmenter:
    """Segments a case with several task models (a :class:`autoorgan.batch.job.CaseSegmenter`).

    Each model is loaded by ``load`` at most once per run, and only when a case needs it.
    """

    name: str
    models: Sequence[TaskModel]
    table: WholeBodyTable
    pool: ModelPool
    nnunet_version: str
    #: The skeleton task of the registry (requested or not): which task subdivides which class.
    skeleton: Task
    options: CascadeOptions = field(default_factory=CascadeOptions)

    def __post_init__(self) -> None:
        self._by_name = {m.task.name: m for m in self.models}

    @property
    def dataset_id(self) -> int | None:
        """A merged map belongs to no single dataset: its sidecars record ``None``."""
        return None

    def _boxes_from(self) -> dict[str, int]:
        """Subdivision task → its coarse value in the skeleton's own labels (for requested tasks)."""
        skeleton = self._by_name.get(SKELETON)
        if skeleton is None or not self.options.cascade:
            return {}
        return {task: value for value, task in skeleton.task.subdivisions.items() if task in self._by_name}

    def coarse_values(self) -> dict[str, int]:
        """Subdivision task → whole-body value of its coarse class (for :func:`merge_task_maps`);
        subdivision models outrank organs whether or not the skeleton runs."""
        return {task: self.table.value_of(self.skeleton.labels[value])
                for value, task in self.skeleton.subdivisions.items() if task in self._by_name}

    def __call__(self, case: Case, volume: Volume, out: CaseOutputs, listener: ProgressListener) -> Segmentation:
        case_id = case.case_id
        crop_from = self._boxes_from()
        task_maps: dict[str, np.ndarray] = {}
        runs: dict[str, dict[str, Any]] = {}
        repairs: dict[str, Any] = {}
        checks: dict[str, Any] = {}
        for name in run_order([m.task.name for m in self.models]):
            model = self._by_name[name]
            task = model.task
            start = time.perf_counter()
            box: Box | None = None
            if name in crop_from:
                coarse = crop_from[name]
                reorientation = plan_reorientation(volume.geometry.direction_matrix, model.orientation.codes)
                margin = margin_voxels(volume.geometry.spacing, model_half_patch_mm=model.half_patch_mm,
                                       reorientation=reorientation, floor_mm=self.options.floor_mm,
                                       margin_mm=self.options.margin_mm)
                box = class_box(task_maps[SKELETON], coarse, margin)
                if box is None:
                    coarse_name = self._by_name[SKELETON].task.labels[coarse]
                    runs[name] = {"status": "skipped", "reason": f"no {coarse_name} in the skeleton map"}
                    log.info("%s: %s skipped (no %s in the skeleton map)", case_id, name, coarse_name)
                    continue
            predictor = self.pool.get(model, case_id, listener, f"loading model {name}")
            listener.case_stage(case_id, f"predicting {name}")
            labels = segment_volume(volume, task, predictor, roi=box, progress=case_progress(listener, case_id),
                                    orientation=model.orientation.codes)
            raw = labels
            if name in self.options.repair:
                listener.case_stage(case_id, f"repairing {name}")
                vertebrae = self._by_name.get("vertebrae")
                result = repair_task_map(task, labels, volume.geometry, ct=volume.array,
                                         vertebrae=task_maps.get("vertebrae"),
                                         vertebra_names=vertebrae.task.labels if vertebrae is not None else None)
                labels = result.labels
                repairs[name] = result.report()
                warn_on_repair_flags(case_id, result, name)
            report = anatomy_checks(task, raw, labels, volume)
            checks[name] = report.record()
            warn_on_checks(case_id, report, model)
            task_maps[name] = labels
            runs[name] = {"status": "ran", "seconds": round(time.perf_counter() - start, 3)}
            if box is not None:
                runs[name]["box"] = [[s.start, s.stop] for s in box]
                runs[name]["box_fraction"] = round(float(np.prod([s.stop - s.start for s in box]))
                                                   / float(volume.array.size), 4)
            tiles = predictor.last_tiles
            if tiles:
                runs[name]["tiles"] = {"ran": int(tiles[0]), "whole_image": int(tiles[1])}
        unified = {name: to_whole_body(labels, self._lut(name)) for name, labels in task_maps.items()}
        if unified:
            merged = merge_task_maps(unified, coarse_value=self.coarse_values())
        else:
            merged = np.zeros(volume.array.shape, dtype=np.uint8)
        sidecar = self._sidecar(case, volume, out, runs)
        sidecar["checks"] = {"passed": all(c["passed"] for c in checks.values()), "tasks": checks}
        if repairs:
            sidecar["postprocess"] = repairs
        return Segmentation(labels=np.ascontiguousarray(merged.astype(label_dtype(max(self.table.labels)), copy=False)),
                            sidecar=sidecar, artifacts={"task_maps": task_maps})

    def _lut(self, name: str) -> np.ndarray:
        lut = self._by_name[name].lut
        if lut is None:
            raise ValueError(f"task {name} has no whole-body look-up table")
        return lut

    def _sidecar(self, case: Case, volume: Volume, out: CaseOutputs, runs: dict[str, Any]) -> dict[str, Any]:
        names = [m.task.name for m in self.models]
        orientation = plan_reorientation(volume.geometry.direction_matrix, None).source_codes
        models = {}
        for m in self.models:
            models[m.task.name] = {
                "dataset_id": m.task.dataset_id,
                "trainer": self.pool.trainer_name(m),
                "plans": m.task.plans, "configuration": m.task.configuration, "fold": m.task.fold,
                "model_orientation": m.orientation.label, "orientation_source": m.orientation.source.value,
            }
            if m.location.stands_in_for is not None:
                models[m.task.name]["model_folder_note"] = m.location.note()
            loaded = self.pool.loaded.get(m.task.name)
            if loaded is not None:  # the precision it ran in, and why (a model never loaded ran in none)
                models[m.task.name]["precision"] = {"precision": loaded.precision, "reason": loaded.precision_reason}
        return {
            "task": self.name,
            "tasks": names,
            "dataset_id": None,
            "models": models,
            "labels": {str(v): n for v, n in self.table.labels_of_tasks(names).items()},
            "label_map": out.label_map.name,
            "input": case.name,
            "input_orientation": orientation,
            "cascade": {
                "enabled": bool(self._boxes_from()),
                "margin_mm": self.options.margin_mm,
                "margin_floor_mm": self.options.floor_mm,
                "runs": runs,
                "skipped": sorted(n for n, r in runs.items() if r["status"] == "skipped"),
            },
            "versions": {"autoorgan": __version__, "nnunetv2": self.nnunet_version},
            **source_sidecar(case),
        }


class TaskMapsStep:
    """Writes each task's own map of a multi-task run as ``OUT/<case>/<task>.nii.gz``
    (``--keep-task-maps``), in the task's own label values, on the input's grid."""

    name = "writing task maps"

    def __init__(self, tasks: Mapping[str, Task], suffix: str = ".nii.gz"):
        self.tasks = dict(tasks)
        self.suffix = suffix

    def __call__(self, ctx: Any) -> None:
        from autoorgan.batch.outputs import prepare_case_folder
        from autoorgan.io.image import image_from_array
        from autoorgan.io.safe_paths import path_inside
        from autoorgan.io.writing import write_image

        prepare_case_folder(ctx.outputs.folder, ctx.case.case_id)
        written = {}
        for name, labels in ctx.artifacts.get("task_maps", {}).items():
            path = path_inside(ctx.outputs.folder, ctx.case.case_id, f"{name}{self.suffix}")
            write_image(image_from_array(labels, ctx.volume.geometry), path)
            written[name] = f"{ctx.case.case_id}/{path.name}"
        ctx.sidecar["task_maps"] = written
