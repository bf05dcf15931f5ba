"""Multi-task runs without models: the whole-body table, the merge rule, boxes and margins, and
the parsing of ``--task``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoorgan.cli.app import app, worker_arguments
from autoorgan.errors import InputError, TaskError
from autoorgan.io.orientation import plan_reorientation
from autoorgan.options import PredictOptions
from autoorgan.registry.selection import (
    is_multi_task,
    resolve_task_selection,
    selection_name,
    split_task_selection,
    whole_body_task,
)
from autoorgan.registry.tasks import load_registry
from autoorgan.registry.whole_body import SUBDIVISION_PRECEDENCE, merge_task_maps, to_whole_body, whole_body_table
from autoorgan.steps.cascade import class_box, half_patch_mm, margin_voxels

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


# --- the whole-body table ---------------------------------------------------------------------

def test_whole_body_table_covers_every_task_label_exactly_once() -> None:
    table = whole_body_table()
    registry = load_registry()
    assert list(table.labels) == list(range(1, 112))
    assert table.task_order == ("skeleton", "vertebrae", "ribs", "upper_limb", "hip", "lower_limb", "organs")
    expected = [(name, task) for task in table.task_order for name in registry[task].labels.values()]
    assert [(table.labels[v], table.task_of[v]) for v in table.labels] == expected
    assert len({n.lower() for n in table.labels.values()}) == 111
    # Fixed values: a few anchors that must never move between versions.
    assert (table.labels[1], table.labels[6], table.labels[7], table.labels[30]) == (
        "skull", "lower_limb", "vertebrae_C1", "vertebrae_L5")
    assert (table.labels[31], table.labels[71], table.labels[74], table.labels[88], table.labels[111]) == (
        "rib_left_1", "hip_left", "femur_left", "spleen", "spinal_cord")


def test_lookup_maps_task_values_to_whole_body_values() -> None:
    table = whole_body_table()
    hip = load_registry()["hip"]
    lut = table.lookup(hip)
    assert lut.tolist() == [0, 71, 72, 73]
    task_map = np.array([[[0, 1], [2, 3]]], dtype=np.uint8)
    assert to_whole_body(task_map, lut).tolist() == [[[0, 71], [72, 73]]]
    assert to_whole_body(task_map, lut).dtype == np.uint8


def test_a_renamed_structure_is_refused_with_its_name(tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.toml"
    tasks_file.write_text('[tasks.hip.labels]\n1 = "hip_left"\n2 = "hip_right"\n3 = "os_sacrum"\n', encoding="utf-8")
    with pytest.raises(TaskError, match="structure 'os_sacrum' of task 'hip' is not in the whole-body label table"):
        resolve_task_selection(["hip", "skeleton"], load_registry(tasks_file))


def test_labels_all_prints_the_whole_body_table() -> None:
    result = runner.invoke(app, ["labels", "all", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data) == 111 and data["1"] == "skull" and data["88"] == "spleen" and data["111"] == "spinal_cord"


# --- the merge rule ---------------------------------------------------------------------------

COARSE = {"vertebrae": 2, "ribs": 3, "upper_limb": 4, "hip": 5, "lower_limb": 6}


def test_subdivision_beats_coarse_and_coarse_stays_where_unclaimed() -> None:
    skeleton = np.array([5, 5, 5, 0], dtype=np.uint8)
    hip = np.array([71, 73, 0, 0], dtype=np.uint8)
    merged = merge_task_maps({"skeleton": skeleton, "hip": hip}, coarse_value=COARSE)
    assert merged.tolist() == [71, 73, 5, 0]


def test_bone_beats_organs() -> None:
    organs = np.array([92, 92, 88, 0], dtype=np.uint8)       # liver, liver, spleen
    skeleton = np.array([3, 0, 0, 3], dtype=np.uint8)        # rib
    ribs = np.array([0, 0, 0, 40], dtype=np.uint8)
    merged = merge_task_maps({"organs": organs, "skeleton": skeleton, "ribs": ribs}, coarse_value=COARSE)
    assert merged.tolist() == [3, 92, 88, 40]
    # Without the skeleton, a subdivision model still beats the organs.
    merged = merge_task_maps({"organs": organs, "ribs": np.array([31, 0, 0, 0], np.uint8)}, coarse_value=COARSE)
    assert merged.tolist() == [31, 92, 88, 0]


def test_overlapping_subdivisions_follow_the_skeleton_then_the_fixed_precedence() -> None:
    # Voxel 0: the skeleton says rib -> ribs wins over vertebrae; voxel 1: skeleton says vertebrae;
    # voxel 2: skeleton says nothing -> fixed precedence (vertebrae before ribs); voxel 3: only ribs.
    skeleton = np.array([3, 2, 0, 0], dtype=np.uint8)
    vertebrae = np.array([25, 26, 27, 0], dtype=np.uint8)
    ribs = np.array([50, 51, 52, 53], dtype=np.uint8)
    maps = {"skeleton": skeleton, "vertebrae": vertebrae, "ribs": ribs}
    assert merge_task_maps(maps, coarse_value=COARSE).tolist() == [50, 26, 27, 53]
    assert merge_task_maps({"vertebrae": vertebrae, "ribs": ribs}, coarse_value=COARSE).tolist() == [25, 26, 27, 53]
    assert SUBDIVISION_PRECEDENCE.index("vertebrae") < SUBDIVISION_PRECEDENCE.index("ribs")
    # The order of the mapping does not matter, and the inputs are left alone.
    reversed_maps = dict(reversed(list(maps.items())))
    assert merge_task_maps(reversed_maps, coarse_value=COARSE).tolist() == [50, 26, 27, 53]
    assert ribs.tolist() == [50, 51, 52, 53]


def test_merge_refuses_maps_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        merge_task_maps({"skeleton": np.zeros(3, np.uint8), "hip": np.zeros(4, np.uint8)}, coarse_value=COARSE)


# --- boxes, margins and crops -----------------------------------------------------------------

def test_class_box_grows_by_the_margin_and_clips_to_the_array() -> None:
    labels = np.zeros((20, 10, 8), dtype=np.uint8)
    labels[5:8, 2:4, 6] = 6
    labels[0, 0, 0] = 5
    assert class_box(labels, 6, (2, 3, 4)) == (slice(3, 10), slice(0, 7), slice(2, 8))
    assert class_box(labels, 6, (0, 0, 0)) == (slice(5, 8), slice(2, 4), slice(6, 7))
    assert class_box(labels, 4, (2, 2, 2)) is None


def test_margin_is_half_a_patch_per_axis_with_a_floor_or_the_given_millimetres() -> None:
    # Model axes (z, y, x) of a RAS model: half patch 80, 48, 8 mm.
    half = (80.0, 48.0, 8.0)
    ras = plan_reorientation(np.eye(3) @ np.diag([-1.0, -1.0, 1.0]), "RAS")  # an RAS-stored image
    assert ras.axis_order == (0, 1, 2)
    assert margin_voxels((2.0, 2.0, 4.0), model_half_patch_mm=half, reorientation=ras, floor_mm=20.0) == (10, 24, 20)
    # A PIR-stored image: stored axis 0 is A-P (model y), axis 1 I-S (model z), axis 2 R-L (model x).
    pir_direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    pir = plan_reorientation(pir_direction, "RAS")
    assert pir.source_codes == "PIR"
    assert margin_voxels((2.0, 2.0, 4.0), model_half_patch_mm=half, reorientation=pir, floor_mm=20.0) == (24, 40, 5)
    assert margin_voxels((2.0, 2.0, 4.0), model_half_patch_mm=half, reorientation=pir, margin_mm=10.0) == (5, 5, 3)
    assert margin_voxels((2.0, 3.0, 4.0), floor_mm=30.0) == (15, 10, 8)


def test_half_patch_is_read_from_the_plans(tmp_path: Path) -> None:
    plans = {"configurations": {"3d_fullres": {"patch_size": [16, 24, 32], "spacing": [5.0, 4.0, 4.0]},
                                "3d_lowres": {"inherits_from": "3d_fullres", "spacing": [10.0, 8.0, 8.0]}}}
    (tmp_path / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    assert half_patch_mm(tmp_path, "3d_fullres") == (40.0, 48.0, 64.0)
    assert half_patch_mm(tmp_path, "3d_lowres") == (80.0, 96.0, 128.0)


# --- --task parsing ---------------------------------------------------------------------------

def test_task_selection_forms() -> None:
    assert split_task_selection("ribs") == ["ribs"]
    assert split_task_selection("ribs, Vertebrae") == ["ribs", "vertebrae"]
    assert split_task_selection(["ribs", "upper-limb,ribs"]) == ["ribs", "upper_limb"]
    assert not is_multi_task("ribs") and not is_multi_task(["Ribs", "ribs"])
    assert is_multi_task("all") and is_multi_task(["ribs", "vertebrae"]) and is_multi_task("hip,skeleton")
    with pytest.raises(InputError, match="empty task name"):
        split_task_selection("ribs,,hip")


def test_selection_runs_in_table_order_and_all_means_seven() -> None:
    registry = load_registry()
    tasks = resolve_task_selection(["lower_limb", "skeleton,Hip"], registry)
    assert [t.name for t in tasks] == ["skeleton", "hip", "lower_limb"]
    assert selection_name(tasks) == "skeleton,hip,lower_limb"
    everything = resolve_task_selection("all", registry)
    assert [t.name for t in everything] == list(whole_body_table().task_order)
    assert selection_name(everything) == "all"
    assert selection_name(resolve_task_selection(["organs", "all"], registry)) == "all"
    merged = whole_body_task(tasks)
    assert list(merged.labels) == [1, 2, 3, 4, 5, 6, 71, 72, 73, *range(74, 88)]
    assert merged.labels[71] == "hip_left" and merged.name == "skeleton,hip,lower_limb"


def test_a_custom_task_cannot_join_a_multi_task_run(tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.toml"
    tasks_file.write_text('[tasks.my_liver]\ndataset_id = 501\n[tasks.my_liver.labels]\n1 = "liver"\n',
                          encoding="utf-8")
    with pytest.raises(TaskError, match="task\\(s\\) my_liver are not in the whole-body label table"):
        resolve_task_selection("my_liver,organs", load_registry(tasks_file))
    with pytest.raises(TaskError, match="unknown task 'spleen'"):
        resolve_task_selection("spleen,organs", load_registry())


@pytest.mark.parametrize("args, message", [
    (["--task", "hip,skeleton", "--dataset-id", "500"], "--dataset-id change one model"),
    (["--task", "hip", "--task", "skeleton", "--keep-task-maps", "--split"], "--keep-task-maps and --split"),
    (["--task", "hip,nonsense"], "unknown task 'nonsense'"),
])
def test_cli_refuses_what_cannot_work_with_several_tasks(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["predict", *args, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                 "--models-dir", str(tmp_path), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_workers_get_the_task_set_and_cascade_options() -> None:
    args = worker_arguments(task="skeleton,hip", input=Path("in"), output=Path("out"),
                            options=PredictOptions(step_size=None,
                                   cascade=False, cascade_margin=35.0, keep_task_maps=True))
    assert args[:2] == ["--task", "skeleton,hip"]
    assert "--no-cascade" in args and "--keep-task-maps" in args
    assert args[args.index("--cascade-margin") + 1] == "35.0"
    plain = worker_arguments(task="hip", input=Path("in"), output=Path("out"),
                            options=PredictOptions(step_size=None, cascade=True))
    assert "--no-cascade" not in plain and "--cascade-margin" not in plain


# --- post-processing of a multi-task run ------------------------------------------------------

def test_ribs_are_numbered_from_the_vertebrae_of_the_same_run() -> None:
    from autoorgan.steps.cascade import repair_task_map
    from postprocess_maps import RAS, RIB, VERTEBRAE, spine_and_ribs

    reference, vertebrae = spine_and_ribs()
    shifted = reference.copy()
    for k in (9, 10, 11, 12):  # the left ribs are numbered one too low
        shifted[reference == RIB[f"rib_left_{k}"]] = RIB[f"rib_left_{k - 1}"]
    ribs_task = load_registry()["ribs"]
    anchored = repair_task_map(ribs_task, shifted, RAS, vertebrae=vertebrae, vertebra_names=VERTEBRAE)
    rib_step = next(s for s in anchored.steps if s["step"] == "ribs")
    assert rib_step["numbering_from"] == "vertebrae" and rib_step["ribs_renumbered"] == 4
    assert np.array_equal(anchored.labels, reference)
    alone = repair_task_map(ribs_task, shifted, RAS)
    assert next(s for s in alone.steps if s["step"] == "ribs")["numbering_from"] != "vertebrae"
    # Another task's repair never takes the vertebrae as companions.
    vertebrae_task = load_registry()["vertebrae"]
    result = repair_task_map(vertebrae_task, vertebrae, RAS, vertebrae=vertebrae, vertebra_names=VERTEBRAE)
    assert np.array_equal(result.labels, vertebrae)
