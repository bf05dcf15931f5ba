"""The numeric precision the network runs in (``--precision auto|fp32|bf16``), chosen per machine
and per model.

On the CPU the network runs in float32 unless bfloat16 autocast (``torch.autocast("cpu",
dtype=torch.bfloat16)``) is chosen. bfloat16 pays only where the CPU computes it natively (AMX
or AVX512-BF16); where it is emulated it is several times slower than float32
(docs/performance.md). So ``auto`` looks at the machine when the model loads (:func:`cpu_bf16_support`:
oneDNN's own check ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` and the CPU flags
``avx512_bf16`` / ``amx_bf16``) and picks bfloat16 only where both say yes.

Per model: a model whose bfloat16 labels were measured not to agree with its float32 ones is kept
in float32 under ``auto`` by a check stored beside it, ``<model folder>/autoorgan_precision.json``
(:func:`write_precision_check`; written by ``autoorgan check-precision`` on the user's CTs
(:mod:`autoorgan.runs.precision_check`), by ``benchmarks/precision_benchmark.py agreement
--write-check``, or by hand as ``{"bf16": {"agrees": false}}``). A model without a check follows the machine, as nnU-Net's own
half-precision autocast on CUDA does. An explicit ``fp32`` or ``bf16`` is always obeyed
(``bf16`` on a CPU without it runs emulated, with a warning).

On CUDA nnU-Net's own autocast (float16) runs whatever is asked; on other devices float32.

Only the network's calls change: its outputs are cast back to float32 before the mirrored
predictions are summed, and the Gaussian weighting, the tile sums, the softmax/argmax and the
export are exactly those of a float32 run (:mod:`autoorgan.engine.predictor`). Inside a call the
first encoder stage and the segmentation layers stay in float32 (:func:`float32_blocks`,
:func:`blocks_in_float32`): on the tests' trained models that left several times fewer voxels
changed than plain autocast, for an eighth of the FLOPs of nnU-Net's default architecture
(docs/performance.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: What ``--precision`` accepts.
PRECISIONS = ("auto", "fp32", "bf16")
#: The CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: The file beside a model (in its ``{trainer}__{plans}__{configuration}`` folder) that records
#: whether its bfloat16 labels agree with its float32 ones.
CHECK_FILE = "autoorgan_precision.json"
#: What the bfloat16 network call keeps in float32 (:func:`float32_blocks`), as recorded.
BF16_CALL = "first encoder stage and segmentation layer in float32"
#: Agreement of bfloat16 with float32 labels a model must reach (Dice per structure and case).
MIN_DICE = 0.99
MEDIAN_DICE = 0.999


@dataclass(frozen=True)
class Bf16Support:
    """What this machine's CPU offers for bfloat16."""

    #: oneDNN's check (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``).
    onednn: bool
    #: Of :data:`BF16_FLAGS`, those the CPU lists.
    flags: tuple[str, ...]

    @property
    def native(self) -> bool:
        """bfloat16 computed by the hardware: oneDNN supports it and the CPU lists a bf16 flag."""
        return self.onednn and bool(self.flags)

    def describe(self) -> str:
        flags = ", ".join(self.flags) if self.flags else f"none of {', '.join(BF16_FLAGS)}"
        return f"oneDNN bf16 {'supported' if self.onednn else 'not supported'}; CPU flags: {flags}"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs in, and why."""

    #: ``fp32``, ``bf16`` (CPU autocast) or ``fp16`` (nnU-Net's CUDA autocast).
    precision: str
    reason: str
    #: bfloat16 on a CPU that only emulates it (slower than float32).
    emulated: bool = False

    @property
    def cpu_bf16(self) -> bool:
        return self.precision == "bf16"

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.precision, "reason": self.reason}

    @property
    def label(self) -> str:
        """What a prediction records it was made with (``made_with``): the precision, and for
        bfloat16 the blocks kept in float32 (:data:`BF16_CALL`), so that ``--continue`` redoes
        cases made by another bfloat16 call."""
        return f"bf16 ({BF16_CALL})" if self.precision == "bf16" else self.precision


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first processor of a ``/proc/cpuinfo`` text (``flags`` on x86,
    ``Features`` on ARM)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def _probe() -> Bf16Support:
    import torch

    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN
        onednn = False
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no flags to read
        text = ""
    flags = cpu_flags(text)
    return Bf16Support(onednn=onednn, flags=tuple(f for f in BF16_FLAGS if f in flags))


def cpu_bf16_support() -> Bf16Support:
    """This machine's bfloat16 support, probed once per process. The one place the hardware is
    asked: tests replace this function."""
    return _probe()


def read_precision_check(model_folder: Path) -> dict[str, Any] | None:
    """The model's bfloat16 check (:data:`CHECK_FILE`), or ``None`` where there is none or it
    cannot be read (logged)."""
    path = Path(model_folder) / CHECK_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): taken as a failed bfloat16 check", path, exc)
        return {"agrees": False, "unreadable": True}
    check = data.get("bf16") if isinstance(data, dict) else None
    if not isinstance(check, dict) or not isinstance(check.get("agrees"), bool):
        log.warning("%s holds no bf16 entry with 'agrees' true or false: taken as a failed check", path)
        return {"agrees": False, "unreadable": True}
    return check


def resolve_precision(requested: str, device: Any, model_folder: Path | None = None) -> PrecisionChoice:
    """The precision a model in ``model_folder`` runs in on ``device`` when ``requested``
    (``auto``, ``fp32`` or ``bf16``). ``ValueError`` for another value."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{requested}'")
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        return PrecisionChoice("fp16", "CUDA: nnU-Net's own autocast (float16); --precision applies to the CPU")
    if kind != "cpu":
        return PrecisionChoice("fp32", f"{kind}: float32 (nnU-Net's); --precision applies to the CPU")
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested")
    support = cpu_bf16_support()
    if requested == "bf16":
        if support.native:
            return PrecisionChoice("bf16", f"requested; native on this CPU ({support.describe()})")
        return PrecisionChoice("bf16", f"requested; emulated on this CPU, slower than float32 ({support.describe()})",
                               emulated=True)
    if not support.native:
        return PrecisionChoice("fp32", f"auto: no native bfloat16 on this CPU ({support.describe()})")
    check = read_precision_check(model_folder) if model_folder is not None else None
    if check is not None and not check["agrees"]:
        measured = ""
        if isinstance(check.get("min_dice"), (int, float)):
            measured = f": min Dice {check['min_dice']:.4f}, median {check.get('median_dice', float('nan')):.4f}"
        return PrecisionChoice("fp32", f"auto: the model's bfloat16 check ({CHECK_FILE}) failed{measured}")
    checked = "the model's bfloat16 check passed" if check is not None else "the model has no bfloat16 check"
    return PrecisionChoice("bf16", f"auto: native bfloat16 on this CPU ({support.describe()}); {checked}")


