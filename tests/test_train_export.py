"""``autoorgan train`` (input checks, nnU-Net raw datasets, custom tasks, --continue) and
``export-weights`` → ``install-weights`` round trips, with real nnU-Net models on CPU."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from autoorgan import engine
from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient
from autoorgan.registry.tasks import load_registry
from autoorgan.report.metrics import dice_per_label
from fixture_model import FIXTURE_TASK, TINY_PLANS, pelvis_phantom

runner = CliRunner()
HIP = load_registry().get_task(FIXTURE_TASK)
MODEL_SUBFOLDER = "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"


def _write_training_folder(folder: Path, n: int, seed0: int = 500) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(n):
        phantom = pelvis_phantom(seed0 + i)
        sitk.WriteImage(phantom.ct, str(folder / "images" / f"case{i}.nii.gz"))
        sitk.WriteImage(phantom.labels_for(HIP.labels), str(folder / "labels" / f"case{i}.nii.gz"))
    return folder


def _train(*args: str) -> object:
    return runner.invoke(app, ["train", "--device", "cpu", "--quiet", "--augmentation-workers", "0", *args])


def _predict(*args: str) -> object:
    return runner.invoke(app, ["predict", "--device", "cpu", "--quiet", *args])


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ---------------------------------------------------------------------------------------------
# Input checks (nothing is trained)


def test_label_value_outside_the_table_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = _write_training_folder(tmp_path / "data", 2)
    bad = sitk.ReadImage(str(data / "labels" / "case1.nii.gz"))
    bad[3, 3, 3] = 7
    sitk.WriteImage(bad, str(data / "labels" / "case1.nii.gz"))
    result = _train("--task", FIXTURE_TASK, "--data", str(data), "--models-dir", str(tmp_path / "models"),
                    "--work-dir", str(tmp_path / "work"))
    assert result.exit_code == 2, result.output
    assert "case1.nii.gz: values [7] are not in the label table of task 'hip'" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "work" / "nnUNet_raw").glob("Dataset*"))
    assert not (tmp_path / "models" / "Dataset114_Hip").exists()


def test_label_on_another_grid_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = _write_training_folder(tmp_path / "data", 2)
    label = sitk.ReadImage(str(data / "labels" / "case0.nii.gz"))
    sitk.WriteImage(label[:-2, :, :], str(data / "labels" / "case0.nii.gz"))
    result = _train("--task", FIXTURE_TASK, "--data", str(data), "--models-dir", str(tmp_path / "models"),
                    "--work-dir", str(tmp_path / "work"))
    assert result.exit_code == 2
    assert "case0.nii.gz: label grid" in result.output and "differs from its image's" in result.output
    assert "Traceback" not in result.output


def test_training_data_layout_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _train("--task", FIXTURE_TASK, "--data", str(tmp_path / "empty"), "--models-dir", str(tmp_path / "m"),
                    "--work-dir", str(tmp_path / "w"))
    assert result.exit_code == 2
    assert "must hold the folders images/ and labels/" in result.output and "nnU-Net raw dataset" in result.output
    data = _write_training_folder(tmp_path / "data", 2)
    (data / "labels" / "case1.nii.gz").unlink()
    unmatched = _train("--task", FIXTURE_TASK, "--data", str(data), "--models-dir", str(tmp_path / "m"),
                       "--work-dir", str(tmp_path / "w"))
    assert unmatched.exit_code == 2 and "case1" in unmatched.output
    override = tmp_path / "plans.json"
    override.write_text("[1, 2]")
    bad_override = _train("--task", FIXTURE_TASK, "--data", str(data), "--plans-override", str(override))
    assert bad_override.exit_code == 2 and "must hold a JSON object" in bad_override.output


# ---------------------------------------------------------------------------------------------
# A custom task trained from an nnU-Net raw dataset, resumed, and used by predict


def _raw_dataset(folder: Path, n: int) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        phantom = pelvis_phantom(600 + i)
        codes = ("LPS", "RAS", "PIR")[i % 3]
        sitk.WriteImage(reorient(phantom.ct, codes), str(folder / "imagesTr" / f"pv_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(reorient(phantom.labels_for(HIP.labels), codes), str(folder / "labelsTr" / f"pv_{i:03d}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "hip_left": 1, "hip_right": 2, "sacrum": 3},
        "numTraining": n, "file_ending": ".nii.gz"}))
    return folder


@pytest.mark.slow
def test_custom_task_trains_from_raw_dataset_resumes_and_predicts(tmp_path: Path) -> None:
    tasks_file = tmp_path / "my_tasks.toml"
    tasks_file.write_text(
        '[tasks.my_pelvis]\ndataset_id = 501\ndescription = "pelvis retrained"\nfold = "all"\n'
        '[tasks.my_pelvis.labels]\n1 = "hip_left"\n2 = "hip_right"\n3 = "sacrum"\n')
    raw = _raw_dataset(tmp_path / "Dataset501_Mine", 3)
    override = tmp_path / "tiny.json"
    override.write_text(json.dumps(TINY_PLANS))
    models, work = tmp_path / "models", tmp_path / "work"
    common = ["--task", "my_pelvis", "--tasks-file", str(tasks_file), "--data", str(raw), "--models-dir",
              str(models), "--work-dir", str(work), "--iterations-per-epoch", "2"]
    first = _train(*common, "--epochs", "1", "--plans-override", str(override))
    assert first.exit_code == 0, first.output
    fold = models / "Dataset501_MyPelvis" / MODEL_SUBFOLDER / "fold_all"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == TINY_PLANS["patch_size"]
    dataset = json.loads((fold.parent / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "hip_left": 1, "hip_right": 2, "sacrum": 3}
    # the raw dataset was stored in the task's orientation (RAS), whatever its files' orientation
    stored = sitk.ReadImage(str(next((work / "nnUNet_raw" / "Dataset501_MyPelvis" / "imagesTr").glob("*"))))
    assert np.allclose(stored.GetDirection(), pelvis_phantom(600).ct.GetDirection())  # built in RAS order

    resumed = _train(*common, "--epochs", "2", "--continue")
    assert resumed.exit_code == 0, resumed.output
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    assert len(list(fold.glob("training_log_*.txt"))) == 2

    case = pelvis_phantom(700)
    (tmp_path / "in").mkdir()
    ct = reorient(case.ct, "LPS")
    sitk.WriteImage(ct, str(tmp_path / "in" / "new.nii.gz"))
    result = _predict("--task", "my_pelvis", "--tasks-file", str(tasks_file), "-i", str(tmp_path / "in"), "-o",
                      str(tmp_path / "out"), "--models-dir", str(models))
    assert result.exit_code == 0, result.output
    seg = sitk.ReadImage(str(tmp_path / "out" / "new.nii.gz"))
    assert seg.GetSize() == ct.GetSize() and np.allclose(seg.GetDirection(), ct.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
    sidecar = json.loads((tmp_path / "out" / "new.json").read_text())
    assert sidecar["task"] == "my_pelvis" and sidecar["dataset_id"] == 501 and sidecar["fold"] == "all"


def test_custom_task_file_names_the_fixture_model_outputs(trained_models: Path, tmp_path: Path) -> None:
    """A task file may describe an installed model under other names: outputs use the file's table."""
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps({"tasks": {"pelvic_bones": {
        "dataset_id": 114, "description": "the hip model under our own names",
        "labels": {"1": "os_coxae_left", "2": "os_coxae_right", "3": "os_sacrum"}}}}))
    phantom = pelvis_phantom(901)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(reorient(phantom.ct, "PIR"), str(tmp_path / "in" / "c.nii.gz"))
    result = _predict("--task", "Pelvic Bones", "--tasks-file", str(tasks_file), "-i", str(tmp_path / "in"), "-o",
                      str(tmp_path / "out"), "--models-dir", str(trained_models))
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "out" / "c.json").read_text())
    assert sidecar["task"] == "pelvic_bones"
    assert sidecar["labels"] == {"1": "os_coxae_left", "2": "os_coxae_right", "3": "os_sacrum"}
    truth = sitk.GetArrayFromImage(reorient(phantom.labels_for(HIP.labels), "PIR"))
    scores = dice_per_label(truth, _array(tmp_path / "out" / "c.nii.gz"), [1, 2, 3])
    assert min(scores.values()) >= 0.9, scores


