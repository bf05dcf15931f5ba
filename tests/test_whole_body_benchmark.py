"""Pure helpers of benchmarks/whole_body_benchmark.py: the whole-body → task lookup, Dice table, commands."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from autoorgan.registry.tasks import Task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import whole_body_benchmark as wb

SKELETON = Task(name="skeleton", dataset_id=106, labels={1: "skull", 2: "rib", 3: "hip"},
                subdivisions={2: "ribs", 3: "hip"})
RIBS = Task(name="ribs", dataset_id=998, labels={1: "rib_left_1", 2: "rib_right_1"})
HIP = Task(name="hip", dataset_id=114, labels={1: "hip_left", 2: "hip_right", 3: "sacrum"})
ORGANS = Task(name="organs", dataset_id=999, labels={1: "liver"})
# A small whole-body table: coarse classes first, then each task's structures.
WHOLE = {1: "skull", 2: "rib", 3: "hip", 4: "rib_left_1", 5: "rib_right_1", 6: "hip_left", 7: "hip_right",
         8: "sacrum", 9: "liver"}
OWNER = {1: "skeleton", 2: "skeleton", 3: "skeleton", 4: "ribs", 5: "ribs", 6: "hip", 7: "hip", 8: "hip",
         9: "organs"}


def test_task_lookup_maps_a_subdivision_task_to_its_own_values_only() -> None:
    lut = wb.task_lookup(WHOLE, OWNER, HIP, SKELETON)
    assert lut.tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 0]
    assert wb.task_lookup(WHOLE, OWNER, ORGANS, SKELETON).tolist() == [0] * 9 + [1]


def test_task_lookup_gives_the_skeleton_the_coarse_class_of_finer_structures() -> None:
    lut = wb.task_lookup(WHOLE, OWNER, SKELETON, SKELETON)
    # skull/rib/hip keep theirs; rib_* → rib (2); hip_*, sacrum → hip (3); organs → background.
    assert lut.tolist() == [0, 1, 2, 3, 2, 2, 3, 3, 3, 0]


def test_whole_body_map_mapped_back_gives_each_tasks_map() -> None:
    whole = np.array([[0, 1, 4, 5], [6, 7, 8, 9]], dtype=np.uint16)
    assert wb.task_lookup(WHOLE, OWNER, RIBS, SKELETON)[whole].tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]
    assert wb.task_lookup(WHOLE, OWNER, SKELETON, SKELETON)[whole].tolist() == [[0, 1, 2, 2], [3, 3, 3, 0]]


def test_dice_table_names_every_structure_present_in_either_map() -> None:
    reference = np.array([0, 1, 1, 2, 2, 0], dtype=np.uint8)
    prediction = np.array([0, 1, 0, 2, 2, 3], dtype=np.uint8)
    scores = wb.dice_table(reference, prediction, HIP.labels)
    assert list(scores) == ["hip_left", "hip_right", "sacrum"]
    assert scores["hip_left"] == pytest.approx(2 / 3)
    assert scores["hip_right"] == 1.0
    assert scores["sacrum"] == 0.0
    assert wb.summarize_dice(scores) == f"{(2 / 3 + 1.0) / 3:.3f} / 0.000 (sacrum)"
    assert wb.summarize_dice({}) == "-"


def test_nnunet_command_runs_every_task_in_order_and_stops_at_a_failure(tmp_path: Path) -> None:
    outs = {t.name: tmp_path / "out dir" / t.name for t in (SKELETON, HIP)}
    command = wb.nnunet_command(tmp_path / "in", outs, [SKELETON, HIP], step_size=1.0)
    assert command[:2] == ["bash", "-c"]
    steps = command[2].split(" && ")
    assert [shlex.split(s)[shlex.split(s).index("-d") + 1] for s in steps] == ["106", "114"]
    first = shlex.split(steps[0])
    assert first[0] == "nnUNetv2_predict"
    assert first[first.index("-o") + 1] == str(tmp_path / "out dir" / "skeleton")
    assert first[first.index("-tr") + 1] == "nnUNetTrainerNoMirroring"
    assert first[first.index("-device") + 1] == "cpu"
    assert first[first.index("-f") + 1] == "0"
    assert first[first.index("-step_size") + 1] == "1"


def test_autoorgan_command_adds_no_cascade_only_when_asked(tmp_path: Path) -> None:
    with_cascade = wb.autoorgan_command(tmp_path / "ct.nii.gz", tmp_path / "out", tmp_path / "m", cascade=True)
    assert with_cascade[:4] == ["autoorgan", "predict", "--task", "all"]
    assert "--no-cascade" not in with_cascade
    assert with_cascade[with_cascade.index("--step-size") + 1] == "0.5"
    assert wb.autoorgan_command(tmp_path / "ct.nii.gz", tmp_path / "out", tmp_path / "m",
                                cascade=False)[-1] == "--no-cascade"


def test_the_benchmark_phantom_has_the_required_size() -> None:
    size = [round(mm / s) for mm, s in zip(wb.BODY_MM, wb.BENCH_SPACING, strict=True)]
    assert size[0] >= 256 and size[1] >= 256 and size[2] >= 300


def test_cascade_summary_lists_each_tasks_time_box_or_skip() -> None:
    sidecar = {"cascade": {"runs": {
        "skeleton": {"status": "ran", "seconds": 12.04},
        "hip": {"status": "ran", "seconds": 3.0, "box": [[0, 5], [0, 5], [0, 5]], "box_fraction": 0.25},
        "ribs": {"status": "skipped", "reason": "no rib in the skeleton map"}}},
        "timing": {"read": 1.25, "total": 20.0}}
    assert wb.cascade_summary(sidecar) == ("skeleton 12.0 s; hip 3.0 s on 25% of the image; ribs skipped "
                                           "(stages: read 1.2 s, total 20.0 s)")
    assert wb.cascade_summary({}) == ""


def test_check_outputs_scores_the_whole_body_map_against_each_task_map(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from autoorgan.io.image import Geometry, image_from_array
    from autoorgan.registry.tasks import load_registry
    from autoorgan.registry.whole_body import whole_body_table

    registry = load_registry()
    skeleton, hip = registry.get_task("skeleton"), registry.get_task("hip")
    table = whole_body_table()
    geometry = Geometry(size=(4, 3, 2), spacing=(1.5, 1.5, 3.0), origin=(1.0, 2.0, 3.0),
                        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    whole = np.zeros((4, 3, 2), dtype=np.uint8)  # x, y, z
    whole[0, :, :] = table.value_of("hip_left")
    whole[1, :, :] = table.value_of("sacrum")
    whole[2, 0, :] = table.value_of("skull")
    # nnU-Net's maps: hip agrees except one sacrum voxel it calls hip_right; the skeleton misses the skull.
    hip_map = np.zeros_like(whole)
    hip_map[0], hip_map[1] = 1, 3
    hip_map[1, 0, 0] = 2
    skeleton_map = np.zeros_like(whole)
    skeleton_map[0:2] = 5
    paths = {}
    for name, array in (("whole", whole), ("hip", hip_map), ("skeleton", skeleton_map)):
        folder = tmp_path / name
        folder.mkdir()
        sitk.WriteImage(image_from_array(array, geometry), str(folder / f"{wb.CASE}.nii.gz"))
        paths[name] = folder
    result = wb.check_outputs(paths["whole"] / f"{wb.CASE}.nii.gz", {"hip": paths["hip"], "skeleton": paths["skeleton"]},
                              {"hip": paths["hip"] / f"{wb.CASE}.nii.gz",
                               "skeleton": paths["skeleton"] / f"{wb.CASE}.nii.gz"}, [skeleton, hip], skeleton)
    assert result["hip"]["autoorgan_vs_nnunet"] == {"hip_left": 1.0, "hip_right": 0.0,
                                                    "sacrum": pytest.approx(2 * 5 / 11)}
    assert result["hip"]["nnunet_vs_truth"] == {"hip_left": 1.0, "hip_right": 1.0, "sacrum": 1.0}
    assert result["skeleton"]["autoorgan_vs_nnunet"] == {"skull": 0.0, "hip": 1.0}


def test_check_outputs_refuses_maps_on_different_grids(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from autoorgan.io.image import Geometry, image_from_array
    from autoorgan.registry.tasks import load_registry

    registry = load_registry()
    hip = registry.get_task("hip")
    for name, origin in (("whole", (0.0, 0.0, 0.0)), ("hip", (0.0, 0.0, 3.0))):
        (tmp_path / name).mkdir()
        geometry = Geometry(size=(2, 2, 2), spacing=(1.0, 1.0, 1.0), origin=origin,
                            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(image_from_array(np.zeros((2, 2, 2), dtype=np.uint8), geometry),
                        str(tmp_path / name / f"{wb.CASE}.nii.gz"))
    with pytest.raises(RuntimeError, match="not on the same grid"):
        wb.check_outputs(tmp_path / "whole" / f"{wb.CASE}.nii.gz", {"hip": tmp_path / "hip"},
                         {"hip": tmp_path / "hip" / f"{wb.CASE}.nii.gz"}, [hip], registry.get_task("skeleton"))


def test_trained_schedule_reads_what_nnunet_recorded(tmp_path: Path) -> None:
    import json

    registry_tasks = [SKELETON, HIP, RIBS]
    for task, (epochs, iterations) in zip(registry_tasks[:2], [(6, 8), (2, 4)], strict=True):
        fold = tmp_path / f"Dataset{task.dataset_id:03d}_X" / task.model_subfolder / "fold_0"
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"")
        (fold / "debug.json").write_text(json.dumps({"num_epochs": str(epochs),
                                                     "num_iterations_per_epoch": str(iterations)}))
        (fold.parent / "dataset.json").write_text("{}")
        (fold.parent / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {
            "patch_size": [24, 32, 32], "spacing": [10.0, 8.0, 8.0]}}}))
    assert wb.trained_schedule(tmp_path, registry_tasks) == (
        "briefly trained tiny models (epochs x iterations: skeleton 6x8, hip 2x4, ribs ?; "
        "patch 24x32x32 voxels at 10x8x8 mm, z/y/x)")


def test_report_states_the_ratios_against_the_targets_and_the_load() -> None:
    from measure import Comparison, Measurement

    gib = 2**30
    comparison = Comparison({
        "autoorgan --task all": [Measurement(0, 30.0, 1 * gib), Measurement(0, 40.0, 1 * gib)],
        "nnUNetv2_predict x7": [Measurement(0, 100.0, 4 * gib), Measurement(0, 100.0, 4 * gib)]})
    runs = [wb.Run("nnUNetv2_predict x7", 0, 100.0, 4.0, 2.0, 3.0), wb.Run("autoorgan --task all", 0, 30.0, 1.0, 1.0, 5.0)]
    text = wb.report(comparison, runs, "nnUNetv2_predict x7", "autoorgan --task all", (267, 267, 300),
                     (1.5, 1.5, 3.0), 0.5, "briefly trained tiny models", {},
                     {"autoorgan --task all": {"cascade": {"runs": {"hip": {"status": "skipped"}}}}})
    assert "267x267x300 voxels at 1.5x1.5x3 mm" in text
    assert "| autoorgan --task all | 2 | 35.0 | 0.35 | 1.00 | 0.25 |" in text
    assert "wall-time ratio `autoorgan --task all` / `nnUNetv2_predict x7`: **0.35** (target <= 0.5, aim 0.33): met" in text
    assert "peak-memory ratio: **0.25** (target <= 1.0): met" in text
    assert "median 2.5, range 1.0-5.0" in text
    assert "- `autoorgan --task all`, last run, per task: hip skipped" in text
