"""The layout of an output folder, and whether a case's outputs are complete.

For case ``C`` a run writes ``C.nii.gz`` (the label map) and then ``C.json`` (the sidecar), both
atomically. Before it replaces a label map it removes the old sidecar, and the new sidecar records
the label map's SHA-256 and size: a sidecar counts only beside the very map it describes, so a run
killed between the two files (or two runs racing on one folder) never leaves a case that looks
done. :func:`done_sidecar` is the one "done" rule; ``--continue`` (:meth:`CaseOutputs.is_complete`)
and ``autoorgan status`` (:func:`autoorgan.batch.status.case_state`) both use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan.errors import OutputError
from autoorgan.io.safe_paths import path_inside
from autoorgan.io.writing import FileDigest, all_temporaries, file_digest, leftover_temporaries, remove_abandoned

log = logging.getLogger(__name__)

LABEL_SUFFIX = ".nii.gz"
SIDECAR_SUFFIX = ".json"
#: Other per-case files are named ``<case>.<infix>.<ending>`` (statistics, DICOM SEG, RT structure set,
#: failure record).
CASE_FILE_INFIXES = ("stats", "seg", "rtstruct", "error")
#: Case ids that cannot be told apart from another case's files: the sidecar of case ``x.error``
#: would be ``x.error.json``, the failure record of case ``x`` (likewise ``x.stats.json``, the
#: statistics of ``x``). Such cases are refused with one line naming the file (rename it).
RESERVED_CASE_ENDINGS = (".error", ".stats")
#: Sidecar key of the options the outputs were made with (see :meth:`CaseOutputs.is_complete`).
OUTPUT_OPTIONS_KEY = "output_options"
#: Sidecar key of what made the outputs: the model's identity (checkpoint SHA-256, trainer, plans,
#: configuration, fold, dataset) and the prediction settings (step, mirroring, body crop, export).
MADE_WITH_KEY = "made_with"
#: Sidecar keys of the label map's SHA-256 and size in bytes.
LABEL_SHA256_KEY = "label_map_sha256"
LABEL_SIZE_KEY = "label_map_size"


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
    #: File ending of the label map: ``.nii.gz`` (default), ``.nrrd`` or ``.seg.nrrd`` (``--output-type``).
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

    def label_map_named(self, data: Mapping[str, Any]) -> Path | None:
        """The label map a sidecar names (a file of this folder), or ``None`` when it names none."""
        name = data.get("label_map", self.label_map.name)
        if name is None:
            return None
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ValueError(f"bad label map name {name!r}")
        return self.folder / name

    def finished_sidecar(self) -> dict[str, Any] | None:
        """The sidecar if this case's outputs are a finished, consistent pair, else ``None``
        (:func:`done_sidecar` of any task)."""
        return done_sidecar(self)

    def is_complete(self, task_name: str, dataset_id: int | None,
                    output_options: Mapping[str, Any] | None = None,
                    made_with: Mapping[str, Any] | None = None) -> bool:
        """True if a finished result of this task (same dataset) is already there.

        Finished is :func:`done_sidecar` for ``task_name``. With ``output_options`` the sidecar must
        record the same options (output type, split masks, ROI subset...), with ``made_with`` the
        same model and prediction settings: outputs made otherwise are not complete for this run.
        """
        data = done_sidecar(self, task_name)
        if data is None:
            return False
        named = data.get("label_map", self.label_map.name)
        if named is not None and named != self.label_map.name:
            return False  # another output type's label map
        for key, wanted in ((OUTPUT_OPTIONS_KEY, output_options), (MADE_WITH_KEY, made_with)):
            if wanted is not None and data.get(key, {}) != _as_json(wanted):
                return False
        return data.get("dataset_id") == dataset_id

    def retire_sidecar(self) -> None:
        """Remove the sidecar before this case's label map is replaced, so that no moment exists
        where an old sidecar stands beside a new map (the checksum would catch it too)."""
        try:
            self.sidecar.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove the old {self.sidecar}: {exc.strerror or exc}") from None

    def remove_leftovers(self) -> int:
        """Delete the temporary files of this case that an interrupted run left (never those of a
        run still writing, see :func:`autoorgan.io.writing.is_abandoned`); returns how many."""
        removed = remove_abandoned(leftover_temporaries(self.folder, self.case_id, CASE_FILE_INFIXES))
        if removed:
            log.info("%s: removed %d leftover temporary file(s)", self.case_id, removed)
        return removed


def done_sidecar(outputs: CaseOutputs, task: str | None = None) -> dict[str, Any] | None:
    """The sidecar of a done case (of ``task`` if given), else ``None``: the one "done" rule.

    Done means: the sidecar is readable, and the label map it names is there with the size and
    SHA-256 the sidecar recorded; a sidecar that names no label map (split masks only) counts as
    it stands. A sidecar without a checksum (an older autoorgan) cannot be checked and does not
    count, nor does one naming a file outside the case's folder.
    """
    data = outputs.read_sidecar()
    if data is None or (task is not None and data.get("task") != task):
        return None
    try:
        label_map = outputs.label_map_named(data)
    except ValueError:
        return None
    if label_map is None:
        return data
    expected_sha, expected_size = data.get(LABEL_SHA256_KEY), data.get(LABEL_SIZE_KEY)
    if not isinstance(expected_sha, str) or not isinstance(expected_size, int):
        return None
    try:
        if label_map.stat().st_size != expected_size or not label_map.is_file():
            return None
        found = file_digest(label_map)
    except OSError:
        return None
    return data if found == FileDigest(expected_sha, expected_size) else None


def _as_json(value: Mapping[str, Any]) -> Any:
    """``value`` as it reads back from a sidecar (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value))


def prepare_case_folder(output_dir: Path, case_id: str) -> Path:
    """``OUT/<case>/``, the folder of a case's per-structure masks or per-task maps: proven inside
    the output folder, created, and cleared of temporary files a killed run left there (a live
    run's are kept). :class:`~autoorgan.errors.OutputError` if it cannot be created."""
    folder = path_inside(output_dir, case_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror or exc}") from None
    remove_abandoned(all_temporaries(folder))
    return folder
