"""The fixture model's task, training data and tiny architecture (shared by conftest and tests)."""

from __future__ import annotations

from autoorgan.phantom import Phantom, make_phantom

#: The fixture model's task: three large pelvic bones, quick to learn for a tiny network.
FIXTURE_TASK = "hip"
FIXTURE_STRUCTURES = ["hip_left", "hip_right", "sacrum"]
#: Training phantoms are stored in mixed orientations; training brings them to the model's.
TRAIN_ORIENTATIONS = ["RAS", "LPS", "LAS", "PIR", "RAS", "LPS", "SAR", "RAS", "ILP", "RAS", "LAI", "RAS"]
#: A tiny 3d_fullres architecture (nnU-Net plans override) that trains in about a minute on 2 cores.
TINY_PLANS = {
    "patch_size": [16, 24, 32],
    "batch_size": 2,
    "architecture": {"arch_kwargs": {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "kernel_sizes": [[3, 3, 3]] * 4,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
    }},
}


def pelvis_phantom(seed: int) -> Phantom:
    """A pelvis crop of a whole-body phantom (4×4×5 mm voxels)."""
    return make_phantom(seed, spacing=(4.0, 4.0, 5.0)).crop_to(FIXTURE_STRUCTURES, 12.0)
