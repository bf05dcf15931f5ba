"""Checkpoints are loaded without running code from them, and exactly like nnU-Net's own loader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from autoorgan import engine
from autoorgan.cli.app import app
from autoorgan.models.store import require_model
from autoorgan.registry.tasks import load_registry
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e
runner = CliRunner()


class _Payload:
    """Unpickling this calls os.system: the kind of checkpoint that must never be loaded blindly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _copy_model_with_checkpoint(models: Path, target: Path, checkpoint: dict) -> Path:
    shutil.copytree(models, target)
    location = require_model(load_registry()[FIXTURE_TASK], target)
    torch.save(checkpoint, location.checkpoint)
    return target


def test_malicious_checkpoint_is_refused_and_runs_nothing(trained_models: Path, tmp_path: Path) -> None:
    original = torch.load(require_model(load_registry()[FIXTURE_TASK], trained_models).checkpoint,
                          map_location="cpu", weights_only=False)
    marker = tmp_path / "pwned"
    evil = dict(original, logging=_Payload(marker))
    models = _copy_model_with_checkpoint(trained_models, tmp_path / "models", evil)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(pelvis_phantom(5).ct, str(tmp_path / "in" / "c.nii.gz"))
    args = ["predict", "--task", FIXTURE_TASK, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
            "--models-dir", str(models), "--device", "cpu", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert "refusing to load" in result.output and "needs arbitrary code" in result.output
    assert "posix.system" in result.output or "os.system" in result.output
    assert not marker.exists()
    assert not (tmp_path / "out" / "c.nii.gz").exists()
    # With explicit trust the user gets what they asked for (and the payload runs).
    trusted = runner.invoke(app, [*args, "--trust-checkpoint"])
    assert trusted.exit_code == 0, trusted.output
    assert marker.exists()


def test_safe_loader_predicts_exactly_like_nnunets_own_loader(trained_models: Path) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    location = require_model(load_registry()[FIXTURE_TASK], trained_models)
    ours = engine.Segmenter(location.folder, 0, torch.device("cpu"))
    theirs = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    theirs.initialize_from_trained_model_folder(str(location.folder), use_folds=(0,))
    image = pelvis_phantom(77).ct
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(reversed(image.GetSpacing()))
    expected = theirs.predict_single_npy_array(array[None], {"spacing": list(spacing)}, None, None, False)
    assert np.array_equal(ours.predict(array, spacing), expected)
    assert ours.trainer_name == "nnUNetTrainerNoMirroring"
