"""A model's files are data, not code: checks before nnU-Net loads a model.

Checkpoints are unpickled without running code (:func:`load_checkpoint`, :func:`checkpoint_summary`),
and the names in ``plans.json`` that nnU-Net imports are checked first (:func:`check_model_code`,
:func:`trainer_class`), unless the user trusts the model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.engine.nnunet_env import quiet_nnunet

log = logging.getLogger(__name__)


class UnsafeCheckpoint(Exception):
    """A checkpoint that only full (code-executing) unpickling could load."""


def _safe_checkpoint_globals() -> list[Any]:
    """The plain types nnU-Net checkpoints hold besides tensors (numpy scalars in the logs)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    types: list[Any] = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    types += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return types


def _load_without_code(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with numpy's plain types allowed; a checkpoint that needs
    any other global raises :class:`UnsafeCheckpoint` naming it."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_safe_checkpoint_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if detail:
            raise UnsafeCheckpoint(f"{path.name} needs arbitrary code to load (it asks for {detail.group(1)})"
                                   ) from None
        refused = re.search(r"WeightsUnpickler error: \s*([^\n]+)", str(exc))
        reason = refused.group(1).strip() if refused else str(exc).splitlines()[0]
        raise UnsafeCheckpoint(f"{path.name} cannot be loaded without running code ({reason}): it is damaged, "
                               "or needs arbitrary code to load") from None


def load_checkpoint(path: Path, *, trust: bool = False) -> dict[str, Any]:
    """Load an nnU-Net checkpoint without executing code from it.

    ``torch.load(weights_only=True)`` with numpy's plain types allowed: a checkpoint that needs any
    other global (which full unpickling would import and call) raises :class:`UnsafeCheckpoint`,
    unless ``trust`` is set, in which case it is loaded with full unpickling.
    """
    import torch

    try:
        return _load_without_code(path)
    except UnsafeCheckpoint:
        if not trust:
            raise
    log.warning("loading %s with full unpickling because it is trusted explicitly", path)
    return torch.load(str(path), map_location="cpu", weights_only=False)


def checkpoint_summary(path: Path) -> tuple[str, str]:
    """``(trainer_name, configuration)`` of an nnU-Net checkpoint, read without executing code.

    Used to check an archive before it is installed: the checkpoint is loaded as by
    :func:`load_checkpoint` (never trusted), memory-mapped where torch's format allows, so a
    large checkpoint is not read into memory. Raises :class:`UnsafeCheckpoint` for a checkpoint
    that needs code to load, ``ValueError`` for one that is not a readable nnU-Net checkpoint.
    """
    import zipfile

    try:
        checkpoint = _load_without_code(path, mmap=zipfile.is_zipfile(path))
    except UnsafeCheckpoint:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ValueError(f"{path.name} is not a readable checkpoint ({type(exc).__name__})") from None
    try:
        return str(checkpoint["trainer_name"]), str(checkpoint["init_args"]["configuration"])
    except (KeyError, TypeError):
        raise ValueError(f"{path.name} is not an nnU-Net checkpoint (no trainer_name / init_args)") from None


# ---------------------------------------------------------------------------------------------
# Names in plans.json that nnU-Net imports


class UnsafeModel(UnsafeCheckpoint):
    """A model whose ``plans.json`` or checkpoint names code outside nnU-Net's own modules and
    its network library, which nnU-Net would import and call while building the model."""


#: The package nnU-Net's network classes come from.
NETWORK_PACKAGE = "dynamic_network_architectures"
#: The package of the layer classes ``_kw_requires_import`` entries name (``torch.nn.Conv3d`` ...).
LAYER_PACKAGE = "torch.nn"
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


def _defined_in(obj: Any, package: str) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == package or module.startswith(package + "."))


def _locate_class_in(name: Any, package: str, base: type) -> type | None:
    """``pydoc.locate(name)`` — as nnU-Net resolves it — if ``name`` is a dotted name inside
    ``package`` (nothing outside the package is imported to find out) and resolves to a subclass
    of ``base`` defined in the package; else ``None``."""
    import pydoc

    if not isinstance(name, str) or not _DOTTED_NAME.fullmatch(name) or not name.startswith(package + "."):
        return None
    try:
        found = pydoc.locate(name)
    except pydoc.ErrorDuringImport:
        return None
    if isinstance(found, type) and issubclass(found, base) and _defined_in(found, package):
        return found
    return None


