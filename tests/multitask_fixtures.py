"""Session fixtures of the multi-task tests: real nnU-Net models of the ``skeleton`` and
``lower_limb`` tasks, trained through ``autoorgan train`` on lower-body crops of synthetic
phantoms, and a models folder that holds them together with the ``hip`` fixture model.

Like ``trained_models`` (conftest.py), the models are kept between local sessions when
``AUTOORGAN_TEST_MODEL_CACHE`` is set (in its ``whole_body/`` subfolder); CI trains afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import SimpleITK as sitk

from autoorgan.io.image import Geometry, image_from_array
from autoorgan.models import find_model
from autoorgan.phantom import Phantom, make_phantom
from autoorgan.tasks import load_registry
from fixture_model import TINY_PLANS

#: Tasks trained here (the hip fixture model is the second subdivision model).
WHOLE_BODY_TASKS = ("skeleton", "lower_limb")
#: Structures around which the "lower body" crop is taken.
LOWER_BODY = ["hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "vertebrae_L2"]
TRAINING_SEEDS = tuple(range(300, 306))
#: A short schedule: the cascade tests compare the same models with and without the cascade.
SCHEDULE = ("--epochs", "25", "--iterations-per-epoch", "25", "--initial-lr", "0.1")


def lower_body_phantom(seed: int) -> Phantom:
    """The lower body (pelvis, femurs, lumbar spine) of a whole-body phantom, 4×4×5 mm voxels."""
    return make_phantom(seed, spacing=(4.0, 4.0, 5.0)).crop_to(LOWER_BODY, 12.0)


def without(phantom: Phantom, names: list[str], hu: float = 40.0) -> Phantom:
    """The phantom with the named structures painted over by soft tissue (and left out of the truth)."""
    array = sitk.GetArrayFromImage(phantom.ct).transpose(2, 1, 0).copy()
    for name in names:
        array[phantom.structures[name]] = hu
    ct = image_from_array(array, Geometry.of(phantom.ct))
    return Phantom(ct=ct, structures={k: v for k, v in phantom.structures.items() if k not in names})


def train_whole_body_models(base: Path) -> Path:
    """Train the skeleton and lower-limb models into ``base/models`` (skipping those present)."""
    from typer.testing import CliRunner

    from autoorgan.cli import app

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
            sitk.WriteImage(phantom.ct, str(data / "images" / f"lower_{i}.nii.gz"))
            sitk.WriteImage(phantom.labels_for(task.labels), str(data / "labels" / f"lower_{i}.nii.gz"))
        result = CliRunner().invoke(app, [
            "train", "--task", name, "--data", str(data), "--models-dir", str(models),
            "--work-dir", str(base / "work"), "--device", "cpu", *SCHEDULE, "--plans-override", str(plans_override),
            "--augmentation-workers", "0", "--seed", "0", "--quiet",
        ])
        if result.exit_code != 0:
            raise RuntimeError(f"autoorgan train --task {name} failed (exit {result.exit_code}): "
                               f"{result.output}{result.exception!r}")
    return models


def combine_models(target: Path, *folders: Path) -> Path:
    """A models folder of symbolic links to every ``Dataset*`` folder of ``folders``."""
    target.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for dataset in sorted(folder.glob("Dataset*_*")):
            link = target / dataset.name
            if not link.exists():
                link.symlink_to(dataset.resolve(), target_is_directory=True)
    return target


@pytest.fixture(scope="session")
def whole_body_models(trained_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A models folder with real skeleton, hip and lower_limb models."""
    cache = os.environ.get("AUTOORGAN_TEST_MODEL_CACHE")
    base = Path(cache) / "whole_body" if cache else tmp_path_factory.mktemp("whole_body_models")
    try:
        models = train_whole_body_models(base)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield combine_models(tmp_path_factory.mktemp("combined_models"), models, trained_models)


__all__ = ["LOWER_BODY", "lower_body_phantom", "whole_body_models", "without"]
