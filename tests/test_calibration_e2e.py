"""``autoorgan calibrate`` on real models trained in orientations nobody recorded, and the anatomical
checks of every prediction.

The models (``tests/data/models/hip_stored_*.zip``) were trained with ``autoorgan train`` on pelvis
phantoms all stored LPS, or all stored PIL, fed to nnU-Net as stored, and their ``dataset.json``
holds nnU-Net's fields only: as models trained elsewhere reach users. Installed, they are run in
the default orientation (RAS) with a warning; calibration from one phantom stored in a third
orientation must find each, after which copies stored RAS, LPS, LAS and oblique are segmented
right without any repair.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient, rotate
from autoorgan.models.orientation import CALIBRATION_FILE, OrientationSource, resolve_model_orientation
from autoorgan.models.store import find_model
from autoorgan.registry.tasks import load_registry
from autoorgan.runs.calibrate import MIN_MARGIN
from fixture_model import (
    FIXTURE_ARCHIVES,
    FIXTURE_STRUCTURES,
    STORED_ORIENTATIONS,
    install_fixture_archives,
    pelvis_phantom,
)

pytestmark = pytest.mark.slow

NAMES = dict(enumerate(FIXTURE_STRUCTURES, start=1))
#: The calibration CT's storage order: neither RAS nor either model's.
CALIBRATION_CODES = "SAR"
COPIES = ("RAS", "LPS", "LAS", "oblique")


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _copy(image: sitk.Image, codes: str) -> sitk.Image:
    return rotate(image, 11.0, (1.0, 1.0, 0.0)) if codes == "oblique" else reorient(image, codes)


@pytest.fixture(scope="module")
def phantom_copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Path]]:
    """The calibration CT, a folder of the test copies, and each copy's true labels."""
    base = tmp_path_factory.mktemp("phantom")
    phantom = pelvis_phantom(4242)
    ct = _write(reorient(phantom.ct, CALIBRATION_CODES), base / "calibration" / "pelvis.nii.gz")
    truth = {}
    for codes in COPIES:
        _write(_copy(phantom.ct, codes), base / "copies" / f"pelvis_{codes}.nii.gz")
        truth[codes] = _write(_copy(phantom.labels_for(NAMES), codes), base / "truth" / f"pelvis_{codes}.nii.gz")
    return ct, base / "copies", truth


def _dice(out: Path, truth: dict[str, Path]) -> dict[str, list[float]]:
    scores = {}
    for codes, path in truth.items():
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"pelvis_{codes}.nii.gz")))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        scores[codes] = [round(2 * np.sum((predicted == v) & (expected == v))
                               / max(1, np.sum(predicted == v) + np.sum(expected == v)), 3) for v in NAMES]
    return scores


def _predict(models: Path, source: Path, out: Path, *extra: str) -> tuple[str, dict[str, dict]]:
    result = CliRunner().invoke(app, ["predict", "--task", "hip", "-i", str(source), "-o", str(out), "--device",
                                      "cpu", "--models-dir", str(models), "--no-postprocess", *extra])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console wraps long lines
    return text, {p.name: json.loads(p.read_text()) for p in out.glob("pelvis*.json")}