# -- float32 blocks inside a bfloat16 call --------------------------------------------------------


def float32_blocks(network: Any) -> list[str]:
    """The submodules of ``network`` (nnU-Net's U-Net from ``dynamic_network_architectures``) that a
    bfloat16 call keeps in float32: the first encoder stage (with the stem, where there is one),
    which reads the image, and the segmentation layers, which turn the last features into logits.

    Why these: on the tests' trained models, rounding the image and the first stage's features to
    bfloat16 moved most of the boundary voxels that changed, and the logits' own rounding some
    more; kept in float32 they leave several times fewer voxels changed than plain autocast, for
    about an eighth of the FLOPs of a tile of nnU-Net's default 3d_fullres architecture
    (``benchmarks/precision_benchmark.py simulate``; docs/performance.md). A network without an
    ``encoder.stages`` and a ``decoder.seg_layers`` keeps nothing in float32 (plain autocast)."""
    encoder: Any = getattr(network, "encoder", None)
    decoder: Any = getattr(network, "decoder", None)
    if not hasattr(encoder, "stages") or not hasattr(decoder, "seg_layers") or not len(encoder.stages):
        return []
    first = ["encoder.stem"] if getattr(encoder, "stem", None) is not None else []
    return [*first, "encoder.stages.0", "decoder.seg_layers"]


