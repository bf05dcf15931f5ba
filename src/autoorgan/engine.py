"""The adapter to nnU-Net v2: the only module of autoorgan that imports ``nnunetv2``.

Everything nnU-Net does for us goes through here — loading a trained model once and predicting
arrays with it, planning and preprocessing a dataset, and training — so the supported nnU-Net
version range is tested in one place and nothing else depends on nnU-Net's internals.

nnU-Net reads its folders from the environment variables ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results``; :func:`nnunet_environment` sets them for the
duration of a call (and child processes inherit them), so nothing relies on them being set when
a module is imported. nnU-Net also ``print``\\ s progress; that text goes to this module's logger
at DEBUG level instead of the user's terminal.

A model's files are data, not code: checkpoints are unpickled without running code
(:func:`load_checkpoint`), and the names in ``plans.json`` that nnU-Net imports are checked
first (:func:`check_model_code`), unless the user trusts the model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.cpu_runtime import network_settings
from autoorgan.errors import CaseError

log = logging.getLogger(__name__)

#: nnU-Net versions this adapter is tested with (also the dependency range in pyproject.toml).
SUPPORTED_NNUNET = ">=2.8.1,<2.9"


def nnunet_version() -> str:
    """Installed nnunetv2 version."""
    return metadata.version("nnunetv2")


class _LogStream(io.TextIOBase):
    """A write-only text stream that forwards whole lines to a logger.

    Lines matching ``promote`` (training progress) are logged at INFO, the rest at DEBUG.
    """

    def __init__(self, logger: logging.Logger, promote: re.Pattern[str] | None = None):
        self._logger, self._promote, self._buffer = logger, promote, ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                level = logging.INFO if self._promote and self._promote.search(line) else logging.DEBUG
                self._logger.log(level, "nnU-Net: %s", line.strip())
        return len(text)


_TRAINING_PROGRESS = re.compile(r"Epoch \d+$|train_loss|val_loss|Pseudo dice|Epoch time|Mean Validation Dice")


@contextlib.contextmanager
def _quiet_nnunet(promote: re.Pattern[str] | None = None) -> Iterator[None]:
    stream = _LogStream(log, promote)
    with contextlib.redirect_stdout(stream):
        yield


@dataclass(frozen=True)
class NnUNetPaths:
    """The three folders nnU-Net works with (any may be ``None`` when a step does not need it)."""

    raw: Path | None = None
    preprocessed: Path | None = None
    results: Path | None = None


@contextlib.contextmanager
def nnunet_environment(paths: NnUNetPaths, **extra: str) -> Iterator[None]:
    """Set nnU-Net's environment variables (and ``extra`` ones) for the duration of the block."""
    wanted = {
        "nnUNet_raw": paths.raw,
        "nnUNet_preprocessed": paths.preprocessed,
        "nnUNet_results": paths.results,
        **extra,
    }
    saved = {key: os.environ.get(key) for key in wanted}
    try:
        for key, value in wanted.items():
            if value is not None:
                os.environ[key] = str(value)
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def resolve_device(device: str = "auto") -> Any:
    """A ``torch.device`` for ``auto|cpu|cuda|cuda:N|mps``; ``ValueError`` if unavailable."""
    import torch

    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' requested but CUDA is not available on this machine")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")


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


