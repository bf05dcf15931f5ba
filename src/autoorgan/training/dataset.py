"""Writing training data as an nnU-Net raw dataset, checked against a task's label table.

Images and labels are stored in the task's model orientation (the same permutation/flip that
``predict`` applies), so a model trained here sees its inputs at prediction time exactly as it
saw them in training, whatever orientation the user's files have.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoorgan.errors import InputError
from autoorgan.io.cases import Case, find_cases
from autoorgan.io.image import Geometry, Volume, image_from_array, read_volume
from autoorgan.io.orientation import (
    DEFAULT_ORIENTATION,
    orientation_label,
    parse_orientation,
    plan_reorientation,
    reoriented_geometry,
)
from autoorgan.io.writing import write_json
from autoorgan.registry.tasks import Task

log = logging.getLogger(__name__)

_GEOMETRY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TrainingCase:
    """One image with its label map."""

    case_id: str
    image: Path
    label: Path


def dataset_folder_name(task: Task) -> str:
    """``Dataset{ID:03d}_{Name}`` for a task (name in CamelCase-free, filesystem-safe form)."""
    name = re.sub(r"[^A-Za-z0-9]+", "", task.name.title()) or "Task"
    return f"Dataset{task.dataset_id:03d}_{name}"


def is_raw_dataset(data_dir: Path) -> bool:
    """Whether ``data_dir`` is an nnU-Net raw dataset (``dataset.json``, ``imagesTr/``, ``labelsTr/``)."""
    return ((data_dir / "dataset.json").is_file() and (data_dir / "imagesTr").is_dir()
            and (data_dir / "labelsTr").is_dir())


def _raw_dataset_images(data_dir: Path) -> dict[str, Path]:
    """Case id → image of an nnU-Net raw dataset (single channel: ``<case>_0000<ending>``)."""
    try:
        meta = read_json(data_dir / "dataset.json")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {data_dir / 'dataset.json'}: {exc}") from None
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if len(channels) != 1:
        raise InputError(f"{data_dir / 'dataset.json'}: {len(channels)} input channels; autoorgan trains "
                         "single-channel CT models only")
    images: dict[str, Path] = {}
    for case in find_cases(data_dir / "imagesTr"):
        _image_files([case])
        if not case.case_id.endswith("_0000"):
            raise InputError(f"{case.path}: nnU-Net image names end in _0000 (channel 0) before the file ending")
        images[case.case_id.removesuffix("_0000")] = case.path
    return images


def _image_files(cases: Iterable[Case]) -> dict[str, Path]:
    """Case id → file of ``cases``; :class:`InputError` naming the folder of a DICOM series.

    Training reads image files (NIfTI, NRRD, MHA): a DICOM series (whose case id comes from its
    folder and series, not a file name to pair with a label) is refused before anything is written.
    """
    files: dict[str, Path] = {}
    for case in cases:
        if case.problem is not None:  # a FIFO, a folder named like an image...: never opened
            raise InputError(f"training data: {case.problem}")
        if case.kind == "dicom":
            raise InputError(f"{case.path}: holds a DICOM series; training reads image files only "
                             "(NIfTI, NRRD, MHA); convert the series to one first (e.g. with dcm2niix)")
        files[case.case_id] = case.path
    return files


def find_training_cases(data_dir: Path) -> list[TrainingCase]:
    """Pairs of ``images/<case>.*`` and ``labels/<case>.*`` in ``data_dir``, or the cases of an
    nnU-Net raw dataset (``imagesTr/<case>_0000.*``, ``labelsTr/<case>.*``, ``dataset.json``).

    Every image needs a label with the same case id and vice versa; otherwise an
    :class:`InputError` lists what is unmatched.
    """
    if not data_dir.is_dir():
        raise InputError(f"training data {data_dir} is not a folder")
    if is_raw_dataset(data_dir):
        images = _raw_dataset_images(data_dir)
        labels = _image_files(find_cases(data_dir / "labelsTr"))
    else:
        images_dir, labels_dir = data_dir / "images", data_dir / "labels"
        if not images_dir.is_dir() or not labels_dir.is_dir():
            raise InputError(f"training data {data_dir} must hold the folders images/ and labels/ "
                             "(or be an nnU-Net raw dataset with imagesTr/, labelsTr/ and dataset.json)")
        images = _image_files(find_cases(images_dir))
        labels = _image_files(find_cases(labels_dir))
    unmatched = sorted(set(images) ^ set(labels))
    if unmatched:
        raise InputError(f"training data {data_dir}: no matching image/label for case(s) {', '.join(unmatched[:10])}")
    return [TrainingCase(cid, images[cid], labels[cid]) for cid in sorted(images)]


def _same_grid(a: Geometry, b: Geometry) -> bool:
    return (a.size == b.size
            and np.allclose(a.spacing, b.spacing, rtol=_GEOMETRY_TOLERANCE, atol=_GEOMETRY_TOLERANCE)
            and np.allclose(a.origin, b.origin, atol=_GEOMETRY_TOLERANCE * 10)
            and np.allclose(a.direction, b.direction, atol=_GEOMETRY_TOLERANCE))


def check_label_map(label: Volume, image: Volume, task: Task, label_name: str) -> None:
    """:class:`InputError` naming ``label_name`` if its values or grid do not fit."""
    if not _same_grid(label.geometry, image.geometry):
        raise InputError(f"{label_name}: label grid {label.geometry.size} / spacing "
                         f"{tuple(round(s, 4) for s in label.geometry.spacing)} differs from its image's "
                         f"{image.geometry.size} / {tuple(round(s, 4) for s in image.geometry.spacing)}")
    values = np.unique(label.array)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(f"{label_name}: label map holds non-integer values")
    unknown = sorted(int(v) for v in values if int(v) != 0 and int(v) not in task.labels)
    if unknown:
        raise InputError(f"{label_name}: values {unknown[:10]} are not in the label table of task "
                         f"'{task.name}' (1..{task.max_label})")


def training_orientation(task: Task) -> str | None:
    """The orientation a task's training arrays are stored in: the task table's (``native``: as the
    files store them, ``None``), else :data:`~autoorgan.io.orientation.DEFAULT_ORIENTATION`. It is
    recorded in the model's ``dataset.json``, where ``predict`` finds it."""
    return parse_orientation(task.orientation) if task.orientation is not None else DEFAULT_ORIENTATION


