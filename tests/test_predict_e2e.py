"""``predict`` end to end with a real nnU-Net model trained in this session (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.batch.sharding import shard_of
from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient, rotate
from autoorgan.registry.tasks import load_registry
from autoorgan.report.metrics import dice_per_label
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e
runner = CliRunner()
HIP = load_registry().get_task(FIXTURE_TASK)


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _write_cases(folder: Path, names: list[str], seed0: int = 200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sitk.WriteImage(pelvis_phantom(seed0 + i).ct, str(folder / f"{name}.nii.gz"))


def _predict_cli(*args: str) -> object:
    return runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "--device", "cpu", "--quiet", *args])


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "oblique"])
def test_held_out_phantom_dice_and_geometry(trained_models: Path, tmp_path: Path, codes: str) -> None:
    phantom = pelvis_phantom(999)
    ct, truth = phantom.ct, phantom.labels_for(HIP.labels)
    if codes == "oblique":
        ct, truth = rotate(reorient(ct, "LPS"), 12.0, (0.3, 1.0, 0.2)), rotate(reorient(truth, "LPS"), 12.0, (0.3, 1.0, 0.2))
    else:
        ct, truth = reorient(ct, codes), reorient(truth, codes)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(ct, str(tmp_path / "in" / "held out.nii.gz"))
    result = api.predict(task="Hip", input=tmp_path / "in", output=tmp_path / "out", models_dir=trained_models,
                         device="cpu")
    assert [r.status for r in result.results] == ["done"]
    seg = sitk.ReadImage(str(tmp_path / "out" / "held out.nii.gz"))
    _assert_same_grid(seg, ct)
    assert seg.GetPixelID() == sitk.sitkUInt8
    scores = dice_per_label(sitk.GetArrayFromImage(truth), sitk.GetArrayFromImage(seg), HIP.labels)
    assert min(scores.values()) >= 0.9, scores


def test_real_ct_gives_valid_map_and_sidecar(trained_models: Path, real_data: Path, tmp_path: Path) -> None:
    source = real_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    result = _predict_cli("-i", str(source), "-o", str(tmp_path / "out"), "--models-dir", str(trained_models))
    assert result.exit_code == 0, result.output
    seg = sitk.ReadImage(str(tmp_path / "out" / "example_ct_sm.nii.gz"))
    _assert_same_grid(seg, sitk.ReadImage(str(source)))
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
    sidecar = json.loads((tmp_path / "out" / "example_ct_sm.json").read_text())
    assert sidecar["task"] == "hip" and sidecar["dataset_id"] == 114
    assert sidecar["trainer"] == "nnUNetTrainerNoMirroring"
    assert sidecar["configuration"] == "3d_fullres" and sidecar["fold"] == 0 and sidecar["plans"] == "nnUNetPlans"
    assert sidecar["labels"] == {"1": "hip_left", "2": "hip_right", "3": "sacrum"}
    assert sidecar["input"] == "example_ct_sm.nii.gz"
    assert sidecar["versions"]["autoorgan"] and sidecar["versions"]["nnunetv2"].startswith("2.")
    # nothing that identifies a patient or the machine's folders
    text = json.dumps(sidecar)
    assert str(real_data) not in text and str(tmp_path) not in text


def test_two_shards_cover_each_case_once_and_stay_put(trained_models: Path, tmp_path: Path) -> None:
    names = ["p01", "p02", "p03", "p04", "p05"]
    _write_cases(tmp_path / "in", names)
    produced: dict[int, set[str]] = {}
    for part in (0, 1):
        out = tmp_path / f"out{part}"
        result = _predict_cli("-i", str(tmp_path / "in"), "-o", str(out), "--models-dir", str(trained_models),
                              "--part-id", str(part), "--num-parts", "2")
        assert result.exit_code == 0, result.output
        produced[part] = {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")}
    assert produced[0] | produced[1] == set(names)
    assert not produced[0] & produced[1]
    # A new case arrives: the old ones keep their shards.
    _write_cases(tmp_path / "in", ["p00"], seed0=300)
    for part in (0, 1):
        out = tmp_path / f"again{part}"
        assert _predict_cli("-i", str(tmp_path / "in"), "-o", str(out), "--models-dir", str(trained_models),
                            "--part-id", str(part), "--num-parts", "2").exit_code == 0
        now = {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")}
        assert now - {"p00"} == produced[part]
        assert ("p00" in now) == (shard_of("p00", 2) == part)


def test_continue_recomputes_only_what_is_missing(trained_models: Path, tmp_path: Path) -> None:
    _write_cases(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    first = api.predict(task=FIXTURE_TASK, input=tmp_path / "in", output=out, models_dir=trained_models, device="cpu")
    assert first.count("done") == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # Simulate a crash while writing b: its label map renamed into place, sidecar never written,
    # plus a temporary file of an interrupted write of c's sidecar and a removed c.
    (out / "b.json").unlink()
    (out / "c.nii.gz").unlink()
    (out / "c.json").unlink()
    (out / ".c.tmp-deadbeef.nii.gz").write_bytes(b"\x1f\x8b truncated")
    os.utime(out / ".c.tmp-deadbeef.nii.gz", (time.time() - 2 * 86400,) * 2)  # an older autoorgan's, long ago
    again = api.predict(task=FIXTURE_TASK, input=tmp_path / "in", output=out, models_dir=trained_models,
                        device="cpu", resume=True)
    assert {r.case_id: r.status for r in again.results} == {"a": "skipped", "b": "done", "c": "done"}
    assert (out / "a.nii.gz").stat().st_mtime_ns == stamps["a.nii.gz"]
    assert not list(out.glob(".*"))
    for case in "abc":
        assert sitk.ReadImage(str(out / f"{case}.nii.gz")).GetSize() == sitk.ReadImage(
            str(tmp_path / "in" / f"{case}.nii.gz")).GetSize()
        assert json.loads((out / f"{case}.json").read_text())["task"] == "hip"
    # A finished folder under --continue does not even load the model.
    third = api.predict(task=FIXTURE_TASK, input=tmp_path / "in", output=out, models_dir=trained_models,
                        device="cpu", resume=True)
    assert third.count("skipped") == 3


def test_corrupt_case_is_reported_and_the_rest_complete(trained_models: Path, tmp_path: Path) -> None:
    _write_cases(tmp_path / "in", ["good1", "good2"])
    data = (tmp_path / "in" / "good1.nii.gz").read_bytes()
    (tmp_path / "in" / "broken.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "text.nii.gz").write_text("this is not an image")
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(tmp_path / "in"), "-o",
                                 str(tmp_path / "out"), "--models-dir", str(trained_models), "--device", "cpu"])
    assert result.exit_code == 1
    assert "2 done" in result.output and "2 failed" in result.output
    assert "broken.nii.gz" in result.output and "text.nii.gz" in result.output
    assert "Traceback" not in result.output
    # every run also writes its overview page and run record (see tests/test_report_e2e.py)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()
                  if p.name != "index.html" and not p.name.startswith("autoorgan_")  # run record, viewer tables
                  and not p.name.endswith(".error.json")) == [
        "good1.json", "good1.nii.gz", "good2.json", "good2.nii.gz"]


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    _write_cases(tmp_path / "in", ["x"])
    result = _predict_cli("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--models-dir",
                          str(tmp_path / "empty"))
    assert result.exit_code == 3
    assert "no model for task 'hip' (dataset 114)" in result.output
    assert str(tmp_path / "empty") in result.output and "install-weights" in result.output
    assert "Traceback" not in result.output
    no_dir = _predict_cli("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert no_dir.exit_code == 3 and "AUTOORGAN_MODELS" in no_dir.output


def _zip_model(models: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(models.rglob("*")):
            rel = path.relative_to(models)
            if path.is_file() and (rel.name in {"dataset.json", "plans.json", "checkpoint_final.pth"}):
                archive.write(path, rel.as_posix())
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return target


def test_install_weights_round_trip_and_refusals(trained_models: Path, tmp_path: Path) -> None:
    archive = _zip_model(trained_models, tmp_path / "hip_model.zip")
    fresh = tmp_path / "fresh_models"
    result = runner.invoke(app, ["install-weights", str(archive), "--models-dir", str(fresh)])
    assert result.exit_code == 0, result.output
    assert "serves task 'hip'" in result.output and "labels match the task table" in result.output
    again = runner.invoke(app, ["install-weights", str(archive), "--models-dir", str(fresh)])
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, ["install-weights", str(archive), "--models-dir", str(fresh), "--force"]).exit_code == 0
    # the installed copy predicts exactly like the original
    _write_cases(tmp_path / "in", ["z"])
    for models, out in ((trained_models, "o1"), (fresh, "o2")):
        assert _predict_cli("-i", str(tmp_path / "in"), "-o", str(tmp_path / out), "--models-dir",
                            str(models)).exit_code == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o1" / "z.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o2" / "z.nii.gz"))))
    # hostile archives are refused before anything is written
    evil = _zip_model(trained_models, tmp_path / "evil.zip", {"../escaped.txt": b"x"})
    target = tmp_path / "target_models"
    bad = runner.invoke(app, ["install-weights", str(evil), "--models-dir", str(target)])
    assert bad.exit_code == 2 and "outside the target" in bad.output
    assert not (tmp_path / "escaped.txt").exists()
    assert not any(p.is_file() for p in target.rglob("*")) if target.exists() else True
    absolute = _zip_model(trained_models, tmp_path / "abs.zip", {"/tmp/abs_escape.txt": b"x"})
    assert "absolute path" in runner.invoke(app, ["install-weights", str(absolute), "--models-dir",
                                                  str(target)]).output
    shutil.rmtree(fresh)


def test_model_is_loaded_once_per_run_via_the_python_api(trained_models: Path, tmp_path: Path) -> None:
    import autoorgan
    from autoorgan.batch.job import ProgressListener

    class Recorder(ProgressListener):
        def __init__(self) -> None:
            self.stages: list[tuple[str, str]] = []

        def case_stage(self, case_id: str, stage: str) -> None:
            self.stages.append((case_id, stage))

    _write_cases(tmp_path / "in", ["m1", "m2", "m3"])
    recorder = Recorder()
    result = autoorgan.predict(task="hip", input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                               models_dir=str(trained_models), device="cpu", listener=recorder)
    assert result.ok and result.count("done") == 3
    assert [s for _, s in recorder.stages].count("loading model") == 1
    assert [c for c, s in recorder.stages if s == "predicting"] == ["m1", "m2", "m3"]


def test_unavailable_device_is_a_clear_error(trained_models: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _write_cases(tmp_path / "in", ["d"])
    result = runner.invoke(app, ["predict", "--task", "hip", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                                 "--models-dir", str(trained_models), "--device", "cuda:1"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
