"""The command line: task and label listings, help, and clear errors for bad usage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.registry.tasks import load_registry

runner = CliRunner()


def _wide(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 0, result.output
    return result.output


def test_tasks_lists_all_seven_with_ids_and_counts(tmp_path: Path) -> None:
    output = _wide("tasks", "--models-dir", str(tmp_path))
    for task in (t for t in load_registry().values() if not t.demo):  # the demo's model ships with autoorgan
        line = next(ln for ln in output.splitlines() if f" {task.name} " in ln)
        assert str(task.dataset_id) in line and f" {len(task.labels)} " in line and "not installed" in line


def test_tasks_shows_where_a_model_is_installed(tmp_path: Path) -> None:
    fold = tmp_path / "Dataset998_Ribs" / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    (fold / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        (fold / name).write_text("{}")
    output = _wide("tasks", "--models-dir", str(tmp_path))
    ribs = next(ln for ln in output.splitlines() if " ribs " in ln)
    assert "installed" in ribs and "not installed" not in ribs and "Dataset998_Ribs" in ribs


@pytest.mark.parametrize("task", list(load_registry()))
def test_labels_json_is_the_full_table(task: str) -> None:
    result = runner.invoke(app, ["labels", task, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {str(k): v for k, v in load_registry()[task].labels.items()}


def test_labels_table_lists_every_name() -> None:
    output = _wide("labels", "upper-limb")
    rows = {int(v): name for v, name in re.findall(r"(\d+)\s*│\s*(\S+)\s*│", output)}
    assert rows == dict(load_registry()["upper_limb"].labels)


def test_unknown_task_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["labels", "spleen"])
    assert result.exit_code == 2
    assert "unknown task 'spleen'" in result.output and "Traceback" not in result.output


def test_bad_shard_and_missing_input(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["predict", "--task", "ribs", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                                 "--part-id", "2", "--num-parts", "2"])
    assert result.exit_code == 2 and "--part-id must be between 0 and 1" in result.output
    missing = runner.invoke(app, ["predict", "--task", "ribs", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = runner.invoke(app, ["predict", "--task", "ribs", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    assert empty.exit_code == 2 and "holds no image files" in empty.output


def test_duplicate_case_ids_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.nii").write_bytes(b"x")
    (tmp_path / "in" / "a.nii.gz").write_bytes(b"x")
    result = runner.invoke(app, ["predict", "--task", "ribs", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "a.nii" in result.output and "a.nii.gz" in result.output and "case id 'a'" in result.output


def test_bad_tasks_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"tasks": {"x": {"dataset_id": 3, "labels": {"0": "bg"}}}}))
    result = runner.invoke(app, ["labels", "x", "--tasks-file", str(bad)])
    assert result.exit_code == 2 and "label 0 is the background" in result.output


def test_install_weights_rejects_non_zip(tmp_path: Path) -> None:
    junk = tmp_path / "model.zip"
    junk.write_text("not a zip")
    result = runner.invoke(app, ["install-weights", str(junk), "--models-dir", str(tmp_path / "m")])
    assert result.exit_code == 2 and "not a readable zip" in result.output
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "hello")
    result = runner.invoke(app, ["install-weights", str(empty), "--models-dir", str(tmp_path / "m")])
    assert result.exit_code == 2 and "holds no nnU-Net model" in result.output


def test_module_entry_point_and_version() -> None:
    result = subprocess.run([sys.executable, "-m", "autoorgan", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("predict", "tasks", "labels", "install-weights"):
        assert command in result.stdout
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("autoorgan ")


def test_help_does_not_import_torch() -> None:
    code = "import sys; from autoorgan.cli.app import app; print('torch' in sys.modules, 'nnunetv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_install_weights_checks_sha256_before_opening(tmp_path: Path) -> None:
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    wrong = "0" * 64
    result = runner.invoke(app, ["install-weights", str(archive), "--models-dir", str(tmp_path / "m"),
                                 "--sha256", wrong])
    assert result.exit_code == 2 and "does not match the expected" in result.output
    import hashlib

    right = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = runner.invoke(app, ["install-weights", str(archive), "--models-dir", str(tmp_path / "m"),
                                 "--sha256", right.upper()])
    assert result.exit_code == 2 and "holds no nnU-Net model" in result.output  # checksum passed, content checked