def _oriented(volume: Volume, task: Task) -> sitk.Image:
    geo = volume.geometry
    plan = plan_reorientation(geo.direction_matrix, training_orientation(task))
    size, spacing, origin, direction = reoriented_geometry(plan, geo.size, geo.spacing, geo.origin,
                                                           geo.direction_matrix)
    target = Geometry(size=size, spacing=spacing, origin=origin, direction=tuple(direction.ravel()))
    return image_from_array(np.ascontiguousarray(plan.to_target(volume.array)), target)


def write_raw_dataset(task: Task, cases: Iterable[TrainingCase], raw_dir: Path) -> Path:
    """Check every case and write ``raw_dir/Dataset{ID}_{Name}`` with ``dataset.json``.

    All cases are checked before the dataset folder is replaced, so a bad label file leaves no
    half-written dataset. Returns the dataset folder.
    """
    cases = list(cases)
    if not cases:
        raise InputError("no training cases")
    staged: list[tuple[str, sitk.Image, sitk.Image]] = []
    for case in cases:
        image = read_volume(case.image)
        label = read_volume(case.label)
        check_label_map(label, image, task, case.label.name)
        label.array = label.array.astype(np.uint8 if task.max_label < 256 else np.uint16)
        staged.append((case.case_id, _oriented(image, task), _oriented(label, task)))
    folder = raw_dir / dataset_folder_name(task)
    replaced = list(raw_dir.glob(f"Dataset{task.dataset_id:03d}_*"))
    for existing in replaced:
        if any(case.image.resolve().is_relative_to(existing.resolve()) for case in cases):
            raise InputError(f"the training data lie inside {existing}, which training would replace; "
                             "copy them elsewhere or use another --work-dir")
    for existing in replaced:
        shutil.rmtree(existing)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case_id, image_itk, label_itk in staged:
        sitk.WriteImage(image_itk, str(folder / "imagesTr" / f"{case_id}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(label_itk, str(folder / "labelsTr" / f"{case_id}.nii.gz"), useCompression=True)
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: value for value, name in task.labels.items()}},
        "numTraining": len(staged),
        "file_ending": ".nii.gz",
        "autoorgan": {"task": task.name, "orientation": orientation_label(training_orientation(task))},
    }
    write_json(dataset_json, folder / "dataset.json")
    log.info("wrote %d training case(s) to %s", len(staged), folder)
    return folder


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