def _find_nnunet_object(name: Any, subpackage: str) -> Any:
    """What nnU-Net's ``recursive_find_python_class`` finds for ``name`` in ``nnunetv2.{subpackage}``
    (``None`` for a name that is not a plain identifier, or that is not found)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        return None
    folder = os.path.join(nnunetv2.__path__[0], *subpackage.split("."))
    return recursive_find_python_class(folder, name, f"nnunetv2.{subpackage}")


def _network_problem(architecture: Any) -> str | None:
    """Why an ``architecture`` entry of a plans configuration is unsafe to build, or ``None``."""
    import torch

    if not isinstance(architecture, Mapping):
        return "'architecture' is not an object"
    name = architecture.get("network_class_name")
    if _locate_class_in(name, NETWORK_PACKAGE, torch.nn.Module) is None:
        return f"names network class {name!r}, which is not a network class of {NETWORK_PACKAGE}"
    kwargs = architecture.get("arch_kwargs")
    imports = architecture.get("_kw_requires_import", [])
    if not isinstance(kwargs, Mapping) or not isinstance(imports, list | tuple):
        return "has no 'arch_kwargs' object or no '_kw_requires_import' list"
    for key in imports:
        if not isinstance(key, str):
            return f"lists {key!r} in '_kw_requires_import', which is not an arch_kwargs key"
        value = kwargs.get(key)
        if value is not None and _locate_class_in(value, LAYER_PACKAGE, torch.nn.Module) is None:
            return (f"imports {value!r} for arch_kwargs entry {key!r}, which is not a layer class of "
                    f"{LAYER_PACKAGE}")
    return None


def _configuration_problem(configuration: Mapping[str, Any]) -> str | None:
    """Why a resolved plans configuration names code outside nnU-Net, or ``None``."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    problem = _network_problem(configuration.get("architecture"))
    if problem:
        return problem
    preprocessor = configuration.get("preprocessor_name")
    found = _find_nnunet_object(preprocessor, "preprocessing")
    if not (isinstance(found, type) and issubclass(found, DefaultPreprocessor) and _defined_in(found, "nnunetv2")):
        return f"names preprocessor {preprocessor!r}, which is not a preprocessor of nnunetv2"
    schemes = configuration.get("normalization_schemes", [])
    for scheme in schemes if isinstance(schemes, list | tuple) else [schemes]:
        found = _find_nnunet_object(scheme, "preprocessing.normalization")
        if not (isinstance(found, type) and issubclass(found, ImageNormalization) and _defined_in(found, "nnunetv2")):
            return f"names normalization {scheme!r}, which is not a normalization scheme of nnunetv2"
    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        if key not in configuration:
            continue
        found = _find_nnunet_object(configuration[key], "preprocessing.resampling")
        if not (callable(found) and _defined_in(found, "nnunetv2.preprocessing.resampling")):
            return f"names {key} {configuration[key]!r}, which is not a resampling function of nnunetv2"
    return None


def check_model_code(plans: Mapping[str, Any], configuration: str, *, source: str) -> None:
    """Refuse a model whose files would make nnU-Net import code outside nnunetv2 and
    ``dynamic_network_architectures``.

    nnU-Net builds a model from names: ``network_class_name`` and the ``_kw_requires_import``
    entries of ``arch_kwargs`` in ``plans.json`` go through ``pydoc.locate`` (any importable
    callable, e.g. ``logging.basicConfig`` or ``os.system``, is then called with arguments from
    the same file); the trainer, preprocessor, normalization schemes, resampling functions and
    label manager are looked up by name. Allowed: network classes of
    ``dynamic_network_architectures``, ``torch.nn`` layer classes, and for the others nnunetv2's
    own classes and functions of the kind expected (the trainer, named by the checkpoint, is
    checked by :func:`trainer_class`). Nothing outside those packages is imported to check a
    name. ``configuration`` is the one that will be used (``inherits_from`` resolved).
    Raises :class:`UnsafeModel` naming ``source`` and the entry, ``ValueError`` when the plans
    have no such configuration.
    """
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        resolved = PlansManager(dict(plans)).get_configuration(configuration).configuration
    except Exception as exc:  # noqa: BLE001 - nnU-Net raises several kinds for a malformed plans file
        raise ValueError(f"{source} has no usable configuration '{configuration}' ({type(exc).__name__}: "
                         f"{exc})".splitlines()[0]) from None
    problem = _configuration_problem(resolved)
    if problem is None and "label_manager" in plans:
        found = _find_nnunet_object(plans["label_manager"], "utilities.label_handling")
        if not (isinstance(found, type) and issubclass(found, LabelManager) and _defined_in(found, "nnunetv2")):
            problem = f"names label manager {plans['label_manager']!r}, which is not a label manager of nnunetv2"
    if problem is not None:
        raise UnsafeModel(f"{source} (configuration '{configuration}') {problem}")


def trainer_class(name: Any, *, trust: bool, source: str = "the checkpoint") -> type[Any]:
    """nnU-Net's trainer class ``name``, as its loader finds it.

    Untrusted, only nnunetv2's own trainers are allowed (a subclass of ``nnUNetTrainer`` defined
    in nnunetv2); trusted, nnU-Net's full lookup runs (including ``$nnUNet_extTrainer``).
    Raises :class:`UnsafeModel` for a name that is not such a trainer.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    if trust:
        with quiet_nnunet():
            return recursive_find_trainer_class_by_name(str(name))
    found = _find_nnunet_object(name, "training.nnUNetTrainer")
    if not (isinstance(found, type) and issubclass(found, nnUNetTrainer) and _defined_in(found, "nnunetv2")):
        raise UnsafeModel(f"{source} names trainer {name!r}, which is not one of nnunetv2's trainers")
    return found
