"""The models folder: ``--models-dir``, else ``$AUTOORGAN_MODELS``, else ``$nnUNet_results``, else
the per-user folder; ``install-weights``, ``predict`` and ``tasks`` with none of them set; every
missing-model message names the folder it looked in and where that folder came from.

Each test's per-user folder is a private temporary folder (``$XDG_DATA_HOME``, set by the autouse
fixture of conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo import demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.errors import ModelNotFoundError
from autoorgan.models.releases import write_release_zip
from autoorgan.models.store import (
    FROM_ARGUMENT,
    FROM_MODELS_ENV,
    FROM_NNUNET_ENV,
    FROM_USER_FOLDER,
    models_dir_source,
    require_model,
    resolve_models_dir,
    user_models_dir,
)
from autoorgan.registry.selection import resolve_task_selection
from autoorgan.registry.tasks import load_registry, resolve_task
from autoorgan.runs.predict import TaskSelection, locate_models

runner = CliRunner()
DEMO_RELEASE = "autoorgan_demo_pelvis_model.zip"
INSTALL = "autoorgan install-weights MODEL.zip"


def _invoke(*args: str):
    """Run the CLI with a wide terminal, so lines are not wrapped."""
    return runner.invoke(app, list(args), env={"COLUMNS": "250"}, terminal_width=250)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def user_folder() -> Path:
    """The per-user models folder of this test (under its private ``$XDG_DATA_HOME``)."""
    folder = user_models_dir()
    assert folder == Path(os.environ["XDG_DATA_HOME"]) / "autoorgan" / "models"
    return folder


@pytest.fixture
def own_pelvis_tasks(tmp_path: Path) -> Path:
    """A task table with ``my_pelvis``: the demo task's model under another name (so nothing
    special to the demo task plays a part in finding it)."""
    spec = json.loads(demo_tasks_file().read_text(encoding="utf-8"))["tasks"]["demo_pelvis"]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": {"my_pelvis": spec}}), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Which folder, and why


def test_the_four_sources_in_order(tmp_path: Path, user_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert models_dir_source() == (FROM_USER_FOLDER, user_folder)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    assert models_dir_source() == (FROM_NNUNET_ENV, tmp_path / "results")
    monkeypatch.setenv("AUTOORGAN_MODELS", str(tmp_path / "env"))
    assert models_dir_source() == (FROM_MODELS_ENV, tmp_path / "env")
    assert models_dir_source(tmp_path / "arg") == (FROM_ARGUMENT, tmp_path / "arg")
    assert models_dir_source(str(tmp_path / "arg")) == (FROM_ARGUMENT, tmp_path / "arg")
    assert resolve_models_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_models_dir() == tmp_path / "env"
    monkeypatch.setenv("AUTOORGAN_MODELS", "")  # empty counts as not set
    assert models_dir_source() == (FROM_NNUNET_ENV, tmp_path / "results")
    monkeypatch.delenv("nnUNet_results")
    assert models_dir_source(None) == (FROM_USER_FOLDER, user_folder)
    assert models_dir_source("") == (FROM_USER_FOLDER, user_folder)
    assert not user_folder.exists(), "looking up the folder must not make it"


# ---------------------------------------------------------------------------------------------
# No folder set: install, list and predict in the per-user folder


def test_install_then_predict_with_no_models_folder_set(tmp_path: Path, user_folder: Path,
                                                        own_pelvis_tasks: Path) -> None:
    archive = write_release_zip(demo_models_dir(), tmp_path / DEMO_RELEASE)
    installed = _invoke("install-weights", str(archive), "--tasks-file", str(own_pelvis_tasks))
    assert installed.exit_code == 0, installed.output
    model = user_folder / "Dataset990_DemoPelvis" / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert f"installed {model}" in _flat(installed.output)
    assert "serves task 'my_pelvis'" in installed.output

    listed = _invoke("tasks", "--tasks-file", str(own_pelvis_tasks))
    assert listed.exit_code == 0, listed.output
    assert f"models folder: {user_folder} (the per-user folder)" in listed.output
    row = next(line for line in listed.output.splitlines() if "my_pelvis" in line)
    assert "installed" in row and "not installed" not in row and str(model) in _flat(listed.output)

    (tmp_path / "in").mkdir()
    sitk.WriteImage(demo_phantom(3).ct, str(tmp_path / "in" / "case.nii.gz"))
    result = _invoke("predict", "--task", "my_pelvis", "--tasks-file", str(own_pelvis_tasks), "-i",
                     str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "case.nii.gz").is_file()


def test_tasks_names_the_folder_and_its_source(tmp_path: Path, user_folder: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    listed = _invoke("tasks")
    assert listed.exit_code == 0, listed.output
    assert f"models folder: {user_folder} (the per-user folder)" in listed.output
    assert "does not exist yet" in listed.output and INSTALL in listed.output
    assert not user_folder.exists()

    (tmp_path / "results").mkdir()
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    listed = _invoke("tasks")
    assert f"models folder: {tmp_path / 'results'} (from $nnUNet_results)" in listed.output
    assert "does not exist yet" not in listed.output
    monkeypatch.setenv("AUTOORGAN_MODELS", str(tmp_path / "env"))
    assert f"models folder: {tmp_path / 'env'} (from $AUTOORGAN_MODELS)" in _invoke("tasks").output
    given = _invoke("tasks", "--models-dir", str(tmp_path / "arg")).output
    assert f"models folder: {tmp_path / 'arg'} (from --models-dir)" in given


# ---------------------------------------------------------------------------------------------
# Missing models: where we looked, why there, and how to install


def test_missing_model_names_the_per_user_folder(tmp_path: Path, user_folder: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(demo_phantom(3).ct, str(tmp_path / "in" / "case.nii.gz"))
    result = _invoke("predict", "--task", "hip", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--device", "cpu", "--quiet")
    assert result.exit_code == 3, result.output
    message = _flat(result.output)
    assert f"no model for task 'hip' (dataset 114) in the per-user models folder {user_folder}:" in message
    assert f"install it with '{INSTALL}'" in message and "AUTOORGAN_MODELS" in message
    assert "Traceback" not in result.output


def test_missing_model_names_each_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hip = resolve_task("hip")
    with pytest.raises(ModelNotFoundError) as given:
        require_model(hip, tmp_path / "arg")
    assert f"in the models folder {tmp_path / 'arg'} (from --models-dir)" in str(given.value)
    assert f"'{INSTALL} --models-dir {tmp_path / 'arg'}'" in str(given.value)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    with pytest.raises(ModelNotFoundError) as results:
        require_model(hip, resolve_models_dir())
    assert f"in the models folder {tmp_path / 'results'} (from $nnUNet_results)" in str(results.value)
    assert f"'{INSTALL}'" in str(results.value)
    monkeypatch.setenv("AUTOORGAN_MODELS", str(tmp_path / "env"))
    with pytest.raises(ModelNotFoundError) as env:
        require_model(hip, resolve_models_dir())
    assert f"in the models folder {tmp_path / 'env'} (from $AUTOORGAN_MODELS)" in str(env.value)
    assert f"'{INSTALL}'" in str(env.value)


def test_missing_models_of_several_tasks_name_the_folder(tmp_path: Path, user_folder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    selection = TaskSelection(resolve_task_selection("hip,ribs", load_registry()), True)
    with pytest.raises(ModelNotFoundError) as default:
        locate_models(selection, None)
    message = str(default.value)
    assert "hip (dataset 114)" in message and "ribs (dataset" in message
    assert f"in the per-user models folder {user_folder};" in message
    assert f"install them with '{INSTALL}'" in message
    monkeypatch.setenv("AUTOORGAN_MODELS", str(tmp_path / "env"))
    with pytest.raises(ModelNotFoundError) as env:
        locate_models(selection, None)
    assert f"in the models folder {tmp_path / 'env'} (from $AUTOORGAN_MODELS);" in str(env.value)
    with pytest.raises(ModelNotFoundError) as given:
        locate_models(selection, tmp_path / "arg")
    assert f"(from --models-dir); install them with '{INSTALL} --models-dir {tmp_path / 'arg'}'" in str(given.value)
