"""``--roi-subset``: keep only some structures of a task's label map.

Names are checked against the task's label table before anything runs; a typo gets a
did-you-mean suggestion instead of an empty output.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autoorgan.errors import InputError

if TYPE_CHECKING:
    from autoorgan.batch.job import CaseContext

log = logging.getLogger(__name__)


def _normal(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def resolve_roi_subset(labels: Mapping[int, str], names: Iterable[str], task_name: str = "") -> dict[int, str]:
    """Label value → name of the requested structures (case-insensitive; ``-`` and spaces count as ``_``).

    :class:`InputError` for an unknown name, with the closest label names as a suggestion.
    """
    by_normal = {_normal(name): (value, name) for value, name in labels.items()}
    chosen: dict[int, str] = {}
    for raw in names:
        if not raw.strip():
            continue
        key = _normal(raw)
        if key not in by_normal:
            close = difflib.get_close_matches(key, list(by_normal), n=3, cutoff=0.6)
            hint = (f"; did you mean {' or '.join(repr(by_normal[c][1]) for c in close)}?" if close
                    else f"; see 'autoorgan labels {task_name}'" if task_name else "")
            where = f" of task '{task_name}'" if task_name else ""
            raise InputError(f"--roi-subset: '{raw.strip()}' is not a structure{where}{hint}")
        value, name = by_normal[key]
        chosen[value] = name
    if not chosen:
        raise InputError("--roi-subset names no structure")
    return dict(sorted(chosen.items()))


def keep_labels(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """``labels`` with every value not in ``values`` set to background (a new array)."""
    kept = np.isin(labels, np.fromiter(values, dtype=np.int64))
    return np.where(kept, labels, np.zeros((), dtype=labels.dtype))


@dataclass(frozen=True)
class RoiSubsetStep:
    """Post-processing step: the label map keeps only the chosen structures (see
    :class:`autoorgan.batch.job.CaseStep`); the sidecar lists them under ``roi_subset``."""

    structures: Mapping[int, str]
    name: str = "roi subset"

    def __call__(self, ctx: CaseContext) -> None:
        ctx.labels = keep_labels(ctx.labels, self.structures)
        ctx.sidecar["roi_subset"] = list(self.structures.values())
