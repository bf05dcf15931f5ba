"""Anatomical checks and where a model's orientation comes from, on hand-built maps and folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.anatomy.checks import check_anatomy, side_swaps
from autoorgan.anatomy.priors import load_priors, series_position
from autoorgan.demo.phantom import reorient, rotate
from autoorgan.errors import InputError, ModelLoadError, ModelNotFoundError
from autoorgan.io.image import Geometry
from autoorgan.io.orientation import all_axcodes, parse_orientation
from autoorgan.models.orientation import (
    CALIBRATION_FILE,
    OrientationSource,
    dataset_json_orientation,
    default_orientation_warning,
    resolve_model_orientation,
)
from autoorgan.models.store import find_model
from autoorgan.options import PredictOptions
from autoorgan.registry.tasks import Task, load_registry
from fixture_model import FIXTURE_STRUCTURES, pelvis_phantom

NAMES = dict(enumerate(FIXTURE_STRUCTURES, start=1))  # hip_left, hip_right, sacrum


def _truth(codes: str) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """The pelvis phantom's true labels and CT stored in ``codes`` (``oblique``: tilted 11°)."""
    phantom = pelvis_phantom(4242)
    labels, ct = phantom.labels_for(NAMES), phantom.ct
    if codes == "oblique":
        labels, ct = rotate(labels, 11.0, (1.0, 1.0, 0.0)), rotate(ct, 11.0, (1.0, 1.0, 0.0))
    else:
        labels, ct = reorient(labels, codes), reorient(ct, codes)
    return (sitk.GetArrayFromImage(labels).transpose(2, 1, 0), Geometry.of(labels),
            sitk.GetArrayFromImage(ct).transpose(2, 1, 0))


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIL", "SAR", "oblique"])
def test_true_anatomy_passes_in_any_storage_order(codes: str) -> None:
    labels, geometry, ct = _truth(codes)
    report = check_anatomy(labels, geometry, NAMES, ct=ct)
    assert report.passed, report.failures
    # hip_left/hip_right, sacrum between them, sacrum above and behind both hip bones
    assert report.tested == 6
    assert report.agreement is not None and report.agreement > 0.8


def test_swapped_sides_fail_the_sides_check() -> None:
    labels, geometry, ct = _truth("LPS")
    swapped = labels.copy()
    swapped[labels == 1], swapped[labels == 2] = 2, 1
    report = check_anatomy(swapped, geometry, NAMES, ct=ct)
    assert report.of("sides").failures == ("hip_left lies to the right of hip_right",  # type: ignore[union-attr]
                                           "sacrum does not lie between the left and right structures")
    assert report.of("order").failures == ()  # type: ignore[union-attr]


def test_feet_first_stored_as_head_first_fails_the_order_check() -> None:
    """A series whose direction matrix says head-first while the patient lay feet-first: the
    voxels are right, the world is upside down (and left/right mirrored as seen from the feet)."""
    labels, geometry, ct = _truth("RAS")
    wrong = Geometry(size=geometry.size, spacing=geometry.spacing, origin=geometry.origin,
                     direction=tuple((geometry.direction_matrix @ np.diag([1.0, 1.0, -1.0])).ravel()))
    report = check_anatomy(labels, wrong, NAMES, ct=ct)
    assert not report.passed
    assert "sacrum lies below hip_left" in report.failures


def test_midline_structure_outside_the_pair_fails() -> None:
    labels, geometry, ct = _truth("RAS")
    moved = np.where(labels == 3, 0, labels)
    hip_right = np.argwhere(labels == 2)
    # a "sacrum" put on the far right of the right hip bone
    far = hip_right[hip_right[:, 0] == hip_right[:, 0].max()]  # RAS: x grows to the right
    moved[tuple(far.T)] = 3
    report = check_anatomy(moved, geometry, NAMES, ct=ct)
    assert "sacrum does not lie between the left and right structures" in report.failures


def test_numbered_series_and_organ_sides() -> None:
    """Vertebrae out of order and a liver on the left fail; the right order passes."""
    geometry = Geometry(size=(40, 40, 60), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))  # LPS storage: index z grows to the head
    names = {1: "vertebrae_T12", 2: "vertebrae_L1", 3: "liver", 4: "spleen"}
    labels = np.zeros(geometry.size, dtype=np.uint8)
    labels[18:22, 25:30, 40:48] = 1  # T12 above
    labels[18:22, 25:30, 28:36] = 2  # L1 below
    labels[2:12, 5:20, 30:50] = 3    # liver on the patient's right (low x in LPS)
    labels[30:38, 15:25, 35:45] = 4  # spleen on the left
    ct = np.full(geometry.size, 40.0)
    good = check_anatomy(labels, geometry, names, ct=ct)
    assert good.passed and good.of("organ_sides").tested == 2  # type: ignore[union-attr]
    bad = labels.copy()
    bad[labels == 1], bad[labels == 2] = 2, 1
    bad = np.flip(bad, axis=0)  # liver to the left, spleen to the right, vertebrae swapped
    report = check_anatomy(np.ascontiguousarray(bad), geometry, names, ct=ct)
    assert "vertebrae_T12 lies below vertebrae_L1" in report.failures
    assert "liver lies on the patient's left" in report.failures
    assert "spleen lies on the patient's right" in report.failures


