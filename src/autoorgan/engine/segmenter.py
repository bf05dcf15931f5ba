"""A trained nnU-Net model loaded once (:class:`Segmenter`), predicting label maps for many arrays.

The model's files are checked before nnU-Net builds anything from them
(:mod:`autoorgan.engine.safety`); the sliding window is nnU-Net's own predictor with the changes of
:mod:`autoorgan.engine.predictor`, imported when the first model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.engine.nnunet_env import quiet_nnunet
from autoorgan.engine.safety import check_model_code, load_checkpoint, trainer_class
from autoorgan.errors import CaseError

log = logging.getLogger(__name__)


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
        ``"torch"`` (default): the streamed torch export of :mod:`autoorgan.engine.fast_export`, the same
        interpolation as nnU-Net's in a fraction of its time and memory; ``"nnunet"``: nnU-Net's
        own ``convert_predicted_logits_to_segmentation_with_correct_shape``. Models whose plans
        use another probability resampling always use nnU-Net's.
    crop_body:
        Predict only the bounding box of the body (:func:`autoorgan.engine.body.body_box`), as a region
        of :meth:`predict`: the tiles over the air around it are skipped, inside it the labels
        are the whole image's, outside it background.
    tile_batch:
        Sliding-window tiles per network call on the CPU (``None``: :func:`tile_batch_size`
        decides). Only how the tiles are grouped changes, not what is computed.
    precision:
        ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (``--precision``): the network's precision on
        the CPU, resolved for this machine and model by
        :func:`autoorgan.engine.precision.resolve_precision`; :attr:`precision` and
        :attr:`precision_reason` say what runs and why.
    trust_checkpoint:
        Load a checkpoint that needs code to unpickle, skip
        :func:`~autoorgan.engine.safety.check_model_code` on ``plans.json`` and let nnU-Net look
        the trainer up anywhere (``--trust-checkpoint``). Untrusted, such a model raises
        :class:`~autoorgan.engine.safety.UnsafeCheckpoint` (or
        :class:`~autoorgan.engine.safety.UnsafeModel`) before nnU-Net imports anything its files name.
    """

    def __init__(self, model_folder: Path, fold: int | str, device: Any, *, tile_step_size: float = 0.5,
                 checkpoint_name: str = "checkpoint_final.pth", trust_checkpoint: bool = False,
                 use_mirroring: bool = True, export: str = "torch", crop_body: bool = False,
                 tile_batch: int | None = None, precision: str = "fp32"):
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from autoorgan.engine.precision import resolve_precision
        from autoorgan.engine.predictor import BatchedTilePredictor, torch_export_applies

        self.model_folder = Path(model_folder)
        self.device = device
        choice = resolve_precision(precision, device, self.model_folder)
        #: The precision the network runs in (``fp32``, ``bf16``, or ``fp16``: nnU-Net's CUDA autocast).
        self.precision = choice.precision
        #: Why (the machine's bfloat16 support, the model's check, or the request).
        self.precision_reason = choice.reason
        if choice.emulated:
            log.warning("bfloat16 requested but this CPU has no native bfloat16: emulated, slower than float32")
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
        with quiet_nnunet():
            predictor = BatchedTilePredictor(
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
        predictor.cpu_bf16 = choice.cpu_bf16
        self._predictor = predictor
        if export not in ("torch", "nnunet"):
            raise ValueError(f"unknown export '{export}'; use torch or nnunet")
        applies = torch_export_applies(configuration_manager) and not predictor.label_manager.has_regions
        self.export = "torch" if export == "torch" and applies else "nnunet"
        self.crop_body = crop_body
        #: Seconds per stage of the last :meth:`predict` (``preprocess``, ``network``, ``export``).
        self.last_timing: dict[str, float] = {}
        #: Sliding-window tiles the last :meth:`predict` ran, and how many cover the whole image.
        self.last_tiles: tuple[int, int] = (0, 0)
        #: Measure :attr:`last_confidence` in :meth:`predict` (costs a softmax over the logits).
        self.measure_confidence = False
        #: With :attr:`measure_confidence`: the last prediction's mean top softmax probability over
        #: its foreground voxels, and its foreground volume (ml), on the network's grid.
        self.last_confidence: tuple[float, float] | None = None
        log.debug("loaded %s fold %s on %s (export: %s, precision: %s: %s)", self.model_folder, fold, device,
                  self.export, self.precision, self.precision_reason)

    @property
    def progress(self) -> Callable[[int, int], None] | None:
        """Called with (tiles done, tiles in all) as :meth:`predict` runs the network: at 0 when
        the sliding window starts, then after each network call (each group of
        ``tile_batch`` tiles on the CPU, each tile on a GPU). ``None`` (default): not called."""
        return self._predictor.progress

    @progress.setter
    def progress(self, callback: Callable[[int, int], None] | None) -> None:
        self._predictor.progress = callback

    @property
    def trainer_name(self) -> str:
        return str(self._predictor.trainer_name)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self._predictor.configuration_manager.patch_size)

    @property
    def working_spacing(self) -> tuple[float, ...]:
        """The spacing (mm) of the network's grid, in the order of :attr:`patch_size`."""
        return tuple(float(t) for t in self._predictor.configuration_manager.spacing)

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
        from autoorgan.engine.body import body_box, box_fraction

        box = body_box(array_zyx, spacing_zyx)
        if box is None or box_fraction(box, array_zyx.shape) > 0.95:
            return None
        log.debug("body box %s covers %.0f%% of the image", box, 100 * box_fraction(box, array_zyx.shape))
        return box

    def _predict_region(self, array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                        roi: tuple[slice, ...] | None = None) -> np.ndarray:
        """nnU-Net's ``predict_single_npy_array`` step by step — preprocess, network, export — timed.

        The steps are nnU-Net's own (``run_case_npy``, ``predict_logits_from_preprocessed_data``);
        only the export may be the streamed torch one (see :mod:`autoorgan.engine.fast_export`). With
        ``roi`` only the tiles the region's export reads are run (see :meth:`predict`).
        """
        import time

        import torch

        predictor = self._predictor
        spacing = [float(s) for s in spacing_zyx]
        start = time.perf_counter()
        with quiet_nnunet():
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
            if self.measure_confidence:
                self.last_confidence = foreground_confidence(
                    logits, [float(t) for t in predictor.configuration_manager.spacing])
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
        from autoorgan.engine.fast_export import region_source_box

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
        from autoorgan.engine.fast_export import export_labels

        return export_labels(logits, properties, transpose_backward=predictor.plans_manager.transpose_backward,
                             nearest_axis=self._nearest_axis(properties), label_dtype=dtype,
                             working_shape=working_shape, logits_start=corner, region=region)


def foreground_confidence(logits: Any, working_spacing: Sequence[float]) -> tuple[float, float]:
    """The model's confidence in its foreground: the mean top softmax probability over the voxels of
    each structure it labels, averaged over the structures; and the foreground volume (ml) of
    ``logits`` (classes first, on a grid of ``working_spacing`` mm).

    A model fed arrays the way it was trained is sure of its foreground; fed them permuted or
    flipped it is less so (used by ``autoorgan calibrate``).
    """
    import torch

    with torch.no_grad():
        probabilities = torch.softmax(logits.float(), dim=0)
        top, classes = probabilities.max(dim=0)
        foreground = classes > 0
        count = int(foreground.sum())
        # Each structure counts once, whatever its size: a small one the model is unsure of
        # weighs as much as a large one it finds anyway.
        means = [float(top[classes == c].mean()) for c in torch.unique(classes[foreground]).tolist()]
    return (float(np.mean(means)) if means else 0.0), count * float(np.prod(working_spacing)) / 1000.0


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