@contextlib.contextmanager
def blocks_in_float32(network: Any, names: Iterable[str]) -> Iterator[None]:
    """Within the block, the submodules ``names`` of ``network`` (the members of a ``ModuleList``)
    run with autocast disabled, their floating-point inputs cast to float32 (exact from bfloat16):
    inside a bfloat16 autocast call they compute in float32 and hand float32 on."""
    import torch

    modules = dict(network.named_modules())
    patched: list[Any] = []

    def in_float32(forward: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast("cpu", enabled=False):
                return forward(*(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                                 for a in args), **kwargs)
        return run

    try:
        for name in names:
            module = modules[name]
            # A ModuleList is never called itself: its members are.
            members = list(module.children()) if isinstance(module, torch.nn.ModuleList) else [module]
            for member in members:
                member.forward = in_float32(member.forward)
                patched.append(member)
        yield
    finally:
        for module in patched:
            del module.forward


# -- agreement ------------------------------------------------------------------------------------


def dice_scores(reference: np.ndarray, other: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice of ``other`` against ``reference`` for each label present in either (1.0 where both
    are empty is left out)."""
    scores = {}
    for value in labels:
        a, b = reference == value, other == value
        total = int(a.sum()) + int(b.sum())
        if total:
            scores[int(value)] = 2.0 * int(np.logical_and(a, b).sum()) / total
    return scores


@dataclass(frozen=True)
class Agreement:
    """Dice of bfloat16 labels against float32 labels, per case and structure."""

    #: case → structure value → Dice.
    dice: Mapping[str, Mapping[int, float]]
    min_dice_bound: float = MIN_DICE
    median_dice_bound: float = MEDIAN_DICE

    @property
    def scores(self) -> list[float]:
        return [s for per_case in self.dice.values() for s in per_case.values()]

    @property
    def min_dice(self) -> float:
        return min(self.scores, default=float("nan"))

    @property
    def median_dice(self) -> float:
        return float(np.median(self.scores)) if self.scores else float("nan")

    @property
    def agrees(self) -> bool:
        """Whether the minimum and the median reach their bounds (no structure: not shown to agree)."""
        return bool(self.scores) and self.min_dice >= self.min_dice_bound and self.median_dice >= self.median_dice_bound

    def summary(self) -> dict[str, Any]:
        return {"agrees": self.agrees, "min_dice": round(self.min_dice, 5), "median_dice": round(self.median_dice, 5),
                "bounds": {"min_dice": self.min_dice_bound, "median_dice": self.median_dice_bound},
                "cases": len(self.dice), "scores": len(self.scores)}


def write_precision_check(model_folder: Path, agreement: Agreement, *, fold: int | str,
                          note: str | None = None) -> Path:
    """Record ``agreement`` beside the model (:data:`CHECK_FILE`), read by ``auto`` from then on
    (written atomically)."""
    from datetime import date

    from autoorgan.io.writing import write_json

    entry: dict[str, Any] = {**agreement.summary(), "fold": str(fold), "measured": date.today().isoformat(),
                             "cpu_bf16": asdict(cpu_bf16_support())}
    if note:
        entry["note"] = note
    return write_json({"bf16": entry}, Path(model_folder) / CHECK_FILE)


__all__ = ["BF16_CALL", "BF16_FLAGS", "CHECK_FILE", "MEDIAN_DICE", "MIN_DICE", "PRECISIONS", "Agreement",
           "Bf16Support", "PrecisionChoice", "blocks_in_float32", "cpu_bf16_support", "cpu_flags", "dice_scores",
           "float32_blocks", "read_precision_check", "resolve_precision", "write_precision_check"]
