"""Anatomical repair of label maps: pure functions on ``[x, y, z]`` label arrays and their grid.

Steps (each in its own module): small islands, left/right in patient space, vertebrae (one
piece each, head-to-feet order, one level per vertebra as a series), ribs (fragments merged, each
side numbered as a series, numbering anchored on the vertebrae) and the rib–vertebra junction.
:func:`repair_labels` runs those that apply to a label table.
"""

from autoorgan.postprocess.repair import (
    BONE_TASKS,
    STEPS,
    Companions,
    RepairOptions,
    RepairResult,
    applicable_steps,
    repair_labels,
)
from autoorgan.postprocess.ribs import anchor_rib_numbers

__all__ = ["BONE_TASKS", "STEPS", "Companions", "RepairOptions", "RepairResult", "anchor_rib_numbers",
           "applicable_steps", "repair_labels"]
