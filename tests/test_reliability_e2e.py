"""Bad input, repeatability and the geometry property, with the real fixture model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autoorgan import api, engine
from autoorgan.batch.job import BatchJob
from autoorgan.cli.app import app
from autoorgan.io.cases import Case
from autoorgan.models.store import require_model
from autoorgan.registry.tasks import load_registry
from autoorgan.steps.segment import ModelPool, TaskModel, TaskSegmenter
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e
runner = CliRunner()
TASK = load_registry()[FIXTURE_TASK]


def _run(models: Path, inp: Path, out: Path, *extra: str) -> object:
    return runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(inp), "-o", str(out), "--models-dir",
                               str(models), "--device", "cpu", "--quiet", *extra])


def test_same_input_gives_byte_identical_label_maps(trained_models: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(pelvis_phantom(11).ct, str(tmp_path / "in" / "r.nii.gz"))
    digests = []
    for out in ("o1", "o2"):
        assert _run(trained_models, tmp_path / "in", tmp_path / out).exit_code == 0
        digests.append(hashlib.sha256((tmp_path / out / "r.nii.gz").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_odd_but_valid_inputs(trained_models: Path, tmp_path: Path) -> None:
    inp = tmp_path / "ïnput földer" / "ct ü"
    inp.mkdir(parents=True)
    base = pelvis_phantom(12).ct
    sitk.WriteImage(base, str(inp / "pätient 01.nii.gz"))
    nan = sitk.Cast(base, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(nan)
    arr[0, :3, :3] = np.nan
    nan_img = sitk.GetImageFromArray(arr)
    nan_img.CopyInformation(base)
    sitk.WriteImage(nan_img, str(inp / "nan.nii.gz"))
    tiny = base[:6, :5, :4]  # smaller than the model's patch in every axis
    sitk.WriteImage(tiny, str(inp / "tiny.nii.gz"))
    fine = sitk.GetImageFromArray(np.random.default_rng(1).integers(-1000, 1200, (48, 64, 64)).astype(np.int16))
    fine.SetSpacing((0.2, 0.2, 0.2))  # 12.8 x 12.8 x 9.6 mm
    sitk.WriteImage(fine, str(inp / "fine.nii.gz"))
    coarse = sitk.Image(base[:10, :8, :6])
    coarse.SetSpacing((10.0, 10.0, 10.0))
    sitk.WriteImage(coarse, str(inp / "coarse.nii.gz"))
    mr = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 800, (12, 14, 16)).astype(np.float32))
    sitk.WriteImage(mr, str(inp / "mr_like.nii.gz"))
    out = tmp_path / "ôut put"
    result = _run(trained_models, inp, out)
    assert result.exit_code == 0, result.output
    for case in ("pätient 01", "nan", "tiny", "fine", "coarse", "mr_like"):
        seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        src = sitk.ReadImage(str(inp / f"{case}.nii.gz"))
        assert seg.GetSize() == src.GetSize() and np.allclose(seg.GetSpacing(), src.GetSpacing())
        assert np.allclose(seg.GetOrigin(), src.GetOrigin()) and np.allclose(seg.GetDirection(), src.GetDirection())
    assert "warnings" in json.loads((out / "mr_like.json").read_text())
    assert "warnings" not in json.loads((out / "pätient 01.json").read_text())


def test_not_3d_and_broken_files_fail_alone(trained_models: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    sitk.WriteImage(pelvis_phantom(13).ct, str(inp / "ok.nii.gz"))
    sitk.WriteImage(sitk.Image(20, 20, sitk.sitkInt16), str(inp / "flat.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(inp / "four_d.nii.gz"))
    (inp / "zero.nii.gz").write_bytes(b"")
    result = _run(trained_models, inp, tmp_path / "out")
    assert result.exit_code == 1
    assert "flat.nii.gz: image is 2D" in result.output
    assert "four_d.nii.gz: image is 4D" in result.output
    assert "zero.nii.gz: file is empty" in result.output
    assert (tmp_path / "out" / "ok.nii.gz").is_file()
    for case in ("flat", "four_d", "zero"):
        assert not (tmp_path / "out" / f"{case}.nii.gz").exists()


def test_output_folder_inside_input_folder_is_not_read_back(trained_models: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    sitk.WriteImage(pelvis_phantom(14).ct, str(inp / "only.nii.gz"))
    for _ in range(2):
        result = _run(trained_models, inp, inp / "results", "--continue")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (inp / "results").glob("*.nii.gz")) == ["only.nii.gz"]


@pytest.fixture(scope="module")
def segmenter(trained_models: Path) -> engine.Segmenter:
    return engine.Segmenter(require_model(TASK, trained_models).folder, 0, torch.device("cpu"))


def _random_direction(draw: st.DrawFn) -> np.ndarray:
    perm = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    matrix = np.zeros((3, 3))
    for col, row in enumerate(perm):
        matrix[row, col] = signs[col]
    angle = draw(st.sampled_from([0.0, 0.0, 7.0, 30.0, 44.0]))
    axis = np.array([draw(st.floats(0.1, 1.0)) for _ in range(3)])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.deg2rad(angle)
    rotation = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    return rotation @ matrix


@st.composite
def _geometries(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], np.ndarray]:
    spacing = tuple(draw(st.floats(0.3, 8.0)) for _ in range(3))
    # at least 12 mm along every axis (one voxel of the model's grid is 4-5 mm)
    # ... and at most ~120 mm, which keeps the sliding window to a few patches
    size = tuple(draw(st.integers(max(3, int(np.ceil(12.0 / sp))), max(4, min(40, int(120.0 / sp)))))
                 for sp in spacing)
    origin = tuple(draw(st.floats(-500.0, 500.0)) for _ in range(3))
    return size, spacing, origin, _random_direction(draw)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=_geometries())
def test_output_grid_always_equals_input_grid(segmenter: engine.Segmenter, trained_models: Path, tmp_path_factory: pytest.TempPathFactory,
                                              geometry: tuple) -> None:
    size, spacing, origin, direction = geometry
    folder = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1500, size[::-1]).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    path = folder / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    stored = sitk.ReadImage(str(path))  # NIfTI stores the grid in float32: compare with what was stored
    location = require_model(TASK, trained_models)
    one_task = TaskSegmenter(TaskModel.of(TASK, location), ModelPool(lambda model: segmenter), engine.nnunet_version())
    job = BatchJob(task=TASK, cases=[Case("case", path)], output_dir=folder / "out", segmenter=one_task)
    assert job.run().ok
    seg = sitk.ReadImage(str(folder / "out" / "case.nii.gz"))
    assert seg.GetSize() == stored.GetSize()
    assert np.allclose(seg.GetSpacing(), stored.GetSpacing(), rtol=1e-6)
    assert np.allclose(seg.GetOrigin(), stored.GetOrigin(), atol=1e-4)
    assert np.allclose(seg.GetDirection(), stored.GetDirection(), atol=1e-6)


def test_image_smaller_than_one_model_voxel_is_a_clear_failure(trained_models: Path, tmp_path: Path) -> None:
    img = sitk.Image(3, 3, 3, sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 0.5))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(img, str(tmp_path / "in" / "speck.nii.gz"))
    result = _run(trained_models, tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 1
    assert "speck" in result.output and "smaller than one voxel of the model's working grid" in result.output


def test_api_predict_single_file(trained_models: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(pelvis_phantom(15).ct, str(path))
    result = api.predict(task=FIXTURE_TASK, input=path, output=tmp_path / "o", models_dir=trained_models, device="cpu")
    assert [r.case_id for r in result.results] == ["one"] and result.ok
