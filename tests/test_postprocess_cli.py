"""``autoorgan repair`` and the repair step of ``predict`` (real files, real fixture model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app
from autoorgan.io.image import Geometry, image_from_array
from fixture_model import FIXTURE_TASK, pelvis_phantom
from postprocess_maps import RAS, RIB, RIBS, VERTEBRAE, reorient, spine_and_ribs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from repair_cases import phantom_case
from repair_corruptions import swap_sides

runner = CliRunner()


def _write(array: np.ndarray, geometry: Geometry, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image_from_array(array, geometry), str(path))
    return path


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), image


def test_repair_file_with_vertebrae_and_ct_keeps_the_grid(tmp_path: Path) -> None:
    case = phantom_case(4, spacing=(2.0, 2.0, 3.0)).reoriented("LPS")
    corrupted = swap_sides(case.ribs, RIBS, [10, 11])
    labels = _write(corrupted, case.geometry, tmp_path / "in" / "ribs.nii.gz")
    vertebrae = _write(case.vertebrae, case.geometry, tmp_path / "in" / "vertebrae.nii.gz")
    ct = _write(case.ct, case.geometry, tmp_path / "in" / "ct.nii.gz")
    target = tmp_path / "out" / "fixed.nii.gz"
    result = runner.invoke(app, ["repair", "--task", "ribs", "-i", str(labels), "--vertebrae", str(vertebrae),
                                 "--ct", str(ct), "-o", str(target)])
    assert result.exit_code == 0, result.output
    fixed, image = _read(target)
    source = sitk.ReadImage(str(labels))
    assert image.GetSize() == source.GetSize() and image.GetPixelID() == source.GetPixelID()
    assert np.allclose(image.GetSpacing(), source.GetSpacing()) and np.allclose(image.GetOrigin(), source.GetOrigin())
    assert np.allclose(image.GetDirection(), source.GetDirection())
    assert np.array_equal(fixed, case.ribs)
    sidecar = json.loads((tmp_path / "out" / "fixed.json").read_text())
    changed = int((corrupted != case.ribs).sum())
    assert sidecar["task"] == "ribs" and sidecar["input"] == "ribs.nii.gz"
    assert sidecar["companions"] == {"vertebrae": "vertebrae.nii.gz", "ct": "ct.nii.gz"}
    steps = {s["step"]: s for s in sidecar["postprocess"]["steps"]}
    assert list(steps) == ["islands", "sides", "ribs", "junction"]
    assert steps["sides"]["changed_voxels"] == changed and sidecar["postprocess"]["changed_voxels"] == changed
    assert f"{changed} voxel(s) changed" in result.output
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_repair_folder_of_maps_in_any_orientation(tmp_path: Path) -> None:
    reference, vertebrae = spine_and_ribs()
    for codes in ("LPS", "PIR"):
        broken = reference.copy()
        broken[reference == RIB["rib_left_9"]] = RIB["rib_right_9"]
        labels, geometry = reorient(broken, RAS, codes)
        _write(labels, geometry, tmp_path / "maps" / f"case {codes}.nii.gz")
        spine, _ = reorient(vertebrae, RAS, codes)
        _write(spine, geometry, tmp_path / "spines" / f"case {codes}.nii.gz")
    result = runner.invoke(app, ["repair", "-t", "ribs", "-i", str(tmp_path / "maps"), "--vertebrae",
                                 str(tmp_path / "spines"), "-o", str(tmp_path / "fixed")])
    assert result.exit_code == 0, result.output
    for codes in ("LPS", "PIR"):
        fixed, _ = _read(tmp_path / "fixed" / f"case {codes}.nii.gz")
        expected, _ = reorient(reference, RAS, codes)
        assert np.array_equal(fixed, expected)
        assert (tmp_path / "fixed" / f"case {codes}.json").is_file()


def test_repair_step_selection_and_vertebrae_task(tmp_path: Path) -> None:
    _, vertebrae = spine_and_ribs()
    vertebrae[0, 0, 0] = vertebrae.max()  # a speck
    source = _write(vertebrae, RAS, tmp_path / "v.nii.gz")
    results = api.repair(task="vertebrae", input=source, output=tmp_path / "out", steps=["vertebrae"])
    assert [r.ok for r in results] == [True]
    assert [s["step"] for s in results[0].steps] == ["vertebrae"] and results[0].changed_voxels == 0
    assert results[0].output == tmp_path / "out" / "v.nii.gz"
    results = api.repair(task="vertebrae", input=source, output=tmp_path / "out2")
    assert results[0].changed_voxels == 1 and _read(results[0].output)[0][0, 0, 0] == 0


def test_repair_merged_map_takes_labels_from_its_sidecar(tmp_path: Path) -> None:
    reference, vertebrae = spine_and_ribs()
    merged = np.where(vertebrae > 0, 100 + vertebrae.astype(np.int64), reference).astype(np.uint8)
    merged[reference == RIB["rib_right_10"]] = RIB["rib_left_10"]
    names = {**{str(v): n for v, n in RIBS.items()}, **{str(100 + v): n for v, n in VERTEBRAE.items()}}
    source = _write(merged, RAS, tmp_path / "all" / "body.nii.gz")
    (tmp_path / "all" / "body.json").write_text(json.dumps({"labels": names}))
    result = runner.invoke(app, ["repair", "--task", "all", "-i", str(source), "-o", str(tmp_path / "f.nii.gz")])
    assert result.exit_code == 0, result.output
    fixed, _ = _read(tmp_path / "f.nii.gz")
    assert np.array_equal(fixed, np.where(vertebrae > 0, 100 + vertebrae.astype(np.int64), reference))
    steps = [s["step"] for s in json.loads((tmp_path / "f.json").read_text())["postprocess"]["steps"]]
    assert steps == ["islands", "sides", "vertebrae", "ribs"]


def test_repair_errors_are_one_line(tmp_path: Path) -> None:
    reference, _ = spine_and_ribs()
    source = _write(reference, RAS, tmp_path / "ribs.nii.gz")
    result = runner.invoke(app, ["repair", "--task", "ribs", "-i", str(tmp_path / "missing"), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    other = Geometry(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                     direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    vertebrae = _write(np.zeros(other.size, np.uint8), other, tmp_path / "v.nii.gz")
    result = runner.invoke(app, ["repair", "--task", "ribs", "-i", str(source), "--vertebrae", str(vertebrae),
                                 "-o", str(tmp_path / "out.nii.gz")])
    assert result.exit_code == 1 and "not on the label map's grid" in result.output
    assert not (tmp_path / "out.nii.gz").exists()
    result = runner.invoke(app, ["repair", "--task", "all", "-i", str(source), "-o", str(tmp_path / "o2.nii.gz")])
    assert result.exit_code == 1 and "needs its sidecar ribs.json" in result.output
    bad = reference.copy()
    bad[0, 0, 0] = 200
    _write(bad, RAS, tmp_path / "bad.nii.gz")
    result = runner.invoke(app, ["repair", "--task", "ribs", "-i", str(tmp_path / "bad.nii.gz"), "-o",
                                 str(tmp_path / "o3.nii.gz")])
    assert result.exit_code == 1 and "label value(s) 200 are not in the label table" in result.output
    result = runner.invoke(app, ["repair", "--task", "ribs", "-i", str(source), "--step", "smooth", "-o",
                                 str(tmp_path / "o4.nii.gz")])
    assert result.exit_code == 2 and "unknown repair step(s) smooth" in result.output


@pytest.mark.e2e
def test_predict_repairs_bone_tasks_by_default(trained_models: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(pelvis_phantom(321).ct, str(tmp_path / "in" / "p.nii.gz"))
    api.predict(task=FIXTURE_TASK, input=tmp_path / "in", output=tmp_path / "on", models_dir=trained_models,
                device="cpu")
    sidecar = json.loads((tmp_path / "on" / "p.json").read_text())
    assert [s["step"] for s in sidecar["postprocess"]["steps"]] == ["islands", "sides"]
    assert sidecar["postprocess"]["steps"][1]["midline_from"] == "midline structures"
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(tmp_path / "in"), "-o",
                                 str(tmp_path / "off"), "--models-dir", str(trained_models), "--device", "cpu",
                                 "--quiet", "--no-postprocess"])
    assert result.exit_code == 0, result.output
    assert "postprocess" not in json.loads((tmp_path / "off" / "p.json").read_text())
    on, _ = _read(tmp_path / "on" / "p.nii.gz")
    off, _ = _read(tmp_path / "off" / "p.nii.gz")
    assert int((on != off).sum()) == sidecar["postprocess"]["changed_voxels"]
