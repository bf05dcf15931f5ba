"""``--split``: one binary mask per structure, ``OUT/<case>/<structure>.nii.gz``.

Each mask is on exactly the label map's grid and is written atomically; the sidecar lists them.
Every structure of the task (or of ``--roi-subset``) gets a file, empty where it was not found,
so a folder of cases always has the same files. Paths are built with
:func:`~autoorgan.io.safe_paths.path_inside`, so a case id or structure name can never place a
file outside the output folder (task tables refuse such names when loaded; this holds even for
a task built in Python).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autoorgan.batch.outputs import prepare_case_folder
from autoorgan.io.image import image_from_array
from autoorgan.io.safe_paths import path_inside
from autoorgan.io.writing import write_image

if TYPE_CHECKING:
    from autoorgan.batch.job import CaseContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitMasksStep:
    """Extra output: ``<case>/<structure><suffix>`` uint8 masks (1 inside) of ``structures``
    (value → name; ``None``: every label of the task)."""

    structures: Mapping[int, str] | None = None
    suffix: str = ".nii.gz"
    name: str = "structure masks"

    def __call__(self, ctx: CaseContext) -> None:
        structures = self.structures if self.structures is not None else ctx.task.labels
        targets = {value: path_inside(ctx.outputs.folder, ctx.case.case_id, f"{structure}{self.suffix}")
                   for value, structure in structures.items()}  # every path checked before anything is written
        folder = prepare_case_folder(ctx.outputs.folder, ctx.case.case_id)
        files: dict[str, str] = {}
        for value, structure in structures.items():
            mask = (ctx.labels == value).astype(np.uint8)
            target = targets[value]
            write_image(image_from_array(mask, ctx.volume.geometry), target)
            files[structure] = f"{folder.name}/{target.name}"
        ctx.sidecar["structure_masks"] = files
        log.debug("%s: wrote %d structure masks", ctx.case.case_id, len(files))
