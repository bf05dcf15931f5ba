"""Repair of label map files made earlier or by other tools (``autoorgan repair``), as a batch job.

Inputs are a label map file or a folder of them; companion maps (vertebrae, skeleton, CT) are
files, or folders holding files with the same case names. Each label map is one case of a
:class:`~autoorgan.batch.job.BatchJob`, the same machinery as ``predict``: the repair
(:func:`autoorgan.postprocess.repair.repair_labels`, pure) is the job's segmenter, outputs are
written atomically with a sidecar listing what each step changed, a map that fails gets a failure
record (``OUT/<case>.error.json``) while the others go on, and ``--continue`` skips the cases whose
outputs are complete. Each output keeps the input's grid and pixel type.

For a single input file the output may be a file (``-o fixed.nii.gz``): the job's folder is then
the file's folder and the case id its name without the ending (the sidecar is ``fixed.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoorgan import __version__
from autoorgan.batch.job import BatchJob, BatchResult, ProgressListener, Segmentation
from autoorgan.batch.outputs import CaseOutputs, done_sidecar
from autoorgan.errors import CaseError, InputError
from autoorgan.io.cases import Case, case_id_of, image_suffix
from autoorgan.io.image import Geometry, Volume, read_volume
from autoorgan.postprocess.repair import STEPS, Companions, RepairOptions, repair_labels
from autoorgan.registry.tasks import Task
from autoorgan.steps.repair import warn_on_repair_flags

log = logging.getLogger(__name__)

#: ``--task all``: merged maps, each with the label table of its own sidecar.
ALL = "all"
#: The companion maps, in the order they are looked up and recorded.
COMPANIONS = ("vertebrae", "ct", "skeleton")


@dataclass(frozen=True)
class RepairedCase:
    """How the repair of one label map went (``status`` as the batch's: done, skipped or failed)."""

    case_id: str
    output: Path | None
    changed_voxels: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    status: str = "done"

    @property
    def ok(self) -> bool:
        return self.error is None


def label_files(path: Path, what: str = "input") -> dict[str, Path]:
    """The label map files of ``path`` by case id: the file itself, or the image files directly
    inside the folder (hidden files ignored). :class:`InputError` if there are none."""
    if path.is_file():
        return {case_id_of(path): path}
    if not path.is_dir():
        raise InputError(f"{what} {path} does not exist")
    files: dict[str, Path] = {}
    for item in sorted(path.iterdir()):
        if item.is_file() and not item.name.startswith(".") and image_suffix(item):
            case_id = case_id_of(item)
            if case_id in files:
                raise InputError(f"two {what} files for case '{case_id}': {files[case_id].name} and {item.name}")
            files[case_id] = item
    if not files:
        raise InputError(f"no label map files in {path}")
    return files


def sidecar_labels(path: Path) -> dict[int, str] | None:
    """The label table of the sidecar beside a label map (``<case>.json``), or ``None``."""
    sidecar = path.with_name(case_id_of(path) + ".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        return {int(k): str(v) for k, v in data["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_labels(array: np.ndarray, names: Mapping[int, str], name: str) -> None:
    """:class:`CaseError` unless ``array`` holds whole values of the label table (or 0)."""
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise CaseError(f"{name}: not a label map (non-integer values)")
    unknown = sorted(set(np.unique(array).astype(np.int64).tolist()) - set(names) - {0})
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:5])
        raise CaseError(f"{name}: label value(s) {shown} are not in the label table")


def same_grid(a: Geometry, b: Geometry) -> bool:
    """Whether two grids are the same (size exact; spacing, origin, direction within rounding)."""
    return (a.size == b.size and np.allclose(a.spacing, b.spacing, atol=1e-4)
            and np.allclose(a.origin, b.origin, atol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-4))


