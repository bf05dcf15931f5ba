"""The layout of an output folder, and whether a case's outputs are complete.

For case ``C`` a run writes ``C.nii.gz`` (the label map) and then ``C.json`` (the sidecar). The
sidecar is written last, so its presence means the case finished; both are written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan.io.writing import leftover_temporaries

log = logging.getLogger(__name__)

LABEL_SUFFIX = ".nii.gz"
SIDECAR_SUFFIX = ".json"
#: Other per-case files are named ``<case>.<infix>.<ending>`` (statistics, DICOM SEG, failure record).
CASE_FILE_INFIXES = ("stats", "seg", "error")
#: Case ids that cannot be told apart from another case's files: the sidecar of case ``x.error``
#: would be ``x.error.json``, the failure record of case ``x`` (likewise ``x.stats.json``, the
#: statistics of ``x``). Such cases are refused with one line naming the file (rename it).
RESERVED_CASE_ENDINGS = (".error", ".stats")
#: Sidecar key of the options the outputs were made with (see :meth:`CaseOutputs.is_complete`).
OUTPUT_OPTIONS_KEY = "output_options"


def reserved_case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot be used for output names (see :data:`RESERVED_CASE_ENDINGS`), or ``None``."""
    for ending in RESERVED_CASE_ENDINGS:
        if case_id.lower().endswith(ending):
            base = case_id[: -len(ending)]
            return (f"case id '{case_id}' ends in '{ending}', which autoorgan keeps for its own files "
                    f"('{case_id}.json' would be taken for a file of case '{base}'); rename the input")
    return None


@dataclass(frozen=True)
class CaseOutputs:
    """Paths of one case's outputs."""

    folder: Path
    case_id: str
    #: File ending of the label map: ``.nii.gz`` (default) or ``.nrrd`` (``--output-type nrrd``).
    label_suffix: str = LABEL_SUFFIX

    @property
    def label_map(self) -> Path:
        return self.folder / f"{self.case_id}{self.label_suffix}"

    @property
    def sidecar(self) -> Path:
        return self.folder / f"{self.case_id}{SIDECAR_SUFFIX}"

    def read_sidecar(self) -> dict[str, Any] | None:
        """The sidecar's content, or ``None`` if it is missing or unreadable."""
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_complete(self, task_name: str, dataset_id: int | None,
                    output_options: Mapping[str, Any] | None = None) -> bool:
        """True if a finished result of this task (same dataset) is already there.

        A sidecar whose ``label_map`` is ``null`` (per-structure masks only) needs no label map.
        With ``output_options`` the sidecar must record the same options (output type, split
        masks, ROI subset): outputs made with other options are not complete for this run.
        """
        data = self.read_sidecar()
        if data is None:
            return False
        if data.get("label_map", self.label_map.name) is not None and not self.label_map.is_file():
            return False
        if output_options is not None and data.get(OUTPUT_OPTIONS_KEY, {}) != json.loads(json.dumps(output_options)):
            return False
        return data.get("task") == task_name and data.get("dataset_id") == dataset_id

    def remove_leftovers(self) -> int:
        """Delete temporary files an interrupted run left for this case; returns how many."""
        stale = leftover_temporaries(self.folder, self.case_id, CASE_FILE_INFIXES)
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("%s: removed %d leftover temporary file(s)", self.case_id, len(stale))
        return len(stale)
