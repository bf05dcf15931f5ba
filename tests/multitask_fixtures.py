"""Session fixtures of the multi-task tests: real nnU-Net models of the ``skeleton``, ``hip`` and
``lower_limb`` tasks, trained through ``autoorgan train`` on lower-body crops of synthetic
phantoms continued upwards by soft tissue (the kind of image the tests predict), in one models
folder.

The session fixture installs the models from the checked-in zips of ``tests/data/models``
(``autoorgan install-weights``, after their SHA-256 is checked); :func:`train_whole_body_models`
is how ``tests/build_fixture_models.py`` trains them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.demo.phantom import Phantom, make_phantom
from autoorgan.io.image import Geometry, image_from_array
from autoorgan.models.store import find_model
from autoorgan.registry.tasks import load_registry
from fixture_model import FIXTURE_ARCHIVES, TINY_PLANS, FixtureModelError, install_fixture_archives

#: Tasks trained here: the skeleton and two subdivision models.
WHOLE_BODY_TASKS = ("skeleton", "hip", "lower_limb")
#: Structures around which the "lower body" crop is taken.
LOWER_BODY = ["hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "vertebrae_L2"]
TRAINING_SEEDS = tuple(range(300, 306))
#: Soft tissue added above the lower body (mm): the part of the test images without bone, which
#: makes the cascade's boxes real crops.
SOFT_TISSUE_ABOVE_MM = 150.0
#: Short schedules. The skeleton model decides the cascade's boxes and skips; the subdivision
#: models are compared with and without the cascade over the whole image, so what they label far
#: from their structures counts. After 25 epochs the skeleton still named soft tissue "hip", the
#: hip model named the femurs "hip" and the lower_limb model had not learned femur_right; after 100
#: epochs the hip model still named the femurs' lower ends "hip".
SCHEDULE_BY_TASK = {
    "skeleton": ("--epochs", "100", "--iterations-per-epoch", "25", "--initial-lr", "0.1"),
    "hip": ("--epochs", "150", "--iterations-per-epoch", "25", "--initial-lr", "0.1"),
    "lower_limb": ("--epochs", "100", "--iterations-per-epoch", "25", "--initial-lr", "0.1"),
}


def lower_body_phantom(seed: int) -> Phantom:
    """The lower body (pelvis, femurs, lumbar spine) of a whole-body phantom, 4×4×5 mm voxels."""
    return make_phantom(seed, spacing=(4.0, 4.0, 5.0)).crop_to(LOWER_BODY, 12.0)


def with_soft_tissue_above(image: sitk.Image, mm: float, seed: int, *, labels: bool = False) -> sitk.Image:
    """``image`` (RAS storage, z growing towards the head) continued ``mm`` upwards.

    A CT continues with its top slice with the bone taken out, plus noise; a label map (``labels``)
    with background.
    """
    array = sitk.GetArrayFromImage(image)  # z, y, x
    extra = int(np.ceil(mm / image.GetSpacing()[2]))
    if labels:
        above = np.zeros((extra, *array.shape[1:]), dtype=array.dtype)
    else:
        top = np.where(array[-1] > 100, 40, array[-1]).astype(np.float32)
        noise = np.random.default_rng(seed).normal(0.0, 12.0, size=(extra, *top.shape))
        above = np.round(top[None] + noise).astype(array.dtype)
    taller = sitk.GetImageFromArray(np.concatenate([array, above]))
    taller.SetSpacing(image.GetSpacing())
    taller.SetOrigin(image.GetOrigin())
    taller.SetDirection(image.GetDirection())
    return taller


def without(phantom: Phantom, names: list[str], hu: float = 40.0) -> Phantom:
    """The phantom with the named structures painted over by soft tissue (and left out of the truth)."""
    array = sitk.GetArrayFromImage(phantom.ct).transpose(2, 1, 0).copy()
    for name in names:
        array[phantom.structures[name]] = hu
    ct = image_from_array(array, Geometry.of(phantom.ct))
    return Phantom(ct=ct, structures={k: v for k, v in phantom.structures.items() if k not in names})


def train_whole_body_models(base: Path) -> Path:
    """Train the models of :data:`WHOLE_BODY_TASKS` into ``base/models`` (skipping those present)."""
    from typer.testing import CliRunner

    from autoorgan.cli.app import app

    registry = load_registry()
    models = base / "models"
    plans_override = base / "tiny_plans.json"
    base.mkdir(parents=True, exist_ok=True)
    plans_override.write_text(json.dumps(TINY_PLANS), encoding="utf-8")
    for name in WHOLE_BODY_TASKS:
        task = registry.get_task(name)
        if find_model(task, models) is not None:
            continue
        data = base / f"data_{name}"
        shutil.rmtree(data, ignore_errors=True)
        (data / "images").mkdir(parents=True)
        (data / "labels").mkdir()
        for i, seed in enumerate(TRAINING_SEEDS):
            phantom = lower_body_phantom(seed)
            ct = with_soft_tissue_above(phantom.ct, SOFT_TISSUE_ABOVE_MM, seed)
            truth = with_soft_tissue_above(phantom.labels_for(task.labels), SOFT_TISSUE_ABOVE_MM, seed, labels=True)
            sitk.WriteImage(ct, str(data / "images" / f"lower_{i}.nii.gz"))
            sitk.WriteImage(truth, str(data / "labels" / f"lower_{i}.nii.gz"))
        result = CliRunner().invoke(app, [
            "train", "--task", name, "--data", str(data), "--models-dir", str(models),
            "--work-dir", str(base / "work"), "--device", "cpu", *SCHEDULE_BY_TASK[name],
            "--plans-override", str(plans_override),
            "--augmentation-workers", "0", "--seed", "0", "--quiet",
        ])
        if result.exit_code != 0:
            raise RuntimeError(f"autoorgan train --task {name} failed (exit {result.exit_code}): "
                               f"{result.output}{result.exception!r}")
    return models


@pytest.fixture(scope="session")
def whole_body_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A models folder with real skeleton, hip and lower_limb models (trained by
    :func:`train_whole_body_models`, installed from their checked-in zips)."""
    models = tmp_path_factory.mktemp("whole_body_models") / "models"
    try:
        install_fixture_archives(FIXTURE_ARCHIVES["whole_body_models"], models)
    except FixtureModelError as exc:
        pytest.fail(str(exc))
    yield models


__all__ = ["LOWER_BODY", "SOFT_TISSUE_ABOVE_MM", "lower_body_phantom", "whole_body_models", "with_soft_tissue_above",
           "without"]