@dataclass(frozen=True)
class RepairSegmenter:
    """The "segmenter" of a repair job: repairs the label map the job read.

    ``task`` gives the label table; ``None`` takes each map's table from its own sidecar
    (``--task all``). ``companions`` holds, per kind (:data:`COMPANIONS`), a file (single input)
    or a folder with a file of each case's name.
    """

    task: Task | None
    options: RepairOptions = field(default_factory=RepairOptions)
    companions: Mapping[str, Path] = field(default_factory=dict)
    vertebra_names: Mapping[int, str] | None = None

    @property
    def dataset_id(self) -> int | None:
        """No model makes a repaired map: finished sidecars record no dataset."""
        return None

    def __call__(self, case: Case, volume: Volume, out: CaseOutputs, listener: ProgressListener) -> Segmentation:
        source_id = case_id_of(case.path)  # the input's own name (the case id may be the output's)
        if self.task is None:
            names = sidecar_labels(case.path)
            if names is None:
                raise CaseError(f"{case.name}: a merged map needs its sidecar {source_id}.json with a 'labels' table")
        else:
            names = dict(self.task.labels)
        check_labels(volume.array, names, case.name)
        grid = volume.geometry
        companions = Companions()
        used: dict[str, str] = {}
        for what in COMPANIONS:
            found = self._companion(what, source_id)
            if found is None:
                continue
            listener.case_stage(case.case_id, f"reading {what}")
            used[what] = found.name
            array = _read_on_grid(found, grid, what)
            if what == "vertebrae":
                companions.vertebrae = array.astype(np.int64, copy=False)
                companions.vertebra_names = sidecar_labels(found) or self.vertebra_names
            elif what == "ct":
                companions.ct = array
            else:
                companions.skeleton = array
        listener.case_stage(case.case_id, "repairing")
        labels = volume.array if np.issubdtype(volume.array.dtype, np.integer) \
            else volume.array.astype(np.int64, copy=False)
        result = repair_labels(labels, grid, names, companions=companions, options=self.options)
        log.info("%s: %d voxel(s) changed", case.case_id, result.changed_voxels)
        warn_on_repair_flags(case.case_id, result)
        sidecar = {
            "task": self.task.name if self.task is not None else ALL,
            "labels": {str(v): n for v, n in names.items()},
            "label_map": out.label_map.name,
            "input": case.name,
            "companions": used,
            "postprocess": result.report(),
            "versions": {"autoorgan": __version__, "simpleitk": sitk.Version_VersionString()},
        }
        return Segmentation(labels=result.labels.astype(volume.array.dtype, copy=False), sidecar=sidecar)

    def _companion(self, what: str, source_id: str) -> Path | None:
        source = self.companions.get(what)
        if source is None or source.is_file():
            return source
        found = [p for p in sorted(source.iterdir()) if p.is_file() and image_suffix(p) and case_id_of(p) == source_id]
        if not found:
            raise CaseError(f"no {what} file for this case in {source}")
        return found[0]


def _read_on_grid(path: Path, grid: Geometry, what: str) -> np.ndarray:
    volume = read_volume(path)
    if not same_grid(volume.geometry, grid):
        raise CaseError(f"the {what} map {path.name} is not on the label map's grid "
                        f"(size {volume.geometry.size} vs {grid.size}, or spacing/origin/direction differ)")
    return volume.array


def _check_companion(path: Path | None, what: str, single: bool) -> None:
    if path is None:
        return
    if path.is_file():
        if not single:
            raise InputError(f"--{what} must be a folder when the input is a folder")
    elif not path.is_dir():
        raise InputError(f"--{what} {path} does not exist")