def trainer_class(name: Any, *, trust: bool, source: str = "the checkpoint") -> type:
    """nnU-Net's trainer class ``name``, as its loader finds it.

    Untrusted, only nnunetv2's own trainers are allowed (a subclass of ``nnUNetTrainer`` defined
    in nnunetv2); trusted, nnU-Net's full lookup runs (including ``$nnUNet_extTrainer``).
    Raises :class:`UnsafeModel` for a name that is not such a trainer.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    if trust:
        with _quiet_nnunet():
            return recursive_find_trainer_class_by_name(str(name))
    found = _find_nnunet_object(name, "training.nnUNetTrainer")
    if not (isinstance(found, type) and issubclass(found, nnUNetTrainer) and _defined_in(found, "nnunetv2")):
        raise UnsafeModel(f"{source} names trainer {name!r}, which is not one of nnunetv2's trainers")
    return found


def nonzero_box_vanishes(array_zyx: np.ndarray, spacing_zyx: Sequence[float], target_spacing: Sequence[float],
                         transpose_forward: Sequence[int]) -> bool:
    """Whether nnU-Net's crop to the box of the non-zero voxels (``crop_to_nonzero``) leaves a box
    that its resampling to ``target_spacing`` (in ``transpose_forward`` order) shrinks to no voxel.

    nnU-Net takes zero as "outside the scan": an image that is zero but for a speck smaller than
    half a working voxel makes its preprocessing produce an empty array and fail ("zero-size
    array"). What nnU-Net gives outside its crop is background, so such an image's label map is
    empty. An image without any non-zero voxel is predicted whole by nnU-Net (``False``).
    """
    if array_zyx.size == 0 or (array_zyx.flat[0] != 0 and array_zyx.flat[-1] != 0):
        return False  # the box spans every axis: nothing is cropped
    nonzero = array_zyx != 0
    if not nonzero.any():
        return False
    extent = []
    for axis in range(array_zyx.ndim):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(array_zyx.ndim) if a != axis)))
        extent.append((int(hits[-1]) - int(hits[0]) + 1) * float(spacing_zyx[axis]))
    working = [extent[i] / float(target_spacing[k]) for k, i in enumerate(transpose_forward)]
    return bool(np.any(np.round(working) == 0))


class Segmenter:
    """A trained nnU-Net model loaded once, predicting label maps for many arrays.

    Parameters
    ----------
    model_folder:
        The ``{trainer}__{plans}__{configuration}`` folder (with ``dataset.json``, ``plans.json``).
    fold:
        Fold whose ``checkpoint_final.pth`` is used.
    device:
        A ``torch.device``.
    tile_step_size:
        Sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
    use_mirroring:
        Test-time augmentation by mirroring (nnU-Net's default; ``False`` is ``--no-tta``).
    export:
        ``"torch"`` (default): the streamed torch export of :mod:`autoorgan.fast_export`, the same
        interpolation as nnU-Net's in a fraction of its time and memory; ``"nnunet"``: nnU-Net's
        own ``convert_predicted_logits_to_segmentation_with_correct_shape``. Models whose plans
        use another probability resampling always use nnU-Net's.
    crop_body:
        Predict only the bounding box of the body (:func:`autoorgan.body.body_box`), as a region
        of :meth:`predict`: the tiles over the air around it are skipped, inside it the labels
        are the whole image's, outside it background.
    tile_batch:
        Sliding-window tiles per network call on the CPU (``None``: :func:`tile_batch_size`
        decides). Only how the tiles are grouped changes, not what is computed.
    trust_checkpoint:
        Load a checkpoint that needs code to unpickle, skip :func:`check_model_code` on
        ``plans.json`` and let nnU-Net look the trainer up anywhere (``--trust-checkpoint``).
        Untrusted, such a model raises :class:`UnsafeCheckpoint` (or :class:`UnsafeModel`)
        before nnU-Net imports anything its files name.
    """

    def __init__(self, model_folder: Path, fold: int | str, device: Any, *, tile_step_size: float = 0.5,
                 checkpoint_name: str = "checkpoint_final.pth", trust_checkpoint: bool = False,
                 use_mirroring: bool = True, export: str = "torch", crop_body: bool = False,
                 tile_batch: int | None = None):
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.model_folder = Path(model_folder)
        self.device = device
        # The checkpoint is unpickled here, safely, instead of by nnU-Net's loader (full pickle);
        # the network is built and handed over exactly as nnU-Net's own loader does it.
        checkpoint = load_checkpoint(self.model_folder / f"fold_{fold}" / checkpoint_name, trust=trust_checkpoint)
        dataset_json = json.loads((self.model_folder / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((self.model_folder / "plans.json").read_text(encoding="utf-8"))
        configuration = checkpoint["init_args"]["configuration"]
        trainer_name = checkpoint["trainer_name"]
        if not trust_checkpoint:  # before nnU-Net imports anything the plans name (see check_model_code)
            check_model_code(plans, configuration, source=str(self.model_folder / "plans.json"))
        trainer = trainer_class(trainer_name, trust=trust_checkpoint, source=f"fold_{fold}/{checkpoint_name}")
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        network = trainer.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        network.load_state_dict(checkpoint["network_weights"])
        with _quiet_nnunet():
            predictor = _batched_predictor_class()(
                tile_step_size=tile_step_size,
                use_gaussian=True,
                use_mirroring=use_mirroring,
                perform_everything_on_device=device.type == "cuda",
                device=device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            predictor.manual_initialization(
                network, plans_manager, configuration_manager, [checkpoint["network_weights"]], dataset_json,
                trainer_name, checkpoint.get("inference_allowed_mirroring_axes"),
            )
        predictor.tile_batch = tile_batch if tile_batch is not None else tile_batch_size(
            configuration_manager.patch_size, configuration_manager.network_arch_init_kwargs, device)
        self._predictor = predictor
        if export not in ("torch", "nnunet"):
            raise ValueError(f"unknown export '{export}'; use torch or nnunet")
        applies = _torch_export_applies(configuration_manager) and not predictor.label_manager.has_regions
        self.export = "torch" if export == "torch" and applies else "nnunet"
        self.crop_body = crop_body
        #: Seconds per stage of the last :meth:`predict` (``preprocess``, ``network``, ``export``).
        self.last_timing: dict[str, float] = {}
        #: Sliding-window tiles the last :meth:`predict` ran, and how many cover the whole image.
        self.last_tiles: tuple[int, int] = (0, 0)
        log.debug("loaded %s fold %s on %s (export: %s)", self.model_folder, fold, device, self.export)

    @property
    def trainer_name(self) -> str:
        return str(self._predictor.trainer_name)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self._predictor.configuration_manager.patch_size)

    def predict(self, array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                roi: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """Label map (same shape as ``array_zyx``) for one single-channel image.

        ``array_zyx`` is indexed the way nnU-Net's SimpleITK reader gives arrays (z, y, x), with
        ``spacing_zyx`` in the same order.

        ``roi`` (a box of ``array_zyx``) asks for that region only: the image is preprocessed
        whole, and of nnU-Net's sliding-window tiles over the whole image only those that
        contribute to the region's voxels are run. Inside ``roi`` the labels are therefore the
        whole-image prediction's, tile for tile; outside it they are background.
        """
        target = [float(t) for t in self._predictor.configuration_manager.spacing]
        extent = [n * float(sp) for n, sp in zip(array_zyx.shape, spacing_zyx, strict=True)]
        if any(e < t for e, t in zip(extent, target, strict=True)):
            raise CaseError(
                f"image extent {' x '.join(f'{e:.1f}' for e in extent)} mm is smaller than one voxel of the "
                f"model's working grid ({' x '.join(f'{t:.2f}' for t in target)} mm)"
            )
        if nonzero_box_vanishes(array_zyx, spacing_zyx, target, self._predictor.plans_manager.transpose_forward):
            log.warning("the image's non-zero voxels span less than one voxel of the model's working grid: "
                        "nothing to segment, the label map is empty")
            self.last_tiles, self.last_timing = (0, 0), {"preprocess": 0.0, "network": 0.0, "export": 0.0}
            return np.zeros(array_zyx.shape, dtype=np.uint8)
        body = self._body_box(array_zyx, spacing_zyx) if self.crop_body else None
        if body is not None:  # the body's box is a region too: tiles over the air around it are skipped
            box = body if roi is None else tuple(slice(max(r.start, b.start), min(r.stop, b.stop))
                                                 for r, b in zip(roi, body, strict=True))
            roi = (box[0], box[1], box[2])
        if roi is not None and any(s.stop <= s.start for s in roi):
            return np.zeros(array_zyx.shape, dtype=np.uint8)
        return self._predict_region(array_zyx, spacing_zyx, roi)

    @staticmethod
    def _body_box(array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[slice, ...] | None:
        """The body's box when restricting the prediction to it saves work (else ``None``)."""
        from autoorgan.body import body_box, box_fraction

        box = body_box(array_zyx, spacing_zyx)
        if box is None or box_fraction(box, array_zyx.shape) > 0.95:
            return None
        log.debug("body box %s covers %.0f%% of the image", box, 100 * box_fraction(box, array_zyx.shape))
        return box

    def _predict_region(self, array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                        roi: tuple[slice, ...] | None = None) -> np.ndarray:
        """nnU-Net's ``predict_single_npy_array`` step by step — preprocess, network, export — timed.

        The steps are nnU-Net's own (``run_case_npy``, ``predict_logits_from_preprocessed_data``);
        only the export may be the streamed torch one (see :mod:`autoorgan.fast_export`). With
        ``roi`` only the tiles the region's export reads are run (see :meth:`predict`).
        """
        import time

        import torch

        predictor = self._predictor
        spacing = [float(s) for s in spacing_zyx]
        start = time.perf_counter()
        with _quiet_nnunet():
            preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
            data, _, properties = preprocessor.run_case_npy(
                np.asarray(array_zyx, dtype=np.float32)[None], None, {"spacing": spacing}, predictor.plans_manager,
                predictor.configuration_manager, predictor.dataset_json)
            tensor = torch.from_numpy(data)
            del data
            preprocessed = time.perf_counter()
            working_shape = tuple(int(n) for n in tensor.shape[1:])
            region = None if roi is None else tuple(roi[i] for i in predictor.plans_manager.transpose_forward)
            if region is None:
                logits, corner = predictor.predict_logits_from_preprocessed_data(tensor), None
            else:
                needed = self._region_source(region, properties, working_shape)
                if needed is None:  # the region holds only what nnU-Net cropped away as empty
                    self.last_tiles = (0, 0)
                    self.last_timing = {"preprocess": preprocessed - start, "network": 0.0, "export": 0.0}
                    return np.zeros(array_zyx.shape, dtype=np.uint8)
                logits, corner = predictor.predict_logits_for_region(tensor, needed)
            logits = logits.cpu()
            self.last_tiles = predictor.last_tiles
            del tensor
            predicted = time.perf_counter()
            seg = self._export(logits, properties, working_shape=working_shape, corner=corner, region=region)
            del logits
        done = time.perf_counter()
        self.last_timing = {"preprocess": preprocessed - start, "network": predicted - preprocessed,
                            "export": done - predicted}
        log.debug("preprocess %.2f s, network %.2f s (%d of %d tiles), export (%s) %.2f s", preprocessed - start,
                  predicted - preprocessed, *self.last_tiles, self.export, done - predicted)
        return np.asarray(seg)

    def _nearest_axis(self, properties: dict[str, Any]) -> int | None:
        """The working-grid axis nnU-Net's default export resamples by nearest neighbour (anisotropic
        images), or ``None``."""
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        predictor = self._predictor
        configuration = predictor.configuration_manager
        kwargs = configuration.configuration.get("resampling_fn_probabilities_kwargs", {})
        forward = predictor.plans_manager.transpose_forward
        separate_z, axis = determine_do_sep_z_and_axis(
            kwargs.get("force_separate_z"), configuration.spacing, [properties["spacing"][i] for i in forward],
            *(() if "separate_z_anisotropy_threshold" not in kwargs else (kwargs["separate_z_anisotropy_threshold"],)))
        return int(axis) if separate_z else None

    def _region_source(self, region: tuple[slice, ...], properties: dict[str, Any],
                       working_shape: tuple[int, ...]) -> tuple[slice, ...] | None:
        """The working-grid box whose logits the export of ``region`` reads (``None``: nothing to
        predict). nnU-Net's own export may read any logit, so with it every tile runs."""
        from autoorgan.fast_export import region_source_box

        needed = region_source_box(region, properties, working_shape, self._nearest_axis(properties))
        if needed is None or self.export == "torch":
            return needed
        return tuple(slice(0, n) for n in working_shape)

    def _export(self, logits: Any, properties: dict[str, Any], *, working_shape: tuple[int, ...],
                corner: tuple[int, ...] | None = None, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Logits on the network's grid → label map on the input's grid (nnU-Net's or the torch export).

        ``logits`` hold the working grid from ``corner`` on (default: all of it); with ``region``
        only that box of the (transposed) input grid is exported, the rest is background.
        """
        predictor = self._predictor
        dtype = np.uint8 if len(predictor.label_manager.foreground_labels) < 255 else np.uint16
        if self.export == "nnunet":
            from nnunetv2.inference.export_prediction import (
                convert_predicted_logits_to_segmentation_with_correct_shape,
            )

            seg = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties)
            if region is None:
                return np.asarray(seg)
            # The logits held the whole grid (see _region_source); keep the region's labels only.
            box = tuple(region[i] for i in predictor.plans_manager.transpose_backward)
            labels = np.zeros(np.shape(seg), dtype=dtype)
            labels[box] = np.asarray(seg)[box]
            return labels
        from autoorgan.fast_export import export_labels

        return export_labels(logits, properties, transpose_backward=predictor.plans_manager.transpose_backward,
                             nearest_axis=self._nearest_axis(properties), label_dtype=dtype,
                             working_shape=working_shape, logits_start=corner, region=region)


#: Above this many first-stage activations per tile (patch voxels × first-stage features) one
#: tile already keeps every CPU thread busy, so tiles are not grouped (see :func:`tile_batch_size`).
TILE_BATCH_ACTIVATIONS = 8_000_000


def tile_batch_size(patch_size: Any, arch_kwargs: Mapping[str, Any], device: Any) -> int:
    """How many sliding-window tiles one network call should take on ``device``.

    On the CPU, a small network on one tile leaves threads idle: measured on 2 cores, the tiny
    architecture (64³ patch, 8 first-stage features) took 0.345 s per tile one at a time, 0.180 s
    two at a time and 0.238 s four at a time, while nnU-Net's default 1.5 mm architecture
    (160×128×112, 32 features) took 15.8 s and 15.9 s (``benchmarks/network_levers.py --patch``).
    So small networks get as many tiles per call as there are threads (at most 4), large ones
    and GPUs one.
    """
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        return 1
    features = arch_kwargs.get("features_per_stage") or [32]
    activations = int(np.prod([int(p) for p in patch_size])) * int(features[0])
    if activations > TILE_BATCH_ACTIVATIONS:
        return 1
    return max(1, min(4, torch.get_num_threads()))


_BATCHED_PREDICTOR: type | None = None


def _batched_predictor_class() -> type:
    """``nnUNetPredictor`` that can run part of a sliding window, and whose CPU sliding window
    sends :attr:`tile_batch` tiles per network call.

    Everything else is nnU-Net's: padding, the tiles (``_internal_get_sliding_window_slicers``),
    mirroring (``_internal_maybe_mirror_and_predict``, which works on a batch), the Gaussian
    weights and the half-precision sums in the same tile order. With ``tile_batch`` 1, or on a
    GPU, nnU-Net's own loop runs for the whole image. On the CPU the sliding window runs under
    :func:`autoorgan.cpu_runtime.network_settings` (freed memory reused from tile to tile):
    faster, and the logits stay nnU-Net's bit for bit.
    """
    global _BATCHED_PREDICTOR
    if _BATCHED_PREDICTOR is not None:
        return _BATCHED_PREDICTOR
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import dummy_context, empty_cache

    class BatchedTilePredictor(nnUNetPredictor):  # type: ignore[misc]
        tile_batch: int = 1
        #: Tiles run by the last prediction, and tiles of the whole image.
        last_tiles: tuple[int, int] = (0, 0)

        def _accumulate(self, data: Any, slicers: Any, corner: Sequence[int], shape: Sequence[int],
                        device: Any, batch: int) -> tuple[Any, Any]:
            """Gaussian-weighted sums of the tiles' logits and of the weights over the box of the
            (padded) image that starts at ``corner`` and has ``shape``, tiles in the given order."""
            predicted = torch.zeros((self.label_manager.num_segmentation_heads, *shape), dtype=torch.half,
                                    device=device)
            counts = torch.zeros(tuple(shape), dtype=torch.half, device=device)
            gaussian = (compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1.0 / 8,
                                         value_scaling_factor=10, device=device)
                        if self.use_gaussian else 1)
            for start in range(0, len(slicers), batch):
                group = slicers[start:start + batch]
                tiles = torch.stack([data[sl] for sl in group]).to(self.device)
                predictions = self._internal_maybe_mirror_and_predict(tiles).to(device)
                for prediction, sl in zip(predictions, group, strict=True):
                    if self.use_gaussian:
                        prediction *= gaussian
                    local = tuple(slice(s.start - c, s.stop - c) for s, c in zip(sl[1:], corner, strict=True))
                    predicted[(slice(None), *local)] += prediction
                    counts[local] += gaussian
            return predicted, counts

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(self, data: Any, slicers: Any,
                                                           do_on_device: bool = True) -> Any:
            self.last_tiles = (len(slicers), len(slicers))
            with network_settings(self.device):
                if self.tile_batch <= 1 or self.device.type != "cpu":
                    return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
                predicted, counts = self._accumulate(data, slicers, (0,) * (data.ndim - 1), data.shape[1:],
                                                     torch.device("cpu"), self.tile_batch)
            torch.div(predicted, counts, out=predicted)
            if torch.any(torch.isinf(predicted)):
                raise RuntimeError("infinite values in the predicted logits")
            return predicted

        @torch.inference_mode()
        def predict_logits_for_region(self, data: Any, region: Sequence[slice]) -> tuple[Any, tuple[int, ...]]:
            """Logits of the preprocessed ``data`` that are exact inside ``region`` (a box of its grid).

            nnU-Net's ``predict_logits_from_preprocessed_data`` restricted to the sliding-window
            tiles of the whole image that overlap ``region`` (with the other tiles of their
            :attr:`tile_batch` group): every voxel of the region gets the same tiles, weights and
            summation order as in the whole-image prediction. Returns the logits over the union
            box of those tiles (clipped to ``data``) and that box's corner.
            """
            padded, unpad = pad_nd_image(data, self.configuration_manager.patch_size, "constant", {"value": 0},
                                         True, None)
            offset = [s.start for s in unpad[1:]]
            every = self._internal_get_sliding_window_slicers(padded.shape[1:])
            wanted = [(r.start + o, r.stop + o) for r, o in zip(region, offset, strict=True)]
            batch = max(1, self.tile_batch) if self.device.type == "cpu" else 1
            # Whole groups of the whole image's tile groups, so that every tile is computed in the
            # same batch as there.
            groups = [every[i:i + batch] for i in range(0, len(every), batch)]
            slicers = [sl for group in groups
                       if any(all(s.start < hi and s.stop > lo for s, (lo, hi) in zip(sl[1:], wanted, strict=True))
                              for sl in group)
                       for sl in group]
            self.last_tiles = (len(slicers), len(every))
            lows = [min(sl[1 + a].start for sl in slicers) for a in range(len(wanted))]
            highs = [max(sl[1 + a].stop for sl in slicers) for a in range(len(wanted))]
            # The union box's part inside the image (unpadded), relative to the union box.
            keep = [(max(lo, o), min(hi, o + n)) for lo, hi, o, n in zip(lows, highs, offset, data.shape[1:], strict=True)]
            inside = (slice(None), *(slice(a - lo, b - lo) for (a, b), lo in zip(keep, lows, strict=True)))

            n_threads = torch.get_num_threads()
            torch.set_num_threads(min(default_num_processes, n_threads))
            self.network = self.network.to(self.device)
            self.network.eval()
            results_device = self.device if self.perform_everything_on_device else torch.device("cpu")
            autocast = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()
            try:
                total = None
                for params in self.list_of_parameters:
                    if len(self.list_of_parameters) > 1:
                        self.network.load_state_dict(params)
                    empty_cache(self.device)
                    with autocast, network_settings(self.device):
                        predicted, counts = self._accumulate(padded, slicers, lows,
                                                             [h - lo for h, lo in zip(highs, lows, strict=True)],
                                                             results_device, batch)
                    counts[counts == 0] = 1  # union-box voxels no chosen tile covers (never exported)
                    torch.div(predicted, counts, out=predicted)
                    if torch.any(torch.isinf(predicted)):
                        raise RuntimeError("infinite values in the predicted logits")
                    part = predicted[inside].to("cpu")
                    del predicted, counts
                    total = part if total is None else total + part
                if len(self.list_of_parameters) > 1:
                    total /= len(self.list_of_parameters)
                return total, tuple(a - o for (a, _), o in zip(keep, offset, strict=True))
            finally:
                empty_cache(self.device)
                torch.set_num_threads(n_threads)

    _BATCHED_PREDICTOR = BatchedTilePredictor
    return BatchedTilePredictor


def _torch_export_applies(configuration_manager: Any) -> bool:
    """Whether the torch export reproduces this configuration's probability resampling: nnU-Net's
    default one (linear, nearest neighbour along a separate z axis) on a 3-D configuration."""
    config = configuration_manager.configuration
    kwargs = config.get("resampling_fn_probabilities_kwargs", {})
    return (config.get("resampling_fn_probabilities") == "resample_data_or_seg_to_shape"
            and len(configuration_manager.spacing) == 3 and not kwargs.get("is_seg", False)
            and kwargs.get("order", 3) == 1 and kwargs.get("order_z", 0) == 0)


# ---------------------------------------------------------------------------------------------
# Planning, preprocessing and training


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

    with nnunet_environment(paths), _quiet_nnunet():
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
    with nnunet_environment(paths, **extra), _quiet_nnunet(_TRAINING_PROGRESS):
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


# ---------------------------------------------------------------------------------------------
# Model exchange

#: Files nnU-Net's export needs in a model folder and in each exported fold.
EXPORT_MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
EXPORT_FOLD_FILES = ("checkpoint_final.pth", "progress.png", "validation/summary.json")


def export_model(model_folder: Path, archive: Path, *, configuration: str, fold: int | str, trainer: str,
                 plans: str) -> None:
    """Write ``archive`` with nnU-Net's own ``export_pretrained_model`` (one configuration, one fold).

    ``model_folder`` is ``RESULTS/Dataset{ID}_{Name}/{trainer}__{plans}__{configuration}``; the
    archive holds paths relative to ``RESULTS``, the layout ``install_model_from_zip_file`` expects.
    Details of this machine are then taken out (``debug.json``, absolute paths in JSON members;
    see :func:`autoorgan.releases.scrub_model_archive`).
    """
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    from autoorgan.releases import scrub_model_archive

    results = model_folder.parents[1]
    with nnunet_environment(NnUNetPaths(results=results)), _quiet_nnunet():
        export_pretrained_model(model_folder.parent.name, str(archive), configurations=(configuration,),
                                trainer=trainer, plans_identifier=plans, folds=(fold,))
    scrub_model_archive(Path(archive))


def install_model_archive(archive: Path, results: Path) -> None:
    """nnU-Net's own ``install_model_from_zip_file`` into ``results`` (used to check exports)."""
    from nnunetv2.model_sharing.model_import import install_model_from_zip_file

    with nnunet_environment(NnUNetPaths(results=results)), _quiet_nnunet():
        install_model_from_zip_file(str(archive))


# ---------------------------------------------------------------------------------------------
# Benchmark models


def write_untrained_checkpoint(model_folder: Path, *, configuration: str = "3d_fullres", fold: int | str = 0,
                               trainer: str = "nnUNetTrainer", seed: int = 0) -> Path:
    """Write ``fold_{fold}/checkpoint_final.pth`` with RANDOMLY initialised weights of the network
    nnU-Net builds from ``model_folder``'s plans (for timing and memory benchmarks only).

    The checkpoint holds the keys nnU-Net's own loader and :class:`Segmenter` read:
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