# ---------------------------------------------------------------------------------------------
# export-weights


def test_export_install_predict_gives_identical_output(trained_models: Path, tmp_path: Path) -> None:
    archive = tmp_path / "export" / "hip_model.zip"
    exported = runner.invoke(app, ["export-weights", "--task", "hip", "-o", str(archive), "--models-dir",
                                   str(trained_models)])
    assert exported.exit_code == 0, exported.output
    names = set(zipfile.ZipFile(archive).namelist())
    prefix = f"Dataset114_Hip/{MODEL_SUBFOLDER}/"
    assert {prefix + n for n in ("dataset.json", "plans.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth",
                                 "fold_0/progress.png", "fold_0/validation/summary.json")} <= names
    assert all(n.startswith(prefix) for n in names)
    assert not list(archive.parent.glob(".*"))  # no temporary left behind

    fresh = tmp_path / "fresh_models"
    installed = runner.invoke(app, ["install-weights", str(archive), "--models-dir", str(fresh)])
    assert installed.exit_code == 0, installed.output
    assert "serves task 'hip': labels match the task table" in installed.output
    nnunet_installed = tmp_path / "nnunet_results"
    engine.install_model_archive(archive, nnunet_installed)
    original = trained_models / "Dataset114_Hip" / MODEL_SUBFOLDER / "fold_0" / "checkpoint_final.pth"
    for root in (fresh, nnunet_installed):
        copy = root / "Dataset114_Hip" / MODEL_SUBFOLDER / "fold_0" / "checkpoint_final.pth"
        assert copy.read_bytes() == original.read_bytes()

    (tmp_path / "in").mkdir()
    sitk.WriteImage(reorient(pelvis_phantom(321).ct, "LAS"), str(tmp_path / "in" / "x.nii.gz"))
    outputs = []
    for i, models in enumerate((trained_models, fresh, nnunet_installed)):
        assert _predict("--task", "hip", "-i", str(tmp_path / "in"), "-o", str(tmp_path / f"o{i}"), "--models-dir",
                        str(models)).exit_code == 0
        outputs.append(_array(tmp_path / f"o{i}" / "x.nii.gz"))
    assert outputs[0].any()
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])


def test_export_refuses_incomplete_models_and_bad_names(trained_models: Path, tmp_path: Path) -> None:
    slim = tmp_path / "slim" / "Dataset114_Hip" / MODEL_SUBFOLDER
    (slim / "fold_0").mkdir(parents=True)
    source = trained_models / "Dataset114_Hip" / MODEL_SUBFOLDER
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        shutil.copy(source / name, slim / name)
    result = runner.invoke(app, ["export-weights", "--task", "hip", "-o", str(tmp_path / "a.zip"), "--models-dir",
                                 str(tmp_path / "slim")])
    assert result.exit_code == 3
    assert "dataset_fingerprint.json" in result.output and "fold_0/progress.png" in result.output
    assert "fold_0/validation/summary.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a.zip").exists()
    missing = runner.invoke(app, ["export-weights", "--task", "ribs", "-o", str(tmp_path / "r.zip"), "--models-dir",
                                  str(trained_models)])
    assert missing.exit_code == 3 and "no model for task 'ribs'" in missing.output
    named = runner.invoke(app, ["export-weights", "--task", "hip", "-o", str(tmp_path / "model.tar"), "--models-dir",
                                str(trained_models)])
    assert named.exit_code == 2 and "must end in .zip" in named.output
