"""Models with RANDOM weights, for timing and memory measurements only (the benchmark models)."""

from __future__ import annotations

import json
from pathlib import Path


def write_untrained_checkpoint(model_folder: Path, *, configuration: str = "3d_fullres", fold: int | str = 0,
                               trainer: str = "nnUNetTrainer", seed: int = 0) -> Path:
    """Write ``fold_{fold}/checkpoint_final.pth`` with RANDOMLY initialised weights of the network
    nnU-Net builds from ``model_folder``'s plans (for timing and memory benchmarks only).

    The checkpoint holds the keys nnU-Net's own loader and :class:`autoorgan.engine.Segmenter` read:
    ``network_weights``, ``init_args.configuration``, ``trainer_name`` and
    ``inference_allowed_mirroring_axes``. Returns its path.
    """
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((model_folder / "dataset.json").read_text(encoding="utf-8"))
    plans_manager = PlansManager(json.loads((model_folder / "plans.json").read_text(encoding="utf-8")))
    configuration_manager = plans_manager.get_configuration(configuration)
    torch.manual_seed(seed)
    network = recursive_find_trainer_class_by_name(trainer).build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    path = model_folder / f"fold_{fold}" / "checkpoint_final.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": network.state_dict(),
                "init_args": {"configuration": configuration, "fold": fold},
                "trainer_name": trainer,
                "inference_allowed_mirroring_axes": tuple(range(len(configuration_manager.patch_size)))}, str(path))
    return path