@pytest.mark.parametrize("archive", list(STORED_ORIENTATIONS))
def test_calibration_finds_the_training_orientation(archive: str, phantom_copies: tuple[Path, Path, dict[str, Path]],
                                                    tmp_path: Path) -> None:
    ct, copies, truth = phantom_copies
    trained_in = STORED_ORIENTATIONS[archive]
    models = tmp_path / "models"
    install_fixture_archives([archive], models)
    location = find_model(load_registry().get_task("hip"), models)
    assert location is not None and not (location.folder / CALIBRATION_FILE).exists()

    # Nothing records the orientation: RAS is assumed, with a warning naming the remedy.
    output, sidecars = _predict(models, copies / "pelvis_RAS.nii.gz", tmp_path / "before")
    assert "autoorgan calibrate --task hip" in output
    assert sidecars["pelvis_RAS.json"]["orientation_source"] == "default"

    # The LPS model is calibrated by the command, the PIL model while installing.
    if trained_in == "LPS":
        result = CliRunner().invoke(app, ["calibrate", "--task", "hip", "-i", str(ct), "--device", "cpu",
                                          "--models-dir", str(models), "--quiet"])
    else:
        shutil.rmtree(models)
        result = CliRunner().invoke(app, ["install-weights", str(Path(__file__).parent / "data" / "models" / archive),
                                          "--models-dir", str(models), "--calibrate-with", str(ct), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"orientation {trained_in}, recorded in" in result.output
    record = json.loads((location.folder / CALIBRATION_FILE).read_text())
    assert record["orientation"] == trained_in and record["margin"] >= MIN_MARGIN
    assert len(record["candidates"]) == 48
    assert record["inputs"][0]["name"] == "pelvis.nii.gz" and len(record["inputs"][0]["sha256"]) == 64

    # Every storage order is now segmented right, the model's output as it comes (no repair).
    output, sidecars = _predict(models, copies, tmp_path / "after")
    for codes, scores in _dice(tmp_path / "after", truth).items():
        assert min(scores) >= 0.9, (codes, scores)
    for sidecar in sidecars.values():
        assert (sidecar["model_orientation"], sidecar["orientation_source"]) == (trained_in, "calibration")
        assert sidecar["checks"]["passed"], sidecar["checks"]
    assert "calibrate" not in output


def test_a_wrong_orientation_is_flagged_and_the_record_travels(phantom_copies: tuple[Path, Path, dict[str, Path]],
                                                               tmp_path: Path) -> None:
    """Forced into another orientation, the model's raw labels fail the checks (sidecar, warning,
    overview); the calibration record survives export-weights and install-weights."""
    _, copies, _ = phantom_copies
    archive = next(a for a, codes in STORED_ORIENTATIONS.items() if codes == "LPS")
    models = install_fixture_archives([archive], tmp_path / "models")
    task = load_registry().get_task("hip")
    folder = find_model(task, models).folder  # type: ignore[union-attr]
    (folder / CALIBRATION_FILE).write_text(json.dumps({"orientation": "LPS", "margin": 0.5}))

    output, sidecars = _predict(models, copies / "pelvis_LAS.nii.gz", tmp_path / "forced", "--orientation", "PIL")
    checks = sidecars["pelvis_LAS.json"]["checks"]
    assert sidecars["pelvis_LAS.json"]["orientation_source"] == "--orientation"
    assert not checks["passed"] and checks["tested"] > 0
    assert "fail the anatomical checks" in output
    assert "anatomical checks failed" in (tmp_path / "forced" / "index.html").read_text()

    exported = tmp_path / "hip.zip"
    result = CliRunner().invoke(app, ["export-weights", "--task", "hip", "-o", str(exported), "--models-dir",
                                      str(models)])
    assert result.exit_code == 0, result.output
    assert any(n.endswith(f"/{CALIBRATION_FILE}") for n in zipfile.ZipFile(exported).namelist())
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["install-weights", str(exported), "--models-dir", str(again), "--force"])
    assert result.exit_code == 0, result.output
    moved = resolve_model_orientation(task, find_model(task, again).folder)  # type: ignore[union-attr]
    assert (moved.codes, moved.source) == ("LPS", OrientationSource.CALIBRATION)


def test_calibration_refuses_when_it_cannot_tell(trained_models: Path, tmp_path: Path) -> None:
    """A CT of air: no orientation stands out (or none finds anything); the table is shown, nothing
    is recorded."""
    air = sitk.Image(24, 24, 24, sitk.sitkInt16) - 1000
    air.SetSpacing((4.0, 4.0, 5.0))
    path = _write(air, tmp_path / "air.nii.gz")
    result = CliRunner().invoke(app, ["calibrate", "--task", "hip", "-i", str(path), "--device", "cpu",
                                      "--models-dir", str(trained_models), "--quiet"])
    assert result.exit_code == 1
    assert "nothing was recorded" in result.output and "orientations tried" in result.output
    folder = find_model(load_registry().get_task("hip"), trained_models).folder  # type: ignore[union-attr]
    assert not (folder / CALIBRATION_FILE).exists()


def test_feet_first_stored_as_head_first_is_flagged(trained_models: Path, tmp_path: Path) -> None:
    """A series whose direction matrix says head-first while the patient lay feet-first."""
    ct = pelvis_phantom(4242).ct
    wrong = sitk.Image(ct)
    wrong.SetDirection(tuple((np.asarray(ct.GetDirection()).reshape(3, 3) @ np.diag([1.0, 1.0, -1.0])).ravel()))
    source = _write(wrong, tmp_path / "in" / "pelvis_wrong.nii.gz")
    output, sidecars = _predict(trained_models, source, tmp_path / "out")
    assert not sidecars["pelvis_wrong.json"]["checks"]["passed"]
    assert "fail the anatomical checks" in output


def test_a_model_folder_as_released_is_used_with_a_note(trained_models: Path, tmp_path: Path) -> None:
    task = load_registry().get_task("hip")
    folder = find_model(task, trained_models).folder  # type: ignore[union-attr]
    models = tmp_path / "models"
    shutil.copytree(folder.parent, models / folder.parent.name)
    (models / folder.parent.name / folder.name).rename(models / folder.parent.name / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    source = _write(pelvis_phantom(4242).ct, tmp_path / "in" / "pelvis.nii.gz")
    output, sidecars = _predict(models, source, tmp_path / "out")
    assert "using its only other model, nnUNetTrainer__nnUNetPlans__3d_fullres" in output
    sidecar = sidecars["pelvis.json"]
    assert sidecar["trainer"] == "nnUNetTrainerNoMirroring"  # the checkpoint's own trainer
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres" in sidecar["model_folder_note"]
    assert sidecar["checks"]["passed"]


def test_fixture_archives_are_listed() -> None:
    assert set(FIXTURE_ARCHIVES["stored_orientation_models"]) == set(STORED_ORIENTATIONS)
