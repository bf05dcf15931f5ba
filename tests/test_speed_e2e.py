"""The speed options end to end on the real fixture model: the torch export gives nnU-Net's labels,
the sidecar records the time split, the body crop gives the whole image's labels inside the body
box, ``--fast`` agrees with the default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app
from autoorgan.engine.body import body_box, box_fraction
from autoorgan.report.metrics import dice_per_label
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e
runner = CliRunner()
STAGES = {"read", "preprocess", "network", "export", "write", "total"}


def _resampled(image: sitk.Image, spacing: tuple[float, float, float]) -> sitk.Image:
    """``image`` on a grid of ``spacing`` (so that nnU-Net's export has to resample)."""
    size = [round(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), -1000, sitk.sitkInt16)


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantoms off the model's 4×4×5 mm grid: one finer in-plane, one anisotropic (nnU-Net
    resamples it with nearest neighbour along z)."""
    folder = tmp_path_factory.mktemp("speed_in")
    sitk.WriteImage(_resampled(pelvis_phantom(31).ct, (3.0, 3.0, 4.0)), str(folder / "fine.nii.gz"))
    sitk.WriteImage(_resampled(pelvis_phantom(32).ct, (2.0, 2.0, 9.0)), str(folder / "aniso.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def default_out(trained_models: Path, cases: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("speed_default")
    result = api.predict(task=FIXTURE_TASK, input=cases, output=out, models_dir=trained_models, device="cpu",
                         postprocess=False)
    assert [r.status for r in result.results] == ["done", "done"]
    return out


def test_torch_export_gives_nnunets_labels_and_the_time_split(trained_models: Path, cases: Path,
                                                               default_out: Path, tmp_path: Path) -> None:
    result = api.predict(task=FIXTURE_TASK, input=cases, output=tmp_path, models_dir=trained_models, device="cpu",
                         postprocess=False, export="nnunet")
    assert result.ok
    for case in ("fine", "aniso"):
        ours, theirs = _labels(default_out / f"{case}.nii.gz"), _labels(tmp_path / f"{case}.nii.gz")
        assert set(np.unique(theirs)) == {0, 1, 2, 3}
        assert min(dice_per_label(theirs, ours, [1, 2, 3]).values()) >= 0.999
        assert (ours != theirs).mean() < 1e-4
        timing = json.loads((default_out / f"{case}.json").read_text(encoding="utf-8"))["timing"]
        assert set(timing) == STAGES
        assert all(v >= 0 for v in timing.values())
        assert timing["total"] >= timing["network"] + timing["export"]


def test_crop_body_predicts_the_body_box_and_keeps_the_grid(trained_models: Path, cases: Path,
                                                              tmp_path: Path) -> None:
    """With air around the body, ``crop_body`` runs only the tiles reaching into the body box (the
    body plus a 20 mm margin): inside it the labels are the whole image's, outside background,
    on the full input grid."""
    body = sitk.ReadImage(str(cases / "fine.nii.gz"))
    padded = sitk.ConstantPad(body, [12, 10, 9], [11, 12, 8], -1000)
    inside = body_box(sitk.GetArrayFromImage(padded), padded.GetSpacing()[::-1])  # z, y, x
    assert inside is not None and box_fraction(inside, padded.GetSize()) < 0.6
    (tmp_path / "padded").mkdir()
    sitk.WriteImage(padded, str(tmp_path / "padded" / "c.nii.gz"))
    cropped = api.predict(task=FIXTURE_TASK, input=tmp_path / "padded", output=tmp_path / "out_crop",
                          models_dir=trained_models, device="cpu", postprocess=False, crop_body=True)
    whole = api.predict(task=FIXTURE_TASK, input=tmp_path / "padded", output=tmp_path / "out_whole",
                        models_dir=trained_models, device="cpu", postprocess=False)
    assert cropped.ok and whole.ok
    assert _same_grid(sitk.ReadImage(str(tmp_path / "out_crop" / "c.nii.gz")), padded)
    labels, expected = _labels(tmp_path / "out_crop" / "c.nii.gz"), _labels(tmp_path / "out_whole" / "c.nii.gz")
    assert set(np.unique(expected[inside])) == {0, 1, 2, 3}
    assert np.array_equal(labels[inside], expected[inside])
    outside = labels.copy()
    outside[inside] = 0
    assert not outside.any()
    record = json.loads(next((tmp_path / "out_crop").glob("autoorgan_run-part*.json")).read_text(encoding="utf-8"))
    assert record["options"]["crop_body"] is True and record["options"]["tta"] is True


def test_fast_preset_on_the_command_line(trained_models: Path, cases: Path, default_out: Path,
                                         tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(cases), "-o", str(tmp_path),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--quiet",
                                 "--no-postprocess", "--fast"])
    assert result.exit_code == 0, result.output
    for case in ("fine", "aniso"):
        fast, full = _labels(tmp_path / f"{case}.nii.gz"), _labels(default_out / f"{case}.nii.gz")
        assert min(dice_per_label(full, fast, [1, 2, 3]).values()) >= 0.99
    record = json.loads(next(tmp_path.glob("autoorgan_run-part*.json")).read_text(encoding="utf-8"))
    assert {k: record["options"][k] for k in ("fast", "tta", "crop_body", "step_size", "export")} == {
        "fast": True, "tta": False, "crop_body": True, "step_size": 0.5, "export": "torch"}


def test_bad_speed_options_are_one_line_errors(trained_models: Path, cases: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(cases), "-o", str(tmp_path),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--export", "scipy"])
    assert result.exit_code == 2
    assert "export must be one of torch, nnunet, got 'scipy'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(cases), "-o", str(tmp_path),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--step-size", "0"])
    assert result.exit_code == 2 and "step size must be in (0, 1], got 0.0" in result.output
