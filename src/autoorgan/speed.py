"""Speed settings of a prediction: what is exact by default, and the measured ``--fast`` preset.

The default reproduces ``nnUNetv2_predict`` (mirroring on, tile step 0.5) label for label; its
only change is the streamed torch export (:mod:`autoorgan.fast_export`), which gives the same
labels in less time and memory. ``--fast`` combines the two savings whose agreement with the
default was measured at Dice >= 0.99: no mirroring (one network pass per tile instead of up to
eight; no change at all for models trained without it, as AutoOrgan's are) and the body crop
(:mod:`autoorgan.body`; it changes nothing inside the body's box, only skips the tiles over
air). A larger tile step (``--step-size``) is not part of it: it moves the labels of a small
model by more than that (``benchmarks/fast_agreement.py``; the README quotes the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoorgan.errors import InputError

#: nnU-Net's default sliding-window step.
DEFAULT_STEP = 0.5
EXPORTS = ("torch", "nnunet")


@dataclass(frozen=True)
class SpeedOptions:
    """How one run predicts: sliding-window step, mirroring, body crop and export."""

    step_size: float = DEFAULT_STEP
    tta: bool = True
    crop_body: bool = False
    export: str = "torch"

    def as_dict(self) -> dict[str, object]:
        return {"step_size": self.step_size, "tta": self.tta, "crop_body": self.crop_body, "export": self.export}


def resolve_speed(*, fast: bool = False, step_size: float | None = None, tta: bool | None = None,
                  crop_body: bool | None = None, export: str = "torch") -> SpeedOptions:
    """The settings of a run: the default (or the ``fast`` preset), with any explicit choice on top.

    ``None`` means "not chosen": the preset decides. Raises :class:`InputError` for a step outside
    (0, 1] or an unknown export.
    """
    step = step_size if step_size is not None else DEFAULT_STEP
    if not 0 < step <= 1:
        raise InputError(f"step size must be in (0, 1], got {step}")
    kind = export.strip().lower()
    if kind not in EXPORTS:
        raise InputError(f"export must be one of {', '.join(EXPORTS)}, got '{export}'")
    return SpeedOptions(step_size=float(step), tta=(not fast) if tta is None else tta,
                        crop_body=fast if crop_body is None else crop_body, export=kind)
