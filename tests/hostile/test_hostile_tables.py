"""The shipped label tables, pinned value by value.

A label value is what a user's downstream code reads from a label map, so a swap of two values
(in a task's table, in the whole-body table, or in both at once, which keeps them consistent
with each other) silently relabels every output. Every task's table and the whole-body table
are compared with a frozen copy checked into the tests (``tests/data/frozen_label_tables.json``,
always), and that copy with the product spec's table (``../shared/spec/autoorgan_tasks.json``,
where it is present).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoorgan.registry.tasks import load_registry
from autoorgan.registry.whole_body import whole_body_table

FROZEN_FILE = Path(__file__).resolve().parents[1] / "data" / "frozen_label_tables.json"
SPEC_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "spec" / "autoorgan_tasks.json"
FROZEN = json.loads(FROZEN_FILE.read_text(encoding="utf-8"))
needs_spec = pytest.mark.skipif(not SPEC_FILE.is_file(),
                                reason=f"the product spec's label table is not at {SPEC_FILE} (a source checkout "
                                       "beside ../shared/spec); the frozen copy is still checked")


def _as_json(table: dict) -> dict[str, str]:
    return {str(value): name for value, name in table.items()}


def test_the_frozen_copy_holds_the_seven_tasks_and_111_whole_body_values() -> None:
    assert list(FROZEN["tasks"]) == ["skeleton", "vertebrae", "ribs", "upper_limb", "hip", "lower_limb", "organs"]
    assert [len(t["labels"]) for t in FROZEN["tasks"].values()] == [6, 24, 24, 16, 3, 14, 24]
    assert list(FROZEN["whole_body"]["labels"]) == [str(v) for v in range(1, 112)]


@pytest.mark.parametrize("task", list(FROZEN["tasks"]))
def test_each_task_table_is_the_frozen_one(task: str) -> None:
    registry = load_registry()
    frozen = FROZEN["tasks"][task]
    assert _as_json(registry[task].labels) == frozen["labels"]
    assert list(registry[task].labels) == sorted(int(v) for v in frozen["labels"])
    assert registry[task].dataset_id == frozen["dataset_id"]
    assert _as_json(registry[task].subdivisions) == frozen.get("subdivisions", {})


def test_no_task_added_or_dropped() -> None:
    """The seven tasks, and besides them only the demo task (no part of the whole-body table)."""
    registry = load_registry()
    assert sorted(name for name, task in registry.items() if not task.demo) == sorted(FROZEN["tasks"])
    assert [name for name, task in registry.items() if task.demo] == ["demo_pelvis"]


def test_the_whole_body_table_is_the_frozen_one() -> None:
    table = whole_body_table()
    frozen = FROZEN["whole_body"]
    assert list(table.task_order) == frozen["task_order"]
    assert {str(v): [name, table.task_of[v]] for v, name in table.labels.items()} == frozen["labels"]


@pytest.mark.parametrize("task", list(FROZEN["tasks"]))
def test_each_task_value_lands_on_its_frozen_whole_body_value(task: str) -> None:
    """What a multi-task run writes: task value -> whole-body value, through the tables' names."""
    lut = whole_body_table().lookup(load_registry()[task])
    frozen_whole_body = FROZEN["whole_body"]["labels"]
    for value, name in FROZEN["tasks"][task]["labels"].items():
        assert frozen_whole_body[str(lut[int(value)])] == [name, task], (task, value, name)
    assert lut[0] == 0


@needs_spec
def test_the_frozen_task_tables_are_the_spec_tables() -> None:
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))["tasks"]
    assert list(spec) == list(FROZEN["tasks"])
    for task, entry in spec.items():
        assert entry["labels"] == FROZEN["tasks"][task]["labels"], task
        assert entry["dataset_id"] == FROZEN["tasks"][task]["dataset_id"], task


@needs_spec
def test_the_frozen_whole_body_table_numbers_the_spec_structures_in_task_order() -> None:
    """The whole-body rule (autoorgan.registry.whole_body): values 1..111, task by task in the task order,
    each task's structures in the order of their values."""
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))["tasks"]
    expected = [[name, task] for task in FROZEN["whole_body"]["task_order"]
                for _, name in sorted(spec[task]["labels"].items(), key=lambda item: int(item[0]))]
    assert FROZEN["whole_body"]["labels"] == {str(i): entry for i, entry in enumerate(expected, start=1)}
