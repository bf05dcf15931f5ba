"""--roi-subset names and label filtering, per-structure masks and SNOMED coding, on hand-built data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.batch.job import CaseContext
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.errors import InputError
from autoorgan.io.cases import Case
from autoorgan.io.dicom_seg import structure_code
from autoorgan.io.image import Geometry, Volume
from autoorgan.registry.tasks import load_registry
from autoorgan.steps.roi import RoiSubsetStep, keep_labels, resolve_roi_subset
from autoorgan.steps.split import SplitMasksStep

ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}


def test_roi_names_are_forgiving_and_sorted_by_value() -> None:
    assert resolve_roi_subset(ORGANS, ["Liver", " kidney-left ", "SPLEEN"]) == {1: "spleen", 3: "kidney_left",
                                                                                  5: "liver"}


def test_roi_typo_gets_a_did_you_mean() -> None:
    with pytest.raises(InputError, match=r"'livr' is not a structure of task 'organs'; did you mean 'liver'\?"):
        resolve_roi_subset(ORGANS, ["spleen", "livr"], "organs")


def test_roi_unknown_name_without_close_match_points_to_the_label_list() -> None:
    with pytest.raises(InputError, match=r"'femur' is not a structure of task 'organs'; see 'autoorgan labels organs'"):
        resolve_roi_subset(ORGANS, ["femur"], "organs")


def test_roi_empty_is_refused() -> None:
    with pytest.raises(InputError, match="names no structure"):
        resolve_roi_subset(ORGANS, ["", " "])


def test_keep_labels_zeroes_the_rest_and_keeps_dtype() -> None:
    labels = np.array([[0, 1, 2], [3, 5, 5]], dtype=np.uint8)
    kept = keep_labels(labels, [5, 1])
    assert kept.dtype == np.uint8
    assert kept.tolist() == [[0, 1, 0], [0, 5, 5]]
    assert labels.tolist() == [[0, 1, 2], [3, 5, 5]]  # input untouched


def _context(tmp_path: Path, labels: np.ndarray) -> CaseContext:
    geometry = Geometry(size=labels.shape, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0),
                        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    task = load_registry().get_task("hip")
    return CaseContext(case=Case("c1", tmp_path / "c1.nii.gz"), volume=Volume(np.zeros(labels.shape), geometry),
                       task=task, outputs=CaseOutputs(tmp_path, "c1"), labels=labels, sidecar={})


def test_roi_step_filters_labels_and_records_the_subset(tmp_path: Path) -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, :, :], labels[1, :, :], labels[2, :, :] = 1, 2, 3
    ctx = _context(tmp_path, labels)
    RoiSubsetStep({3: "sacrum"})(ctx)
    assert set(np.unique(ctx.labels).tolist()) == {0, 3} and int((ctx.labels == 3).sum()) == 30
    assert ctx.sidecar["roi_subset"] == ["sacrum"]


def test_split_masks_are_binary_on_the_label_grid(tmp_path: Path) -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, 1:3, :], labels[3, :, 2] = 1, 3
    (tmp_path / "c1").mkdir()
    stale = tmp_path / "c1" / ".sacrum.tmp-0123456789ab.nii.gz"  # an older autoorgan's, untouched for long
    stale.write_bytes(b"stale")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    ctx = _context(tmp_path, labels)
    SplitMasksStep()(ctx)
    assert sorted(p.name for p in (tmp_path / "c1").iterdir()) == ["hip_left.nii.gz", "hip_right.nii.gz",
                                                                    "sacrum.nii.gz"]
    assert ctx.sidecar["structure_masks"] == {"hip_left": "c1/hip_left.nii.gz", "hip_right": "c1/hip_right.nii.gz",
                                              "sacrum": "c1/sacrum.nii.gz"}
    for value, name in {1: "hip_left", 2: "hip_right", 3: "sacrum"}.items():
        mask = sitk.ReadImage(str(tmp_path / "c1" / f"{name}.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == (4, 5, 6) and np.allclose(mask.GetSpacing(), (0.7, 0.8, 2.5))
        assert np.allclose(mask.GetOrigin(), (10.0, -20.0, 30.0))
        assert np.allclose(mask.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
        assert np.array_equal(sitk.GetArrayFromImage(mask).transpose(2, 1, 0), (labels == value).astype(np.uint8))


def test_split_masks_of_a_subset_in_nrrd(tmp_path: Path) -> None:
    labels = np.ones((3, 3, 3), dtype=np.uint8)
    SplitMasksStep({1: "hip_left"}, suffix=".nrrd")(_context(tmp_path, labels))
    assert [p.name for p in (tmp_path / "c1").iterdir()] == ["hip_left.nrrd"]


@pytest.mark.parametrize(("name", "code", "meaning"), [
    ("liver", "10200004", "Liver"), ("kidney_left", "64033007", "Kidney"), ("sacrum", "54735007", "Sacrum"),
    ("vertebrae_C1", "51282000", "Vertebra"), ("rib_right_12", "113197003", "Rib"),
    ("adrenal_gland_left", "23451007", "Adrenal gland"), ("phalanges_feet", "91723000", "Anatomical Structure"),
])
def test_structures_get_snomed_codes(name: str, code: str, meaning: str) -> None:
    concept = structure_code(name)
    assert (concept.value, concept.scheme_designator, concept.meaning) == (code, "SCT", meaning)


def test_worker_processes_get_the_output_options() -> None:
    from autoorgan.cli.app import worker_arguments
    from autoorgan.options import PredictOptions

    args = worker_arguments(task="hip", input=Path("in"), output=Path("out"),
                            options=PredictOptions(step_size=0.5, models_dir=None,
                                   tasks_file=None, dataset_id=None, trainer=None, fold=None, configuration=None,
                                   plans=None, output_type="dicom-seg", split=True, split_only=False,
                                   roi_subset="sacrum,hip_left"))
    assert args[-5:] == ["--split", "--output-type", "dicom-seg", "--roi-subset", "sacrum,hip_left"]
    plain = worker_arguments(task="hip", input=Path("in"), output=Path("out"),
                            options=PredictOptions(step_size=0.5, models_dir=None,
                                    tasks_file=None, dataset_id=None, trainer=None, fold=None, configuration=None,
                                    plans=None, output_type="nifti", split=False, split_only=False, roi_subset=None))
    assert "--output-type" not in plain and "--split" not in plain and "--roi-subset" not in plain
