"""The fixture model's task, training data and tiny architecture (shared by conftest and tests)."""

from __future__ import annotations

from autoorgan.demo import DEMO_PLANS
from autoorgan.phantom import Phantom, make_phantom

#: The fixture model's task: three large pelvic bones, quick to learn for a tiny network.
FIXTURE_TASK = "hip"
FIXTURE_STRUCTURES = ["hip_left", "hip_right", "sacrum"]
#: The fixture model uses the demo model's tiny 3d_fullres architecture (an nnU-Net plans
#: override), on more phantoms (stored in mixed orientations) and a longer schedule: the sides of
#: the pelvis need it to pass Dice 0.9 reliably.
TINY_PLANS = DEMO_PLANS
TRAIN_ORIENTATIONS = ["RAS", "LPS", "LAS", "PIR", "RAS", "LPS", "SAR", "RAS", "ILP", "RAS", "LAI", "RAS"]


def pelvis_phantom(seed: int) -> Phantom:
    """A pelvis crop of a whole-body phantom (4×4×5 mm voxels)."""
    return make_phantom(seed, spacing=(4.0, 4.0, 5.0)).crop_to(FIXTURE_STRUCTURES, 12.0)
