"""Shared fixtures: the real test data folder, synthetic phantoms, and a real nnU-Net model
trained once per test session with autoorgan's own training path."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import SimpleITK as sitk

from autoorgan.models import find_model
from autoorgan.phantom import reorient
from fixture_model import (
    FIXTURE_TASK,
    TINY_PLANS,
    TRAIN_ORIENTATIONS,
    TRAIN_SEEDS,
    pelvis_phantom,
    train_schedule_options,
)
from multitask_fixtures import whole_body_models  # noqa: F401 - session fixture of the multi-task tests

ROOT = Path(__file__).resolve().parents[1]

def real_data_dir() -> Path:
    """The real CT folder: ``$AUTOORGAN_TEST_DATA``, default ``../shared/data/real``."""
    return Path(os.environ.get("AUTOORGAN_TEST_DATA", ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    folder = real_data_dir()
    if not (folder / "PROVENANCE.md").is_file():
        pytest.skip(f"real CT test data not found at {folder} (set AUTOORGAN_TEST_DATA)")
    return folder


@pytest.fixture(autouse=True)
def _no_ambient_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their models folder explicitly; a user's environment must not leak in."""
    for var in ("AUTOORGAN_MODELS", "nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed", "AUTOORGAN_WORK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A models folder holding a real nnU-Net model of the fixture task, trained by ``autoorgan train``."""
    from typer.testing import CliRunner

    from autoorgan.cli import app
    from autoorgan.tasks import load_registry

    # For quick local iterations a developer may keep the trained model between sessions
    # (AUTOORGAN_TEST_MODEL_CACHE=folder); CI never sets it and trains afresh.
    cache = os.environ.get("AUTOORGAN_TEST_MODEL_CACHE")
    base = Path(cache) if cache else tmp_path_factory.mktemp("fixture_model")
    task = load_registry().get_task(FIXTURE_TASK)
    if cache and find_model(task, base / "models") is not None:
        yield base / "models"
        return
    shutil.rmtree(base, ignore_errors=True)
    data = base / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i, (seed, codes) in enumerate(zip(TRAIN_SEEDS, TRAIN_ORIENTATIONS, strict=True)):
        phantom = pelvis_phantom(seed)
        sitk.WriteImage(reorient(phantom.ct, codes), str(data / "images" / f"pelvis_{i}.nii.gz"))
        sitk.WriteImage(reorient(phantom.labels_for(task.labels), codes), str(data / "labels" / f"pelvis_{i}.nii.gz"))
    models = base / "models"
    plans_override = base / "tiny_plans.json"
    plans_override.write_text(json.dumps(TINY_PLANS), encoding="utf-8")
    result = CliRunner().invoke(app, [
        "train", "--task", FIXTURE_TASK, "--data", str(data), "--models-dir", str(models),
        "--work-dir", str(base / "work"), "--device", "cpu", *train_schedule_options(),
        "--plans-override", str(plans_override), "--augmentation-workers", "0", "--quiet",
    ])
    if result.exit_code != 0:
        pytest.fail(f"autoorgan train failed (exit {result.exit_code}): {result.output}{result.exception!r}")
    yield models