def plan_repair(*, task: Task | None, input_path: Path, output: Path, companions: Mapping[str, Path | None],
                vertebra_names: Mapping[int, str] | None = None, steps: Sequence[str] | None = None,
                resume: bool = False, skip_failed: bool = False,
                listener: ProgressListener | None = None) -> BatchJob:
    """The batch job repairing every label map of ``input_path`` (see :func:`autoorgan.api.repair`);
    ``task=None`` takes each map's label table from its sidecar. Problems with the whole run (no
    input, a companion file for a folder, an unknown step) are :class:`InputError`\\ s."""
    files = label_files(input_path)
    single = input_path.is_file()
    to_file = single and image_suffix(output) is not None and not output.is_dir()
    if not single and image_suffix(output) and not output.is_dir():
        raise InputError(f"the input is a folder, so the output must be a folder, not {output.name}")
    unknown = sorted(set(steps or ()) - set(STEPS))
    if unknown:
        raise InputError(f"unknown repair step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    given = {what: path for what, path in companions.items() if path is not None}
    unknown = sorted(set(given) - set(COMPANIONS))
    if unknown:
        raise InputError(f"unknown companion map(s) {', '.join(unknown)}; choose from {', '.join(COMPANIONS)}")
    for what, path in given.items():
        _check_companion(path, what, single)
    options = RepairOptions(steps=tuple(steps) if steps else STEPS)
    if to_file:
        suffix = image_suffix(output) or ".nii.gz"
        output_dir, label_suffix = output.parent, output.name[len(output.name) - len(suffix):]
        cases = [Case(case_id_of(output), path) for path in files.values()]
    else:
        output_dir, label_suffix = output, ".nii.gz"
        cases = [Case(case_id, path) for case_id, path in files.items()]
    job_task = task if task is not None else Task(name=ALL, dataset_id=0, labels=MappingProxyType({}),
                                                  description="merged maps (labels from each map's sidecar)",
                                                  orientation=None)
    # --continue: a case is complete only if it was repaired the same way (steps, settings, companions).
    made_with = {"repair": {**dataclasses.asdict(options), "companions": sorted(given)}}
    segmenter = RepairSegmenter(task=task, options=options, companions=given, vertebra_names=vertebra_names)
    return BatchJob(task=job_task, cases=cases, output_dir=output_dir, segmenter=segmenter, resume=resume,
                    listener=listener or ProgressListener(), skip_failed=skip_failed, label_suffix=label_suffix,
                    made_with=made_with)


def repaired_cases(job: BatchJob, result: BatchResult) -> list[RepairedCase]:
    """One :class:`RepairedCase` per case of a finished repair job, its changes read from the sidecar."""
    cases = []
    for r in result.results:
        if r.status == "failed":
            cases.append(RepairedCase(r.case_id, None, error=r.error or "unknown error", status=r.status))
            continue
        data = done_sidecar(CaseOutputs(job.output_dir, r.case_id, job.label_suffix)) or {}
        raw_report = data.get("postprocess")
        report: dict[str, Any] = raw_report if isinstance(raw_report, dict) else {}
        raw_steps = report.get("steps")
        steps: list[dict[str, Any]] = raw_steps if isinstance(raw_steps, list) else []
        cases.append(RepairedCase(r.case_id, r.output, int(report.get("changed_voxels", 0) or 0), list(steps),
                                  status=r.status))
    return cases


def repair_files(*, task: Task | None, input_path: Path, output: Path,
                 companions: Mapping[str, Path | None] | None = None,
                 vertebra_names: Mapping[int, str] | None = None, steps: Sequence[str] | None = None,
                 resume: bool = False, skip_failed: bool = False,
                 listener: ProgressListener | None = None) -> list[RepairedCase]:
    """Repair every label map of ``input_path`` (see :func:`autoorgan.api.repair`)."""
    job = plan_repair(task=task, input_path=input_path, output=output, companions=companions or {},
                      vertebra_names=vertebra_names, steps=steps, resume=resume, skip_failed=skip_failed,
                      listener=listener)
    return repaired_cases(job, job.run())


__all__ = ["ALL", "COMPANIONS", "RepairSegmenter", "RepairedCase", "check_labels", "label_files", "plan_repair",
           "repair_files", "repaired_cases", "same_grid", "sidecar_labels"]
