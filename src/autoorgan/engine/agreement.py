"""bfloat16 labels of a model against its float32 labels (:class:`~autoorgan.engine.precision.Agreement`),
the measurement behind a model's precision check (:func:`~autoorgan.engine.precision.write_precision_check`);
and a simulation of CPU bfloat16 autocast at float32 speed (:func:`simulated_bf16`), for measuring
that agreement on a CPU that only emulates bfloat16.

CPU autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``) runs convolutions, transposed
convolutions and linear layers in bfloat16: their inputs, weights and biases are cast to bfloat16,
the products are accumulated in float32 and the result is stored in bfloat16. Instance norm and
leaky ReLU are on neither of autocast's lists: they run in the dtype of their input (bfloat16 once a
convolution has fed them), computed in float32 inside and stored in bfloat16. :func:`simulated_bf16`
does the same with float32 arithmetic: it rounds to bfloat16 (``x.to(torch.bfloat16).float()``)
where autocast stores bfloat16. On a CPU without native bfloat16, autocast runs PyTorch's fallback
kernels, about 290 times slower than float32 on nnU-Net's default architecture
(docs/performance.md); the simulation runs at float32 speed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.engine.precision import Agreement, dice_scores, float32_blocks
from autoorgan.engine.segmenter import Segmenter

log = logging.getLogger(__name__)

#: How :func:`simulated_bf16` adds a transposed convolution's bias. ``"fallback"``: as PyTorch's
#: CPU kernels without native bfloat16 do (the product rounded to bfloat16, the bias added, rounded
#: again; measured against this machine's autocast); ``"fused"``: as oneDNN's bfloat16 kernels
#: add it on CPUs with native bfloat16 (in the float32 accumulator, one rounding; not measurable
#: on a CPU without them).
TRANSPOSED_BIAS = ("fallback", "fused")


def measure_agreement(model_folder: Path, fold: int | str, images: Sequence[tuple[str, np.ndarray, Sequence[float]]],
                      *, simulate: bool = False, **segmenter_options: Any) -> tuple[Agreement, dict[str, np.ndarray]]:
    """Labels of each image (``(name, array_zyx, spacing_zyx)``) in float32 and in bfloat16 (forced:
    emulated where the CPU lacks it, slower; with ``simulate``, :func:`simulated_bf16` at float32
    speed, with the blocks the engine keeps in float32), and their agreement.

    Returns the agreement and the float32 label maps by name. ``segmenter_options`` go to both
    :class:`~autoorgan.engine.segmenter.Segmenter`\\ s (e.g. ``use_mirroring``).
    """
    import torch

    cpu = torch.device("cpu")
    float32 = Segmenter(model_folder, fold, cpu, precision="fp32", **segmenter_options)
    if simulate:
        bfloat16 = Segmenter(model_folder, fold, cpu, precision="fp32", **segmenter_options)
        predictor = bfloat16._predictor

        def simulated_call(x: Any) -> Any:
            # Around each network call: nnU-Net loads the weights again before each sliding window.
            with simulated_bf16(predictor.network, float32_blocks(predictor.network)):
                return predictor.network(x).float()

        predictor.cpu_bf16 = True  # the bfloat16 call's path (mirroring, sums), with the simulation
        predictor._network_bf16 = simulated_call  # type: ignore[method-assign]
    else:
        bfloat16 = Segmenter(model_folder, fold, cpu, precision="bf16", **segmenter_options)
    dice: dict[str, dict[int, float]] = {}
    reference_maps = {}
    for name, array, spacing in images:
        spacing_zyx = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
        reference = float32.predict(array, spacing_zyx)
        other = bfloat16.predict(array, spacing_zyx)
        values = (set(np.unique(reference).tolist()) | set(np.unique(other).tolist())) - {0}
        dice[name] = dice_scores(reference, other, sorted(values))
        reference_maps[name] = reference
        log.info("%s: bf16 against fp32, min Dice %.5f", name, min(dice[name].values(), default=float("nan")))
    return Agreement(dice), reference_maps


# -- simulated bfloat16 autocast --------------------------------------------------------------------


def _round(value: Any) -> Any:
    """A float tensor rounded to bfloat16 (round to nearest even) and back; anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.bfloat16).float()
    return value


