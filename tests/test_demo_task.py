"""The shipped demo model is a built-in task: ``predict --task demo_pelvis`` needs no other option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo import DEMO_NOTE, DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.models.store import find_model, require_model
from autoorgan.options import PredictOptions
from autoorgan.registry.tasks import load_registry
from autoorgan.registry.whole_body import whole_body_table
from autoorgan.report.metrics import dice_per_label
from autoorgan.runs.predict import select_tasks

runner = CliRunner()


def _wide(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_demo_task_is_built_in_and_found_in_the_package(tmp_path: Path) -> None:
    task = load_registry().get_task("Demo-Pelvis")
    assert task.name == DEMO_TASK and task.demo and task.models_dir == demo_models_dir()
    assert dict(task.labels) == {1: "hip_left", 2: "hip_right", 3: "sacrum"}
    # Whatever the models folder is, the shipped model is the one found.
    location = require_model(task, tmp_path / "empty")
    assert location.folder.is_relative_to(demo_models_dir())
    assert find_model(task.with_overrides(fold=0), tmp_path) == location  # overrides keep it shipped


def test_a_task_file_that_defines_the_demo_task_makes_it_an_ordinary_task(tmp_path: Path) -> None:
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    assert not task.demo and task.models_dir is None
    assert find_model(task, tmp_path) is None


def test_the_demo_task_is_no_part_of_all_or_of_the_whole_body_table() -> None:
    assert DEMO_TASK not in whole_body_table().task_order
    selection = select_tasks("all", PredictOptions())
    assert DEMO_TASK not in [t.name for t in selection.tasks] and len(selection.tasks) == 7


def test_labels_and_tasks_show_the_demo_task() -> None:
    result = runner.invoke(app, ["labels", DEMO_TASK, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"1": "hip_left", "2": "hip_right", "3": "sacrum"}
    output = _wide("labels", "demo-pelvis")
    assert "hip_left" in output and "sacrum" in output and "not for real CT" in output
    output = _wide("tasks")
    line = next(ln for ln in output.splitlines() if f" {DEMO_TASK} " in ln)
    assert "(demo)" in line and " 990 " in line and "shipped" in line
    assert sum("(demo)" in ln for ln in output.splitlines()) == 1


@pytest.mark.e2e
def test_predict_demo_pelvis_needs_no_models_folder_or_task_file(tmp_path: Path) -> None:
    phantom = demo_phantom(1)
    (tmp_path / "ct").mkdir()
    sitk.WriteImage(phantom.ct, str(tmp_path / "ct" / "case.nii.gz"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("AUTOORGAN_MODELS", "nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed")}
    env.update(COLUMNS="300", HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-m", "autoorgan", "predict", "--task", DEMO_TASK, "-i",
                           str(tmp_path / "ct"), "-o", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    warned = [ln for ln in output.splitlines() if "DEMO MODEL" in ln]
    assert len(warned) == 1 and "WARNING" in warned[0] and "not for real CT" in warned[0], output
    sidecar = json.loads((tmp_path / "out" / "case.json").read_text())
    assert sidecar["task"] == DEMO_TASK and sidecar["demo"] is True and sidecar["note"] == DEMO_NOTE
    labels = dict(load_registry().get_task(DEMO_TASK).labels)
    truth = sitk.GetArrayFromImage(phantom.labels_for(labels))
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz")))
    scores = dice_per_label(truth, predicted, labels)
    assert set(scores) == {1, 2, 3} and min(scores.values()) >= 0.9, scores
    assert np.unique(predicted).tolist() == [0, 1, 2, 3]
