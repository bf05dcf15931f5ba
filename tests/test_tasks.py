"""The task registry: built-in table, forgiving names, overrides and user task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoorgan.errors import TaskError
from autoorgan.registry.tasks import Task, load_registry, normalize_name, parse_label_table, resolve_task

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "autoorgan_tasks.json"
EXPECTED_IDS = {"skeleton": 106, "vertebrae": 108, "ribs": 998, "upper_limb": 113, "hip": 114,
                "lower_limb": 112, "organs": 999}


def _seven_tasks() -> dict[str, Task]:
    """The built-in AutoOrgan tasks (the registry also holds the demo task)."""
    return {name: task for name, task in load_registry().items() if not task.demo}


def test_builtin_tasks_have_spec_ids_and_defaults() -> None:
    registry = _seven_tasks()
    assert {name: task.dataset_id for name, task in registry.items()} == EXPECTED_IDS
    assert [name for name, task in load_registry().items() if task.demo] == ["demo_pelvis"]
    for task in registry.values():
        assert task.models_dir is None
        assert task.trainer == "nnUNetTrainerNoMirroring"
        assert task.fold == 0
        assert task.configuration == "3d_fullres"
        assert task.plans == "nnUNetPlans"
        assert task.model_subfolder == "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"


@pytest.mark.skipif(not SPEC.is_file(), reason=f"spec table not found at {SPEC}")
def test_builtin_labels_equal_the_spec_table() -> None:
    spec = json.loads(SPEC.read_text())
    registry = load_registry()
    for name, entry in spec["tasks"].items():
        assert {str(k): v for k, v in registry[name].labels.items()} == entry["labels"]


def test_label_counts() -> None:
    counts = {name: len(task.labels) for name, task in _seven_tasks().items()}
    assert counts == {"skeleton": 6, "vertebrae": 24, "ribs": 24, "upper_limb": 16, "hip": 3,
                      "lower_limb": 14, "organs": 24}
    ribs = load_registry()["ribs"].labels
    assert ribs[1] == "rib_left_1" and ribs[2] == "rib_right_1" and ribs[24] == "rib_right_12"


@pytest.mark.parametrize("typed", ["upper_limb", "upper-limb", "upper limb", "Upper Limb", "UPPER-LIMB", " upper_limb "])
def test_forgiving_task_names(typed: str) -> None:
    assert load_registry().get_task(typed).name == "upper_limb"


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(TaskError, match="unknown task 'ribz'.*ribs"):
        load_registry().get_task("ribz")


def test_one_run_overrides() -> None:
    task = resolve_task("ribs", dataset_id=888, trainer="nnUNetTrainer", fold="all", configuration="3d_lowres",
                        plans="nnUNetResEncUNetMPlans")
    assert (task.dataset_id, task.trainer, task.fold, task.configuration, task.plans) == (
        888, "nnUNetTrainer", "all", "3d_lowres", "nnUNetResEncUNetMPlans")
    assert task.model_subfolder == "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_lowres"
    assert load_registry()["ribs"].dataset_id == 998  # the table itself is unchanged


def test_tasks_file_toml_adds_and_changes(tmp_path: Path) -> None:
    path = tmp_path / "my_tasks.toml"
    path.write_text(
        '[defaults]\ntrainer = "nnUNetTrainer"\n\n'
        '[tasks.my-liver]\ndataset_id = 501\ndescription = "Liver"\n[tasks.my-liver.labels]\n1 = "liver"\n2 = "liver_tumor"\n\n'
        '[tasks.ribs]\ndataset_id = 888\n'
    )
    registry = load_registry(path)
    liver = registry.get_task("My Liver")
    assert liver.name == "my_liver" and liver.dataset_id == 501 and dict(liver.labels) == {1: "liver", 2: "liver_tumor"}
    assert liver.trainer == "nnUNetTrainer"  # file defaults apply to the file's new tasks
    assert registry["ribs"].dataset_id == 888 and len(registry["ribs"].labels) == 24
    assert registry["ribs"].trainer == "nnUNetTrainerNoMirroring"  # ...not to built-in ones


def test_tasks_file_json(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tasks": {"lesion": {"dataset_id": 7, "labels": {"1": "lesion"}}}}))
    assert load_registry(path).get_task("lesion").dataset_id == 7


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"1": "a", "2": "a"}, "structure name 'a' is used by labels 1 and 2"),
        ({"1": "Liver", "2": "liver"}, "is used by labels 1 and 2"),
        ({"0": "background"}, "label 0 is the background"),
        ({"x": "a"}, "must be an integer"),
        ({"1.5": "a"}, "must be an integer"),
        ({"-3": "a"}, "must be an integer"),
        ({"1": ""}, "needs a non-empty name"),
        ({}, "non-empty table"),
    ],
)
def test_label_table_validation(labels: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        parse_label_table(labels, "t", "file.json")


def test_bad_task_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[tasks.x\n")
    with pytest.raises(TaskError, match="not valid TOML"):
        load_registry(bad)
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps({"tasks": {"x": {"labels": {"1": "a"}}}}))
    with pytest.raises(TaskError, match="needs a dataset_id"):
        load_registry(missing)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"tasks": {"x": {"dataset_id": 5, "label": {"1": "a"}}}}))
    with pytest.raises(TaskError, match="unknown field"):
        load_registry(typo)
    dup = tmp_path / "dup.json"
    dup.write_text('{"tasks": {"x": {"dataset_id": 5, "labels": {"1": "a", "1": "b"}}}}')
    with pytest.raises(TaskError, match="key '1' is given twice"):
        load_registry(dup)
    dup_toml = tmp_path / "dup.toml"
    dup_toml.write_text('[tasks.x]\ndataset_id = 5\n[tasks.x.labels]\n1 = "a"\n01 = "b"\n')
    with pytest.raises(TaskError, match="label value 1 is given twice"):
        load_registry(dup_toml)


def test_normalize_name() -> None:
    assert normalize_name("Lower - Limb") == "lower_limb"


def test_structure_lookup() -> None:
    organs = load_registry()["organs"]
    assert organs.label_value("Urinary Bladder") == 19
    with pytest.raises(TaskError):
        organs.label_value("bladder")
