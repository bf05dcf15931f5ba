"""The adapter to nnU-Net v2: the only package of autoorgan that imports ``nnunetv2``.

Everything nnU-Net does for us goes through here — loading a trained model once and predicting
arrays with it, planning and preprocessing a dataset, and training — so the supported nnU-Net
version range is tested in one place and nothing else depends on nnU-Net's internals.

The parts, one job each:

- :mod:`~autoorgan.engine.nnunet_env`: the installed nnU-Net version, the folders nnU-Net reads
  from the environment (:func:`nnunet_environment`), and nnU-Net's printed progress sent to the
  log at DEBUG level instead of the user's terminal.
- :mod:`~autoorgan.engine.device`: the torch device a user names (:func:`resolve_device`).
- :mod:`~autoorgan.engine.safety`: a model's files are data, not code — checkpoints are unpickled
  without running code (:func:`load_checkpoint`), and the names in ``plans.json`` that nnU-Net
  imports are checked first (:func:`check_model_code`), unless the user trusts the model.
- :mod:`~autoorgan.engine.segmenter`: a trained model loaded once, predicting label maps
  (:class:`Segmenter`).
- :mod:`~autoorgan.engine.predictor`: the nnU-Net predictor the segmenter runs (part of a sliding
  window, several tiles per network call on the CPU); it imports torch and nnunetv2 when imported,
  so only loading a model imports it.
- :mod:`~autoorgan.engine.training`: planning, preprocessing and training (:func:`train`).
- :mod:`~autoorgan.engine.export`: nnU-Net's export and install of model archives.
- :mod:`~autoorgan.engine.precision`: the network's precision on the CPU (``--precision``):
  bfloat16 where the CPU has it natively (:func:`resolve_precision`), unless the model's check
  says its bfloat16 labels do not agree with its float32 ones; :mod:`~autoorgan.engine.agreement`
  measures that agreement.
- :mod:`~autoorgan.engine.fast_export`, :mod:`~autoorgan.engine.body`,
  :mod:`~autoorgan.engine.cpu_runtime`: the streamed torch export, the body's bounding box, and
  the CPU settings of the sliding window.

The names below are re-exported here (``from autoorgan import engine; engine.Segmenter(...)``).
Importing this package imports neither torch nor nnunetv2; the functions import them when called.
"""

from __future__ import annotations

from autoorgan.engine.device import resolve_device
from autoorgan.engine.export import EXPORT_FOLD_FILES, EXPORT_MODEL_FILES, export_model, install_model_archive
from autoorgan.engine.nnunet_env import SUPPORTED_NNUNET, NnUNetPaths, nnunet_environment, nnunet_version
from autoorgan.engine.precision import PrecisionChoice, cpu_bf16_support, resolve_precision
from autoorgan.engine.safety import (
    LAYER_PACKAGE,
    NETWORK_PACKAGE,
    UnsafeCheckpoint,
    UnsafeModel,
    check_model_code,
    checkpoint_summary,
    load_checkpoint,
    trainer_class,
)
from autoorgan.engine.segmenter import TILE_BATCH_ACTIVATIONS, Segmenter, nonzero_box_vanishes, tile_batch_size
from autoorgan.engine.training import (
    TrainingSchedule,
    apply_plans_override,
    dataset_name,
    plan_and_preprocess,
    train,
)

__all__ = [
    "EXPORT_FOLD_FILES",
    "EXPORT_MODEL_FILES",
    "LAYER_PACKAGE",
    "NETWORK_PACKAGE",
    "SUPPORTED_NNUNET",
    "TILE_BATCH_ACTIVATIONS",
    "NnUNetPaths",
    "PrecisionChoice",
    "Segmenter",
    "TrainingSchedule",
    "UnsafeCheckpoint",
    "UnsafeModel",
    "apply_plans_override",
    "check_model_code",
    "checkpoint_summary",
    "cpu_bf16_support",
    "dataset_name",
    "export_model",
    "install_model_archive",
    "load_checkpoint",
    "nnunet_environment",
    "nnunet_version",
    "nonzero_box_vanishes",
    "plan_and_preprocess",
    "resolve_device",
    "resolve_precision",
    "tile_batch_size",
    "train",
    "trainer_class",
]