def _lower_precision_types() -> tuple[type[Any], ...]:
    """The module types whose calls CPU autocast runs in bfloat16 (its ``lower_precision_fp`` ops:
    ``conv1d/2d/3d``, ``conv_transpose1d/2d/3d``, ``linear``)."""
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _kept(name: str, keep_fp32: Sequence[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep_fp32)


@contextlib.contextmanager
def simulated_bf16(network: Any, keep_fp32: Sequence[str] = (), transposed_bias: str = "fallback") -> Iterator[None]:
    """Within the block, ``network``'s calls compute what they compute under CPU bfloat16 autocast,
    in float32 arithmetic: the inputs, weights and biases of each convolution, transposed
    convolution and linear layer rounded to bfloat16, the layer run in float32, its output rounded
    to bfloat16; the output of every other leaf module (norms, activations) rounded to bfloat16.

    ``keep_fp32``: names of submodules (``network.named_modules()``, e.g. ``"decoder.seg_layers"``)
    left in float32, as modules run with autocast disabled would be; name whole blocks (a convolution
    with its norm and activation), since a norm after a float32 convolution stays float32 under
    autocast. ``transposed_bias``: one of :data:`TRANSPOSED_BIAS`.

    The weights are swapped for rounded copies (and a transposed convolution's bias set aside)
    until the block ends: enter it around each network call, not around nnU-Net's predictor, which
    loads the weights again before each sliding window. Measured against real autocast on the
    fixture models (benchmarks/precision_benchmark.py ``simulate``). Not a precision to run: a
    measuring tool.
    """
    import torch

    if transposed_bias not in TRANSPOSED_BIAS:
        raise ValueError(f"transposed_bias must be one of {', '.join(TRANSPOSED_BIAS)}, got '{transposed_bias}'")
    names = {name for name, _ in network.named_modules()}
    unknown = [k for k in keep_fp32 if k not in names]
    if unknown:
        raise ValueError(f"no such submodule: {', '.join(unknown)}")
    lower = _lower_precision_types()
    transposed = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    handles: list[Any] = []
    saved: list[tuple[Any, str, Any]] = []

    def round_inputs(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(_round(a) for a in args)

    def round_output(_module: Any, _args: Any, output: Any) -> Any:
        return _round(output)

    def add_bias_and_round(bias: Any) -> Any:
        shape = (1, -1) + (1,) * 8  # broadcast over the spatial axes, trimmed below

        def hook(_module: Any, _args: Any, output: Any) -> Any:
            view = bias.reshape(shape[:output.dim()])
            return _round(_round(output) + view)
        return hook

    try:
        with torch.no_grad():
            for name, module in network.named_modules():
                if any(True for _ in module.children()) or _kept(name, keep_fp32):
                    continue
                if isinstance(module, lower):
                    handles.append(module.register_forward_pre_hook(round_inputs))
                    for pname in ("weight", "bias"):
                        param = getattr(module, pname, None)
                        if param is not None:
                            saved.append((module, pname, param))
                            rounded = torch.nn.Parameter(_round(param.detach()), requires_grad=False)
                            setattr(module, pname, rounded)
                    if transposed_bias == "fallback" and isinstance(module, transposed) and module.bias is not None:
                        bias = module.bias.detach()
                        module.bias = None  # added after the product is rounded, as the fallback kernel does
                        handles.append(module.register_forward_hook(add_bias_and_round(bias)))
                        continue
                handles.append(module.register_forward_hook(round_output))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, pname, param in reversed(saved):
            setattr(module, pname, param)


__all__ = ["TRANSPOSED_BIAS", "measure_agreement", "simulated_bf16"]
