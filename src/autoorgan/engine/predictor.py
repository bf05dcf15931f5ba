"""The predictor :class:`autoorgan.engine.segmenter.Segmenter` runs: nnU-Net's own ``nnUNetPredictor``,
able to run part of a sliding window, and sending several tiles per network call on the CPU.

This module imports torch and nnunetv2 when it is imported: it is imported when a model is
loaded, never at command-line start-up.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import dummy_context, empty_cache

from autoorgan.engine.cpu_runtime import network_settings


class BatchedTilePredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that can run part of a sliding window, and whose CPU sliding window
    sends :attr:`tile_batch` tiles per network call.

    Everything else is nnU-Net's: padding, the tiles (``_internal_get_sliding_window_slicers``),
    mirroring (``_internal_maybe_mirror_and_predict``, which works on a batch), the Gaussian
    weights and the half-precision sums in the same tile order. With ``tile_batch`` 1, or on a
    GPU, nnU-Net's own loop runs for the whole image. On the CPU the sliding window runs under
    :func:`autoorgan.engine.cpu_runtime.network_settings` (freed memory reused from tile to tile):
    faster, and the logits stay nnU-Net's bit for bit. With :attr:`cpu_bf16` the network's calls
    on the CPU run under bfloat16 autocast, their outputs cast back to float32 before anything
    else touches them (:mod:`autoorgan.engine.precision`).
    """

    #: Set by nnU-Net when the model is loaded.
    network: torch.nn.Module
    tile_batch: int = 1
    #: Tiles run by the last prediction, and tiles of the whole image.
    last_tiles: tuple[int, int] = (0, 0)
    #: Called with (tiles done, tiles in all) after each network call of a prediction: every
    #: tile counts once per set of model parameters (fold); ``None``: nobody listens.
    progress: Callable[[int, int], None] | None = None
    _tiles_done: int = 0
    _tiles_total: int = 0
    #: The network's calls run under bfloat16 autocast on the CPU (``--precision``, see
    #: :mod:`autoorgan.engine.precision`); everything around them stays float32.
    cpu_bf16: bool = False

    def start_progress(self, tiles: int) -> None:
        """A prediction of ``tiles`` sliding-window tiles per set of parameters begins."""
        self._tiles_done, self._tiles_total = 0, tiles * max(1, len(self.list_of_parameters))
        if self.progress is not None:
            self.progress(0, self._tiles_total)

    def _end_progress(self) -> None:
        self._tiles_done = self._tiles_total = 0

    def predict_logits_from_preprocessed_data(self, data: Any) -> Any:
        self._end_progress()  # the first pass of the sliding window starts the count
        try:
            return super().predict_logits_from_preprocessed_data(data)
        finally:
            self._end_progress()

    def _internal_maybe_mirror_and_predict(self, x: Any) -> Any:
        if self.cpu_bf16 and x.device.type == "cpu":
            prediction = self._mirror_and_predict_bf16(x)
        else:
            prediction = super()._internal_maybe_mirror_and_predict(x)
        if self._tiles_total:
            self._tiles_done = min(self._tiles_done + int(x.shape[0]), self._tiles_total)
            if self.progress is not None:
                self.progress(self._tiles_done, self._tiles_total)
        return prediction

    def _network_bf16(self, x: Any) -> Any:
        """One network call under bfloat16 autocast, its output back in float32. The first encoder
        stage (it reads the image) and the segmentation layers (they make the logits) stay in
        float32 (:func:`autoorgan.engine.precision.float32_blocks`)."""
        from autoorgan.engine.precision import blocks_in_float32, float32_blocks

        with torch.autocast("cpu", dtype=torch.bfloat16), blocks_in_float32(self.network,
                                                                             float32_blocks(self.network)):
            output = self.network(x)
        return output.float()

    def _mirror_and_predict_bf16(self, x: Any) -> Any:
        """nnU-Net's ``_internal_maybe_mirror_and_predict`` with each network call in bfloat16: the
        same mirroring combinations in the same order, summed and averaged in float32."""
        prediction = self._network_bf16(x)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        if mirror_axes is not None:
            if max(mirror_axes) > x.ndim - 3:
                raise ValueError("mirror_axes does not match the dimension of the input")
            axes = [m + 2 for m in mirror_axes]
            combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for flipped in combinations:
                prediction += torch.flip(self._network_bf16(torch.flip(x, flipped)), flipped)
            prediction /= len(combinations) + 1
        return prediction

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
                index = (slice(None), *local)
                predicted[index] += prediction
                counts[local] += gaussian
        return predicted, counts

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: Any, slicers: Any,
                                                       do_on_device: bool = True) -> Any:
        self.last_tiles = (len(slicers), len(slicers))
        if not self._tiles_total:  # the whole image (predict_logits_for_region has started its own count)
            self.start_progress(len(slicers))
        restart = self._tiles_done  # nnU-Net runs a pass again on the CPU when the GPU runs out of memory
        with network_settings(self.device):
            if self.tile_batch <= 1 or self.device.type != "cpu":
                try:
                    return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
                except RuntimeError:
                    self._tiles_done = restart
                    raise
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
        self.start_progress(len(slicers))
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
            total: torch.Tensor | None = None
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
            if total is None:
                raise RuntimeError("the predictor holds no model parameters")
            if len(self.list_of_parameters) > 1:
                total /= len(self.list_of_parameters)
            return total, tuple(a - o for (a, _), o in zip(keep, offset, strict=True))
        finally:
            self._end_progress()
            empty_cache(self.device)
            torch.set_num_threads(n_threads)


def torch_export_applies(configuration_manager: Any) -> bool:
    """Whether the torch export reproduces this configuration's probability resampling: nnU-Net's
    default one (linear, nearest neighbour along a separate z axis) on a 3-D configuration."""
    config = configuration_manager.configuration
    kwargs = config.get("resampling_fn_probabilities_kwargs", {})
    return (config.get("resampling_fn_probabilities") == "resample_data_or_seg_to_shape"
            and len(configuration_manager.spacing) == 3 and not kwargs.get("is_seg", False)
            and kwargs.get("order", 3) == 1 and kwargs.get("order_z", 0) == 0)