def test_series_positions_and_priors() -> None:
    assert series_position("vertebrae_T1") == ("vertebrae", 7)
    assert series_position("rib_left_3") == ("rib_left", 3)
    assert series_position("liver") is None
    priors = load_priors()
    assert priors.side_of("liver") == "right" and priors.side_of("kidney_left") == "left"
    assert priors.level_of("skull") < priors.level_of("sacrum") < priors.level_of("femur_left")  # type: ignore[operator]
    # every structure the priors name is one some task knows
    known = {n for t in load_registry().values() for n in t.labels.values()} | {"sternum", "spinal_cord"}
    named = set(priors.side) | {n for level in (*priors.levels, *priors.depths) for n in level}
    assert named <= known


def test_repair_moving_most_of_a_structure_is_a_swap() -> None:
    raw = np.zeros((10, 4, 4), dtype=np.uint8)
    raw[0:4] = 1
    raw[6:10] = 1  # the model called both hip bones "left"
    repaired = raw.copy()
    repaired[0:4] = 2
    assert side_swaps(raw, repaired, NAMES) == []  # half moved: not "most"
    repaired[6:8] = 2
    assert side_swaps(raw, repaired, NAMES) == ["hip_left"]
    assert side_swaps(raw, raw, NAMES) == []


def test_48_candidate_orientations_and_parsing() -> None:
    codes = all_axcodes()
    assert len(codes) == len(set(codes)) == 48
    assert parse_orientation("lps") == "LPS" and parse_orientation("native") is None
    with pytest.raises(ValueError):
        parse_orientation("LLS")
    assert PredictOptions(orientation="pil").orientation == "PIL"
    with pytest.raises(InputError, match="--orientation"):
        PredictOptions(orientation="RAX")


# -- where a model's orientation comes from ----------------------------------------------------

def _model_folder(tmp_path: Path, dataset: dict | None = None) -> Path:
    folder = tmp_path / "Dataset114_hip" / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "plans.json").write_text("{}")
    fields = {"labels": {"background": 0, "hip_left": 1}, **(dataset or {})}
    (folder / "dataset.json").write_text(json.dumps(fields))
    return folder


TASK = Task(name="hip", dataset_id=114, labels={1: "hip_left"})


def test_orientation_precedence(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, {"overwrite_image_reader_writer": "NibabelIOWithReorient"})
    assert resolve_model_orientation(TASK, folder).source is OrientationSource.DATASET_JSON
    assert resolve_model_orientation(TASK, folder).codes == "RAS"
    stated = Task(name="hip", dataset_id=114, labels={1: "hip_left"}, orientation="PIL")
    assert (resolve_model_orientation(stated, folder).codes, resolve_model_orientation(stated, folder).source) == (
        "PIL", OrientationSource.TASK_TABLE)
    (folder / CALIBRATION_FILE).write_text(json.dumps({"orientation": "LPS", "margin": 0.3}))
    calibrated = resolve_model_orientation(stated, folder)
    assert (calibrated.codes, calibrated.source) == ("LPS", OrientationSource.CALIBRATION)
    assert calibrated.record() == {"orientation": "LPS", "source": "calibration",
                                   "detail": f"{CALIBRATION_FILE}, margin 0.300"}
    forced = resolve_model_orientation(stated, folder, "native")
    assert (forced.codes, forced.label, forced.source) == (None, "native", OrientationSource.OPTION)


def test_default_orientation_only_when_nothing_says(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    found = resolve_model_orientation(TASK, folder)
    assert (found.codes, found.source) == ("RAS", OrientationSource.DEFAULT)
    assert "autoorgan calibrate --task hip" in default_orientation_warning(TASK)
    # autoorgan train records its orientation; "native" says nothing about the arrays
    (folder / "dataset.json").write_text(json.dumps({"autoorgan": {"orientation": "native"}}))
    assert resolve_model_orientation(TASK, folder).source is OrientationSource.DEFAULT
    (folder / "dataset.json").write_text(json.dumps({"autoorgan": {"orientation": "ASL"}}))
    assert dataset_json_orientation(folder / "dataset.json") == "ASL"


@pytest.mark.parametrize("record", ["{not json", json.dumps({"orientation": "XYZ"}), json.dumps({"margin": 1})])
def test_an_unusable_calibration_record_is_one_line(tmp_path: Path, record: str) -> None:
    folder = _model_folder(tmp_path)
    (folder / CALIBRATION_FILE).write_text(record)
    with pytest.raises(ModelLoadError, match="remove it and run 'autoorgan calibrate' again"):
        resolve_model_orientation(TASK, folder)


def test_a_model_folder_as_released_stands_in(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    released = folder.with_name("nnUNetTrainer__nnUNetPlans__3d_fullres")
    folder.rename(released)
    location = find_model(TASK, tmp_path)
    assert location is not None and location.folder == released
    assert location.stands_in_for == "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    assert location.model_parts == ("nnUNetTrainer", "nnUNetPlans", "3d_fullres")
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres" in (location.note() or "")
    # several others: the error names them and the options that pick one
    _model_folder(tmp_path).rename(released.with_name("nnUNetTrainer_250epochs__nnUNetPlans__3d_fullres"))
    with pytest.raises(ModelNotFoundError, match="nnUNetTrainer_250epochs__nnUNetPlans__3d_fullres.*--trainer"):
        find_model(TASK, tmp_path)
    # the configured folder itself always wins
    _model_folder(tmp_path)
    assert find_model(TASK, tmp_path).stands_in_for is None  # type: ignore[union-attr]
