"""Which tasks a ``predict`` run does: ``--task`` values, checks, and the whole-body task of several.

``--task`` takes repeated options, comma lists and ``all`` (the seven tasks of the whole-body
table). A selection of one task writes that task's own label maps; several tasks run through
:class:`autoorgan.steps.cascade.MultiTaskSegmenter` (see :mod:`autoorgan.runs.predict`): each CT is
read once, each model loaded once per run, the skeleton first with subdivision models on its ROIs,
and one label map in whole-body values (:mod:`autoorgan.registry.whole_body`) is written per case.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import MappingProxyType

from autoorgan.errors import InputError, TaskError
from autoorgan.registry.tasks import Task, TaskRegistry, normalize_name
from autoorgan.registry.whole_body import ALL, whole_body_table

log = logging.getLogger(__name__)


def split_task_selection(task: str | Sequence[str]) -> list[str]:
    """The task names of ``--task`` values: repeated options and comma lists, in canonical form,
    without repeats (``"ribs, Vertebrae"`` → ``["ribs", "vertebrae"]``); ``all`` stays ``all``."""
    values = [task] if isinstance(task, str) else list(task)
    names: list[str] = []
    for value in values:
        for part in str(value).split(","):
            name = normalize_name(part)
            if not name:
                raise InputError(f"empty task name in --task '{value}'")
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("no task given")
    return names


def resolve_task_selection(task: str | Sequence[str], registry: TaskRegistry) -> list[Task]:
    """The tasks of a multi-task selection in whole-body table order (``all`` = every task of it).

    Refuses tasks unknown to ``registry`` and tasks outside the whole-body table (a custom task
    of a ``--tasks-file`` runs on its own), with one line naming them.
    """
    table = whole_body_table()
    names = split_task_selection(task)
    wanted: list[str] = []
    for name in names:
        for member in (table.task_order if name == ALL else (registry.get_task(name).name,)):
            if member not in wanted:
                wanted.append(member)
    outside = [n for n in wanted if n not in table.task_order]
    if outside:
        raise TaskError(f"task(s) {', '.join(outside)} are not in the whole-body label table; a multi-task run "
                        f"takes only {', '.join(table.task_order)} (run other tasks on their own)")
    tasks = [registry.get_task(n) for n in table.task_order if n in wanted]
    for t in tasks:
        table.lookup(t)  # a task table that renamed a structure is refused here, before anything runs
    return tasks


def selection_name(tasks: Sequence[Task]) -> str:
    """The name of a task set in sidecars and ``--continue`` checks: ``all`` for the seven tasks,
    else the names in table order joined by commas."""
    names = [t.name for t in tasks]
    return ALL if names == list(whole_body_table().task_order) else ",".join(names)


def whole_body_task(tasks: Sequence[Task]) -> Task:
    """A task standing for the merged map of ``tasks`` (its whole-body labels), for the output and
    report steps that take a label table (statistics, preview, split, ROI subset, DICOM SEG).
    It has no model of its own (``dataset_id`` 0); its colours are the tasks' own."""
    labels = whole_body_table().labels_of_tasks([t.name for t in tasks])
    colors = {name: rgb for t in tasks for name, rgb in t.colors.items()}
    return Task(name=selection_name(tasks), dataset_id=0, labels=MappingProxyType(labels),
                description="whole-body map of " + ", ".join(t.name for t in tasks), orientation=None,
                colors=MappingProxyType(colors))


def is_multi_task(task: str | Sequence[str]) -> bool:
    """True when ``--task`` names more than one task, or ``all``."""
    names = split_task_selection(task)
    return len(names) > 1 or names == [ALL]


__all__ = ["is_multi_task", "resolve_task_selection", "selection_name", "split_task_selection",
           "whole_body_task"]
