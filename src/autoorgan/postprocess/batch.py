"""Repair of label map files made earlier or by other tools (``autoorgan repair``).

Inputs are a label map file or a folder of them; companion maps (vertebrae, skeleton, CT) are
files, or folders holding files with the same case names. Each output keeps the input's grid
and pixel type and is written atomically, with a sidecar listing what each step changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoorgan import __version__
from autoorgan.errors import AutoOrganError, CaseError, InputError
from autoorgan.io.cases import case_id_of, image_suffix
from autoorgan.io.image import Geometry, Volume, image_from_array, read_volume
from autoorgan.io.writing import write_image, write_json
from autoorgan.postprocess.repair import STEPS, Companions, RepairOptions, repair_labels
from autoorgan.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepairedCase:
    """How the repair of one label map went."""

    case_id: str
    output: Path | None
    changed_voxels: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _label_files(path: Path, what: str) -> dict[str, Path]:
    if path.is_file():
        return {case_id_of(path): path}
    if not path.is_dir():
        raise InputError(f"{what} {path} does not exist")
    files = {}
    for item in sorted(path.iterdir()):
        if item.is_file() and not item.name.startswith(".") and image_suffix(item):
            case_id = case_id_of(item)
            if case_id in files:
                raise InputError(f"two {what} files for case '{case_id}': {files[case_id].name} and {item.name}")
            files[case_id] = item
    if not files:
        raise InputError(f"no label map files in {path}")
    return files


def _companion(path: Path | None, case_id: str, single: bool, what: str) -> Path | None:
    if path is None:
        return None
    if path.is_file():
        if not single:
            raise InputError(f"--{what} must be a folder when the input is a folder")
        return path
    if not path.is_dir():
        raise InputError(f"--{what} {path} does not exist")
    found = [p for p in path.iterdir() if p.is_file() and image_suffix(p) and case_id_of(p) == case_id]
    if not found:
        raise CaseError(f"{case_id}: no {what} file for this case in {path}")
    return found[0]


def _same_grid(a: Geometry, b: Geometry) -> bool:
    return (a.size == b.size and np.allclose(a.spacing, b.spacing, atol=1e-4)
            and np.allclose(a.origin, b.origin, atol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-4))


def _read_on_grid(path: Path, grid: Geometry, what: str) -> np.ndarray:
    volume = read_volume(path)
    if not _same_grid(volume.geometry, grid):
        raise CaseError(f"{path.name}: the {what} is not on the label map's grid "
                        f"(size {volume.geometry.size} vs {grid.size}, or spacing/origin/direction differ)")
    return volume.array


def _sidecar_labels(path: Path) -> dict[int, str] | None:
    sidecar = path.with_name(case_id_of(path) + ".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        return {int(k): str(v) for k, v in data["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _check_labels(volume: Volume, names: Mapping[int, str], path: Path) -> None:
    array = volume.array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise CaseError(f"{path.name}: not a label map (non-integer values)")
    unknown = sorted(set(np.unique(array).astype(np.int64).tolist()) - set(names) - {0})
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:5])
        raise CaseError(f"{path.name}: label value(s) {shown} are not in the label table")


def _output_path(output: Path, case_id: str, single: bool) -> Path:
    if single and image_suffix(output) and not output.is_dir():
        return output
    return output / f"{case_id}.nii.gz"


def repair_files(*, task: Task | None, labels_all: bool, input_path: Path, output: Path,
                 vertebrae: Path | None = None, vertebra_names: Mapping[int, str] | None = None,
                 ct: Path | None = None, skeleton: Path | None = None,
                 steps: Sequence[str] | None = None) -> list[RepairedCase]:
    """Repair every label map of ``input_path`` (see :func:`autoorgan.api.repair`)."""
    files = _label_files(input_path, "input")
    single = input_path.is_file()
    if not single and image_suffix(output) and not output.is_dir():
        raise InputError(f"the input is a folder, so the output must be a folder, not {output.name}")
    unknown = sorted(set(steps or ()) - set(STEPS))
    if unknown:
        raise InputError(f"unknown repair step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    options = RepairOptions(steps=tuple(steps) if steps else STEPS)
    results = []
    for case_id, path in files.items():
        try:
            results.append(_repair_one(case_id, path, task, labels_all, output, single, vertebrae, vertebra_names,
                                       ct, skeleton, options))
        except AutoOrganError as exc:
            if isinstance(exc, InputError) or not isinstance(exc, CaseError):
                raise
            log.error("%s", exc)
            results.append(RepairedCase(case_id, None, error=str(exc)))
    return results


def _repair_one(case_id: str, path: Path, task: Task | None, labels_all: bool, output: Path, single: bool,
                vertebrae: Path | None, vertebra_names: Mapping[int, str] | None, ct: Path | None,
                skeleton: Path | None, options: RepairOptions) -> RepairedCase:
    volume = read_volume(path)
    if labels_all or task is None:
        names = _sidecar_labels(path)
        if names is None:
            raise CaseError(f"{path.name}: a merged map needs its sidecar {case_id}.json with a 'labels' table")
    else:
        names = dict(task.labels)
    _check_labels(volume, names, path)
    grid = volume.geometry
    companions = Companions()
    paths: dict[str, str] = {}
    for what, source in (("vertebrae", vertebrae), ("ct", ct), ("skeleton", skeleton)):
        found = _companion(source, case_id, single, what)
        if found is None:
            continue
        paths[what] = found.name
        array = _read_on_grid(found, grid, what)
        if what == "vertebrae":
            companions.vertebrae = array.astype(np.int64, copy=False)
            companions.vertebra_names = _sidecar_labels(found) or vertebra_names
        elif what == "ct":
            companions.ct = array
        else:
            companions.skeleton = array
    labels = volume.array.astype(np.int64, copy=False) if not np.issubdtype(volume.array.dtype, np.integer) \
        else volume.array
    result = repair_labels(labels, grid, names, companions=companions, options=options)
    repaired = result.labels.astype(volume.array.dtype, copy=False)
    target = _output_path(output, case_id, single)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from autoorgan.errors import OutputError

        raise OutputError(f"cannot create output folder {target.parent}: {exc.strerror or exc}") from None
    write_image(image_from_array(repaired, grid), target)
    sidecar = {
        "task": task.name if task is not None and not labels_all else "all",
        "labels": {str(v): n for v, n in names.items()},
        "label_map": target.name,
        "input": path.name,
        "companions": paths,
        "postprocess": result.report(),
        "versions": {"autoorgan": __version__, "simpleitk": sitk.Version_VersionString()},
    }
    write_json(sidecar, target.with_name(case_id_of(target) + ".json"))
    log.info("%s: %d voxel(s) changed", case_id, result.changed_voxels)
    return RepairedCase(case_id, target, result.changed_voxels, result.steps)
