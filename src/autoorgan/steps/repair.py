"""The anatomical repair of one task's predicted map, as every predict run applies it.

One function for one task and several: in a run with several tasks the ribs are numbered from the
vertebrae map of the same run; otherwise each task's map is repaired on its own, with the case's CT
as bone and body reference (:func:`autoorgan.postprocess.repair.repair_labels`, pure).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.postprocess.repair import Companions, RepairResult, repair_labels
from autoorgan.registry.tasks import Task

log = logging.getLogger(__name__)


def repair_task_map(task: Task, labels: np.ndarray, geometry: Geometry, *, ct: np.ndarray | None = None,
                    vertebrae: np.ndarray | None = None,
                    vertebra_names: Mapping[int, str] | None = None) -> RepairResult:
    """The repair of one task's map (:func:`repair_labels`, pure).

    The ribs map is numbered from a vertebrae map of the same run when there is one
    (``vertebrae`` with its ``vertebra_names``); other tasks are repaired on their own.
    """
    anchored = task.name == "ribs" and vertebrae is not None and vertebra_names is not None
    companions = Companions(ct=ct, vertebrae=vertebrae if anchored else None,
                            vertebra_names=vertebra_names if anchored else None)
    return repair_labels(labels, geometry, task.labels, companions=companions)


def warn_on_repair_flags(case_id: str, result: RepairResult, task: str | None = None) -> None:
    """One warning line for a case whose repair left something for a person to look at (the
    sidecar's ``postprocess.flags``: a rib or vertebra numbering the repair could not make
    consistent, or left and right ribs at the same height numbered differently)."""
    if result.flags:
        log.warning("%s: %srepair needs a look: %s", case_id, f"{task} " if task else "", "; ".join(result.flags))


__all__ = ["repair_task_map", "warn_on_repair_flags"]
