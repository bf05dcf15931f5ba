"""The fixture model's task, training data and tiny architecture (shared by conftest and tests)."""

from __future__ import annotations

from autoorgan.demo import DEMO_PLANS, TRAINING_ORIENTATIONS
from autoorgan.phantom import Phantom, make_phantom

#: The fixture model's task: three large pelvic bones, quick to learn for a tiny network.
FIXTURE_TASK = "hip"
FIXTURE_STRUCTURES = ["hip_left", "hip_right", "sacrum"]
#: The fixture model is trained with the demo model's recipe: the same tiny 3d_fullres
#: architecture (an nnU-Net plans override) and phantoms stored in mixed orientations.
TINY_PLANS = DEMO_PLANS
TRAIN_ORIENTATIONS = list(TRAINING_ORIENTATIONS)


def pelvis_phantom(seed: int) -> Phantom:
    """A pelvis crop of a whole-body phantom (4×4×5 mm voxels)."""
    return make_phantom(seed, spacing=(4.0, 4.0, 5.0)).crop_to(FIXTURE_STRUCTURES, 12.0)
