"""The repair as a step of the predict pipeline (:class:`autoorgan.pipeline.CaseStep`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoorgan.postprocess.repair import Companions, RepairOptions, repair_labels

if TYPE_CHECKING:
    from autoorgan.pipeline import CaseContext


class RepairStep:
    """Repairs each predicted label map in place of ``ctx.labels``; the sidecar's ``postprocess``
    section lists what each step changed. The case's CT serves as bone and body reference."""

    name = "repairing"

    def __init__(self, options: RepairOptions | None = None):
        self.options = options or RepairOptions()

    def __call__(self, ctx: CaseContext) -> None:
        result = repair_labels(ctx.labels, ctx.volume.geometry, ctx.task.labels,
                               companions=Companions(ct=ctx.volume.array), options=self.options)
        ctx.labels = result.labels
        ctx.sidecar["postprocess"] = result.report()
