"""The whole-body label table of multi-task runs, and the rule that merges task maps into it.

A multi-task run (``predict --task all``, or several tasks) writes one label map in which every
structure of every task has its own value. The table is data (``configs/whole_body.json``,
shipped in the package): values 1..111 in task order skeleton, vertebrae, ribs, upper_limb, hip,
lower_limb, organs. Values are fixed so that they never shift between versions; structures added
later get values after the last one. The coarse skeleton classes (skull, vertebrae, rib,
upper_limb, hip, lower_limb) keep values 1..6 for bone that no finer model claims.

Merge rule (:func:`merge_task_maps`), where several models claim a voxel:

1. A bone label (skeleton or subdivision) beats an organ label: CT bone is unambiguous, organ
   boundaries at bone are not.
2. A subdivision label (vertebrae, ribs, upper_limb, hip, lower_limb) beats the skeleton's coarse
   label.
3. Between two subdivision models (their boxes may overlap) the one that subdivides the skeleton's
   class at that voxel wins (a voxel the skeleton calls ``rib`` goes to the ribs model). Where
   the skeleton names neither (or did not run), the fixed precedence
   :data:`SUBDIVISION_PRECEDENCE` decides: vertebrae, ribs, hip, upper_limb, lower_limb.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

import numpy as np

from autoorgan.errors import TaskError
from autoorgan.registry.tasks import Task, normalize_name, parse_label_table, value_by_name

#: The name of the whole-body table (``autoorgan labels all``, ``predict --task all``).
ALL = "all"
#: The coarse model of the cascade.
SKELETON = "skeleton"
#: Which subdivision model wins where two claim a voxel the skeleton does not assign to either.
SUBDIVISION_PRECEDENCE: tuple[str, ...] = ("vertebrae", "ribs", "hip", "upper_limb", "lower_limb")


@dataclass(frozen=True)
class WholeBodyTable:
    """Value → structure name of the whole-body table, and which task each structure comes from."""

    labels: Mapping[int, str]
    task_of: Mapping[int, str]
    task_order: tuple[str, ...]

    def value_of(self, name: str) -> int:
        """The whole-body value of a structure (forgiving name); :class:`TaskError` if unknown."""
        value = value_by_name(self.labels, name)
        if value is None:
            raise TaskError(f"'{name}' is not in the whole-body label table")
        return value

    def labels_of_tasks(self, tasks: Iterable[str]) -> dict[int, str]:
        """The whole-body labels of the structures of ``tasks``, by value."""
        wanted = set(tasks)
        return {v: n for v, n in self.labels.items() if self.task_of[v] in wanted}

    def lookup(self, task: Task) -> np.ndarray:
        """An array ``lut`` with ``lut[task value] = whole-body value`` (0 stays 0).

        Labels are matched by name, so a task table that renames or adds a structure is refused
        with a :class:`TaskError` naming it.
        """
        by_name = {normalize_name(n): v for v, n in self.labels.items()}
        lut = np.zeros(task.max_label + 1, dtype=np.uint16)
        for value, name in task.labels.items():
            unified = by_name.get(normalize_name(name))
            if unified is None:
                raise TaskError(f"structure '{name}' of task '{task.name}' is not in the whole-body label table; "
                                "a multi-task run takes only the tasks of that table (run it as a single task)")
            lut[value] = unified
        return lut


def parse_whole_body_table(data: Mapping[str, Any], source: str = "whole-body label table") -> WholeBodyTable:
    """Check and build the table from its JSON shape (values and names unique, tasks known)."""
    raw = data.get("labels")
    if not isinstance(raw, Mapping):
        raise TaskError(f"{source}: 'labels' must be a table of value = {{name, task}}")
    order = tuple(str(t) for t in data.get("task_order", ()))
    names = {key: entry.get("name") if isinstance(entry, Mapping) else None for key, entry in raw.items()}
    labels = parse_label_table(names, ALL, source)
    task_of = {int(key): str(entry["task"]) for key, entry in raw.items()}
    unknown = sorted({t for t in task_of.values() if t not in order})
    if unknown:
        raise TaskError(f"{source}: task(s) {', '.join(unknown)} are not in task_order")
    return WholeBodyTable(labels=MappingProxyType(labels), task_of=MappingProxyType(dict(sorted(task_of.items()))),
                          task_order=order)


@lru_cache(maxsize=1)
def whole_body_table() -> WholeBodyTable:
    """The built-in whole-body table (``configs/whole_body.json``)."""
    ref = resources.files("autoorgan") / "configs" / "whole_body.json"
    return parse_whole_body_table(json.loads(ref.read_text(encoding="utf-8")))


def to_whole_body(task_map: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """A task's label map in whole-body values (see :meth:`WholeBodyTable.lookup`)."""
    return lut.astype(np.uint8 if lut.max(initial=0) <= 255 else np.uint16)[task_map]


def merge_task_maps(maps: Mapping[str, np.ndarray], *, coarse_value: Mapping[str, int],
                    precedence: Sequence[str] = SUBDIVISION_PRECEDENCE, skeleton: str = SKELETON) -> np.ndarray:
    """Merge label maps already in whole-body values into one map (the rule of this module).

    ``maps`` holds one map per task (same shape). ``coarse_value[task]`` is the whole-body value
    of the skeleton class a subdivision task subdivides (``{"ribs": 3, ...}``); tasks that are
    neither the skeleton nor a subdivision (organs, ...) rank below all bone. Pure: inputs are
    not modified.
    """
    if not maps:
        raise ValueError("no label maps to merge")
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1:
        raise ValueError(f"label maps of different shapes cannot be merged: {sorted(shapes)}")
    dtype = np.result_type(*(m.dtype for m in maps.values()))
    merged = np.zeros(next(iter(shapes)), dtype=dtype)
    subdivisions = [t for t in maps if t in coarse_value]
    ranked = sorted(subdivisions, key=lambda t: precedence.index(t) if t in precedence else len(precedence))
    organs = [t for t in maps if t != skeleton and t not in coarse_value]
    painting = [*organs, *([skeleton] if skeleton in maps else []), *reversed(ranked)]
    for task in painting:  # later painters win
        np.copyto(merged, maps[task], where=maps[task] != 0)
    if skeleton in maps:
        coarse = maps[skeleton]
        for task in ranked:
            claim = (maps[task] != 0) & (coarse == coarse_value[task])
            np.copyto(merged, maps[task], where=claim)
    return merged


__all__ = ["ALL", "SKELETON", "SUBDIVISION_PRECEDENCE", "WholeBodyTable", "merge_task_maps",
           "parse_whole_body_table", "to_whole_body", "whole_body_table"]
