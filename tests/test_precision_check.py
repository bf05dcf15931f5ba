"""``autoorgan check-precision``: the fixture model run in float32 and in bfloat16 on a small
phantom, the check it writes beside the model, ``predict --precision auto`` reading it on a machine
with native bfloat16 (the detection replaced at its boundary), the check travelling with
``export-weights`` and ``install-weights``, and bad input as one line."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import autoorgan
from autoorgan.cli.app import app
from autoorgan.cli.precision_check import SHOWN, dice_table
from autoorgan.engine import precision
from autoorgan.engine.precision import CHECK_FILE, MEDIAN_DICE, MIN_DICE, Agreement, Bf16Support
from autoorgan.models.orientation import CALIBRATION_FILE, read_calibration
from autoorgan.models.store import ModelLocation, require_model
from autoorgan.registry.tasks import load_registry
from autoorgan.runs.precision_check import PrecisionCheck, Score
from fixture_model import FIXTURE_STRUCTURES, FIXTURE_TASK, pelvis_phantom

NATIVE = Bf16Support(onednn=True, flags=("avx512_bf16", "amx_bf16"))


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # the console wraps long lines


@pytest.mark.e2e
def test_the_check_is_measured_recorded_read_by_auto_and_travels(trained_models: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_models, models)
    task = load_registry()[FIXTURE_TASK]
    folder = require_model(task, models).folder
    ct = tmp_path / "in" / "pelvis.nii.gz"
    ct.parent.mkdir()
    sitk.WriteImage(pelvis_phantom(45).ct, str(ct))  # 30 x 20 x 14 voxels of 4 x 4 x 5 mm
    emulated = not precision.cpu_bf16_support().native

    # Stricter than the default bounds (bf16 moves a few voxels here): the model does not agree,
    # exit 1, and the check is written all the same.
    code, output = _invoke("check-precision", "--task", FIXTURE_TASK, "-i", str(ct), "--models-dir", str(models),
                           "--device", "cpu", "--min-dice", "1")
    assert code == 1, output
    assert "does not agree" in output and "'--precision auto' keeps it in fp32; recorded in" in output
    assert all(name in output for name in FIXTURE_STRUCTURES)
    assert ("bf16 was emulated (slow; nearly the same numbers" in output) == emulated
    check = precision.read_precision_check(folder)
    assert check is not None and check["agrees"] is False
    assert check["bounds"] == {"min_dice": 1.0, "median_dice": MEDIAN_DICE}
    assert check["cases"] == 1 and check["scores"] == len(FIXTURE_STRUCTURES) and check["fold"] == str(task.fold)
    # ... while the default bounds hold: what fails is the stricter minimum.
    assert MIN_DICE <= check["min_dice"] < 1.0 and check["median_dice"] >= MEDIAN_DICE

    # On a CPU with native bfloat16, auto keeps the model in float32 and says why.
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: NATIVE)
    code, output = _invoke("predict", "--task", FIXTURE_TASK, "-i", str(ct), "-o", str(tmp_path / "out"),
                           "--models-dir", str(models), "--device", "cpu", "--no-postprocess", "--precision", "auto")
    assert code == 0, output
    sidecar = json.loads((tmp_path / "out" / "pelvis.json").read_text(encoding="utf-8"))
    assert sidecar["precision"] == {"precision": "fp32", "reason": f"auto: the model's bfloat16 check ({CHECK_FILE}) "
                                    f"failed: min Dice {check['min_dice']:.4f}, median {check['median_dice']:.4f}"}
    monkeypatch.undo()

    # With the default bounds it agrees (exit 0); --dry-run leaves the recorded check alone.
    code, output = _invoke("check-precision", "--task", FIXTURE_TASK, "-i", str(ct), "--models-dir", str(models),
                           "--dry-run", "--quiet")
    assert code == 0, output
    assert "agrees" in output and "not recorded (--dry-run)" in output
    assert precision.read_precision_check(folder) == check
    # The API: the same result, and progress through both runs.
    seen: list[tuple[str, float, int]] = []
    result = autoorgan.check_precision(FIXTURE_TASK, ct, models_dir=models, write=False,
                                       progress=lambda what, done, total: seen.append((what, done, total)))
    assert result.agrees and result.check_path is None and result.emulated == emulated
    assert round(result.agreement.min_dice, 5) == check["min_dice"] and len(result.scores) == check["scores"]
    assert {what.split()[0] for what, _, _ in seen} == {"fp32", "bf16", "compared"}
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen) and seen[-1][1:] == (2, 2)
    assert precision.read_precision_check(folder) == check

    # export-weights carries the check and the calibration record; install-weights puts them back.
    (folder / CALIBRATION_FILE).write_text(json.dumps({"orientation": "LPS", "margin": 0.5}), encoding="utf-8")
    archive = tmp_path / "hip.zip"
    code, output = _invoke("export-weights", "--task", FIXTURE_TASK, "-o", str(archive), "--models-dir", str(models))
    assert code == 0, output
    names = zipfile.ZipFile(archive).namelist()
    assert f"{folder.parent.name}/{folder.name}/{CHECK_FILE}" in names
    assert f"{folder.parent.name}/{folder.name}/{CALIBRATION_FILE}" in names
    again = tmp_path / "again"
    code, output = _invoke("install-weights", str(archive), "--models-dir", str(again))
    assert code == 0, output
    installed = require_model(task, again).folder
    assert precision.read_precision_check(installed) == check
    assert read_calibration(installed) == {"orientation": "LPS", "margin": 0.5}


@pytest.mark.parametrize(("args", "code", "says"), [
    (["--task", "no_such_task"], 2, "unknown task 'no_such_task'"),
    (["--task", FIXTURE_TASK, "-i", "{missing}"], 2, "does not exist"),
    (["--task", FIXTURE_TASK, "--device", "cuda"], 2, "runs on the CPU"),
    (["--task", FIXTURE_TASK, "--min-dice", "0.9"], 2, "--min-dice must be from 0.99 to 1"),
    (["--task", "ribs"], 3, "no model for task 'ribs'"),
], ids=["unknown-task", "missing-ct", "device", "looser-bound", "not-installed"])
def test_bad_input_is_one_line(trained_models: Path, tmp_path: Path, args: list[str], code: int, says: str) -> None:
    ct = tmp_path / "pelvis.nii.gz"
    ct.write_bytes(b"")  # never read: every case fails before a CT is opened
    missing = str(tmp_path / "missing.nii.gz")
    args = [missing if a == "{missing}" else a for a in args]
    if "-i" not in args:
        args += ["-i", str(ct)]
    result = CliRunner().invoke(app, ["check-precision", *args, "--models-dir", str(trained_models), "--quiet"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output
    assert not any(trained_models.rglob(CHECK_FILE))


def test_the_table_shows_the_lowest_dice_first(tmp_path: Path) -> None:
    dice = {f"case{i}": {1: 1.0 - i / 1000, 2: 1.0} for i in range(SHOWN)}
    scores = [Score(case, value, f"s{value}", d, 10, 10) for case, per in dice.items() for value, d in per.items()]
    result = PrecisionCheck(task=load_registry()[FIXTURE_TASK], location=ModelLocation(tmp_path, tmp_path / "c.pth"),
                            agreement=Agreement(dice), scores=scores, support=NATIVE)
    assert not result.agrees and not result.emulated  # min Dice 0.981
    table = dice_table(result)
    assert table.row_count == SHOWN and table.caption == f"{SHOWN} more, each with Dice of at least 1.00000"
    assert [s.dice for s in result.worst_first()][:2] == [1.0 - (SHOWN - 1) / 1000, 1.0 - (SHOWN - 2) / 1000]
