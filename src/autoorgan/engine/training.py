"""Planning, preprocessing and training with nnU-Net's own code."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.engine.nnunet_env import NnUNetPaths, nnunet_environment, quiet_nnunet

#: nnU-Net's printed lines that report training progress (logged at INFO, the rest at DEBUG).
_TRAINING_PROGRESS = re.compile(r"Epoch \d+$|train_loss|val_loss|Pseudo dice|Epoch time|Mean Validation Dice")


def dataset_name(dataset_id: int, raw_dir: Path) -> str:
    """The ``Dataset{ID:03d}_{Name}`` folder name of a raw dataset."""
    matches = sorted(p.name for p in raw_dir.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if len(matches) != 1:
        raise ValueError(f"expected one Dataset{dataset_id:03d}_* folder in {raw_dir}, found {len(matches)}")
    return matches[0]


def plan_and_preprocess(dataset_id: int, paths: NnUNetPaths, *, configuration: str = "3d_fullres",
                        plans: str = "nnUNetPlans", num_processes: int = 1) -> Path:
    """nnU-Net's fingerprint, experiment planning and preprocessing of one configuration.

    Returns the plans file. Runs in this process with ``num_processes`` workers.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    with nnunet_environment(paths), quiet_nnunet():
        extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=False,
                                    clean=True, verbose=False, show_progress_bar=False)
        plan_experiment_dataset(dataset_id, overwrite_plans_name=None if plans == "nnUNetPlans" else plans)
        preprocess_dataset(dataset_id, plans_identifier=plans, configurations=(configuration,),
                           num_processes=(num_processes,), verbose=False, show_progress_bar=False)
    return Path(str(paths.preprocessed)) / dataset_name(dataset_id, Path(str(paths.raw))) / f"{plans}.json"


@dataclass(frozen=True)
class TrainingSchedule:
    """Length of a training run; ``None`` keeps the trainer's own value."""

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    initial_lr: float | None = None


def apply_plans_override(plans_file: Path, configuration: str, override: Mapping[str, Any]) -> None:
    """Deep-merge ``override`` into one configuration of an nnU-Net plans file, in place.

    Used for smaller or larger architectures than nnU-Net plans (e.g. ``patch_size``,
    ``batch_size``, ``architecture.arch_kwargs``); ``data_identifier`` is kept, so the
    preprocessed data stay valid.
    """
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"{plans_file.name} has no configuration '{configuration}'")

    def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
        for key, value in extra.items():
            if isinstance(value, Mapping) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(plans["configurations"][configuration], override)
    plans_file.write_text(json.dumps(plans, indent=2), encoding="utf-8")


def train(dataset_id: int, paths: NnUNetPaths, *, configuration: str, fold: int | str, trainer: str,
          plans: str, device: Any, schedule: TrainingSchedule = TrainingSchedule(),
          resume: bool = False, augmentation_workers: int | None = None, seed: int | None = None) -> Path:
    """Train one fold with nnU-Net's trainer ``trainer`` (a class name nnU-Net can find).

    The schedule is set on the trainer instance, so the checkpoint records the trainer's own
    name and the model folder is exactly where nnU-Net (and ``predict``) looks for it.
    ``seed`` seeds Python's, numpy's and torch's generators first: with augmentation in the
    main process (``augmentation_workers=0``) a CPU training is then repeatable.
    Returns the fold's output folder.
    """
    import random

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    extra = {} if augmentation_workers is None else {"nnUNet_n_proc_DA": str(augmentation_workers)}
    with nnunet_environment(paths, **extra), quiet_nnunet(_TRAINING_PROGRESS):
        nnunet_trainer = get_trainer_from_args(str(dataset_id), configuration, fold, trainer, plans,
                                               continue_training=resume, device=device)
        if schedule.epochs is not None:
            nnunet_trainer.num_epochs = schedule.epochs
        if schedule.iterations_per_epoch is not None:
            nnunet_trainer.num_iterations_per_epoch = schedule.iterations_per_epoch
        if schedule.initial_lr is not None:
            nnunet_trainer.initial_lr = schedule.initial_lr
        if schedule.val_iterations_per_epoch is not None:
            nnunet_trainer.num_val_iterations_per_epoch = schedule.val_iterations_per_epoch
        maybe_load_checkpoint(nnunet_trainer, resume, validation_only=False)
        if device.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        nnunet_trainer.run_training()
        nnunet_trainer.perform_actual_validation(False)
    return Path(nnunet_trainer.output_folder)
