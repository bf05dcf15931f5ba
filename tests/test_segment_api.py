"""``autoorgan.segment``: an image held in memory, segmented by the same run as ``predict``.

The demo model segments one phantom stored on an oblique, non-RAS grid; for each kind of input
(SimpleITK, nibabel, NumPy) the labels must come back in that kind, on exactly the input's grid,
equal to the label map ``autoorgan.predict`` writes for the same image in a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import autoorgan
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.errors import CaseError, InputError

pytestmark = pytest.mark.e2e

MODEL = {"models_dir": demo_models_dir(), "tasks_file": demo_tasks_file(), "device": "cpu"}
#: SimpleITK's world is LPS, nibabel's RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def oblique_ct() -> sitk.Image:
    """A demo phantom on a grid turned 17° about z and flipped (no axis along RAS), with an origin
    that float32 cannot hold."""
    ct = demo_phantom(3).ct
    angle = np.deg2rad(17.0)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    ct.SetDirection((turn @ np.diag([-1.0, 1.0, -1.0])).ravel().tolist())
    ct.SetOrigin((12.345678901234567, -98.76543210987654, 3.141592653589793))
    return ct


@pytest.fixture(scope="module")
def reference(oblique_ct: sitk.Image, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The labels (``[x, y, z]``) that ``autoorgan.predict`` writes for the image in a file."""
    folder = tmp_path_factory.mktemp("reference")
    sitk.WriteImage(oblique_ct, str(folder / "ct.nii.gz"))
    result = autoorgan.predict(DEMO_TASK, folder / "ct.nii.gz", folder / "out", **MODEL)
    assert result.ok, result.failed
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "out" / "ct.nii.gz"))).transpose(2, 1, 0)
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # the model finds every structure
    return labels


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Temporary folders go to a folder of the test's own, which must hold no autoorgan folder
    afterwards (whatever the test's outcome)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith("autoorgan"))
    assert not left, f"temporary folders left behind: {left}"


def _table() -> dict[int, str]:
    return autoorgan.task_labels(DEMO_TASK, tasks_file=demo_tasks_file())


def _check_result(seg: Any, labels_xyz: np.ndarray, reference: np.ndarray) -> None:
    np.testing.assert_array_equal(labels_xyz, reference)
    assert seg.label_table == _table() == {1: "hip_left", 2: "hip_right", 3: "sacrum"}
    assert seg.sidecar["task"] == DEMO_TASK and seg.sidecar["labels"] == {"1": "hip_left", "2": "hip_right",
                                                                          "3": "sacrum"}


def test_simpleitk_image_comes_back_on_its_exact_grid(oblique_ct: sitk.Image, reference: np.ndarray) -> None:
    seg = autoorgan.segment(oblique_ct, task=DEMO_TASK, **MODEL)
    assert isinstance(seg, autoorgan.Segmented) and isinstance(seg.labels, sitk.Image)
    assert seg.labels.GetSize() == oblique_ct.GetSize()
    assert seg.labels.GetSpacing() == oblique_ct.GetSpacing()
    assert seg.labels.GetOrigin() == oblique_ct.GetOrigin()  # exactly: copied, not read from a file
    assert seg.labels.GetDirection() == oblique_ct.GetDirection()
    _check_result(seg, sitk.GetArrayFromImage(seg.labels).transpose(2, 1, 0), reference)


def _nifti(ct: sitk.Image, kind: type) -> Any:
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(ct.GetDirection()).reshape(3, 3) @ np.diag(ct.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(ct.GetOrigin())
    return kind(sitk.GetArrayFromImage(ct).transpose(2, 1, 0), affine)


@pytest.mark.parametrize("kind", [nib.Nifti1Image, nib.Nifti2Image])
def test_nibabel_image_comes_back_with_its_affine(oblique_ct: sitk.Image, reference: np.ndarray, kind: type,
                                                 tmp_path: Path) -> None:
    nib.save(_nifti(oblique_ct, kind), tmp_path / "ct.nii")
    image = nib.load(tmp_path / "ct.nii")  # as users have them: read from a file, header and all
    seg = autoorgan.segment(image, DEMO_TASK, **MODEL)
    assert type(seg.labels) is kind
    assert seg.labels.shape == image.shape
    np.testing.assert_array_equal(seg.labels.affine, image.affine)
    for code in ("qform_code", "sform_code"):
        assert seg.labels.header[code] == image.header[code]
    _check_result(seg, np.asanyarray(seg.labels.dataobj), reference)
    # it saves and reads back as any NIfTI, on the input's grid
    nib.save(seg.labels, tmp_path / "labels.nii.gz")
    again = nib.load(tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(again.affine, image.affine)
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), reference)


def test_numpy_array_in_x_y_z_order_with_its_grid(oblique_ct: sitk.Image, reference: np.ndarray) -> None:
    array = sitk.GetArrayFromImage(oblique_ct).transpose(2, 1, 0)
    seg = autoorgan.segment(array, DEMO_TASK, spacing=oblique_ct.GetSpacing(), origin=oblique_ct.GetOrigin(),
                            direction=oblique_ct.GetDirection(), **MODEL)
    assert isinstance(seg.labels, np.ndarray) and seg.labels.shape == array.shape
    _check_result(seg, seg.labels, reference)
    with pytest.raises(InputError, match="spacing"):
        autoorgan.segment(array, DEMO_TASK, **MODEL)


def test_output_folder_keeps_the_files(oblique_ct: sitk.Image, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    seg = autoorgan.segment(oblique_ct, DEMO_TASK, output=keep, name="pelvis", statistics=True, **MODEL)
    assert {"pelvis.nii.gz", "pelvis.json", "pelvis.stats.json", "index.html"} <= {p.name for p in keep.iterdir()}
    written = sitk.ReadImage(str(keep / "pelvis.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(seg.labels))
    assert json.loads((keep / "pelvis.json").read_text()) == seg.sidecar


def test_nothing_is_written_without_output(oblique_ct: sitk.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          private_tempdir: Path) -> None:
    monkeypatch.chdir(tmp_path)
    autoorgan.segment(oblique_ct, DEMO_TASK, **MODEL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert list(private_tempdir.iterdir()) == []


def test_a_case_that_fails_raises_its_one_line_reason(oblique_ct: sitk.Image) -> None:
    with pytest.raises(CaseError) as caught:
        autoorgan.segment(sitk.Compose(oblique_ct, oblique_ct), DEMO_TASK, **MODEL)
    message = str(caught.value)
    assert "2 components per voxel" in message and "\n" not in message
    assert ".mha" not in message  # the temporary file is not the user's


@pytest.mark.parametrize("image", [[[1, 2], [3, 4]], "ct.nii.gz", None, sitk.Image(8, 8, sitk.sitkInt16)],
                         ids=["list", "path", "none", "2d-image"])
def test_other_inputs_are_refused_in_one_line(image: Any) -> None:
    with pytest.raises(InputError) as caught:
        autoorgan.segment(image, DEMO_TASK, **MODEL)
    assert "\n" not in str(caught.value)


def test_options_are_checked_before_anything_runs(oblique_ct: sitk.Image) -> None:
    with pytest.raises(TypeError, match="segment\\(\\): unknown predict option\\(s\\): colour"):
        autoorgan.segment(oblique_ct, DEMO_TASK, colour="red", **MODEL)
    for refused in ({"resume": True}, {"skip_failed": True}, {"num_parts": 2}, {"split_only": True},
                    {"output_type": "dicom-seg"}, {"statistics": True}, {"preview": True}, {"split": True}):
        with pytest.raises(InputError):
            autoorgan.segment(oblique_ct, DEMO_TASK, **refused, **MODEL)
    with pytest.raises(InputError, match="only go with a NumPy array"):
        autoorgan.segment(oblique_ct, DEMO_TASK, spacing=(1, 1, 1), **MODEL)
    with pytest.raises(InputError, match="name"):
        autoorgan.segment(oblique_ct, DEMO_TASK, name="../up", **MODEL)


def test_public_api_is_listed_and_import_stays_cheap() -> None:
    for name in ("segment", "Segmented", "predict", "train", "repair", "export_weights", "install_weights",
                 "list_tasks", "task_labels", "PredictOptions"):
        assert name in dir(autoorgan) and name in autoorgan.__all__
        assert getattr(autoorgan, name) is not None
    assert _table() == autoorgan.task_labels(task=DEMO_TASK, tasks_file=demo_tasks_file())
    loaded = subprocess.run([sys.executable, "-c", "import sys, autoorgan; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert "'SimpleITK'" not in loaded and "'numpy'" not in loaded and "'nibabel'" not in loaded
