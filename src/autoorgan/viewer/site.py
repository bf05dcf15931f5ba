"""What the viewer may serve from an output folder, and what it shows of each case.

Everything here is decided from the folder itself: a case is a ``<case>.json`` sidecar beside the
label map it names; its CT is the input image the sidecar names (``"input"``, a file name) in the
input the case's latest run record names (``options.input``, a file or folder). Neither file is
trusted further than that: names must be single path components, served files must be regular
files inside the output folder (links resolved), and an input is served only if it is an image
file NiiVue reads whose name gives that case id.

A DICOM series is not one file NiiVue could load, so for DICOM cases the label map is shown
without its CT (the page says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoorgan.batch.outputs import SIDECAR_SUFFIX, CaseOutputs
from autoorgan.io.cases import case_id_of, fit_case_id, image_suffix
from autoorgan.io.safe_paths import component_problem
from autoorgan.registry.colors import RGB, label_colors, parse_color
from autoorgan.report.html import sidecar_output_files
from autoorgan.report.run_record import RECORD_PREFIX, latest_case_entries, read_run_records

log = logging.getLogger(__name__)

#: Image endings NiiVue reads from one file (a detached ``.mhd``/``.nhdr`` header is not one file).
VIEWABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass(frozen=True)
class CaseView:
    """What the viewer page of one case shows."""

    case_id: str
    task: str
    #: The label map's file name inside the output folder.
    label_map: str
    #: Label value → structure name (the sidecar's table).
    labels: dict[int, str]
    #: The CT to show under the labels, or ``None`` (then ``ct_note`` says why).
    ct: Path | None = None
    ct_note: str | None = None
    #: Other outputs of the case worth a link (link text → file name inside the output folder).
    files: dict[str, str] = field(default_factory=dict)
    #: Label value → display colour (the same as in every other output).
    colors: dict[int, RGB] = field(default_factory=dict)


def plain_name(name: object) -> bool:
    """True if ``name`` is one visible path component (no separator, no ``..``, not hidden)."""
    return (isinstance(name, str) and component_problem(name) is None and not name.startswith(".")
            and "\\" not in name)


def _labels(sidecar: Mapping[str, Any]) -> dict[int, str]:
    table = sidecar.get("labels")
    if not isinstance(table, dict):
        return {}
    labels = {}
    for key, name in table.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            continue
        if value > 0 and isinstance(name, str):
            labels[value] = name
    return dict(sorted(labels.items()))


def _own_colors(sidecar: Mapping[str, Any]) -> dict[str, RGB]:
    """A task's own structure colours where the sidecar records them (name → colour); the shipped
    table covers the rest."""
    given = sidecar.get("colors")
    colors: dict[str, RGB] = {}
    if isinstance(given, dict):
        for name, value in given.items():
            try:
                colors[str(name)] = parse_color(value)
            except ValueError:
                continue
    return colors


class OutputSite:
    """The files of one output folder that the viewer serves."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()

    def output_file(self, parts: Sequence[str]) -> Path | None:
        """The regular file of the output folder at ``parts`` (path components), or ``None``.

        Refused: an empty, hidden (temporary files, ``.``, ``..``) or separator-holding component,
        and any path that leaves the folder once links are resolved.
        """
        if not parts or not all(plain_name(p) for p in parts):
            return None
        try:
            resolved = self.folder.joinpath(*parts).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if not resolved.is_relative_to(self.folder) or not resolved.is_file():
            return None
        return resolved

    def case_ids(self) -> list[str]:
        """The cases with a sidecar and the label map it names, sorted."""
        found = []
        for sidecar in sorted(self.folder.glob(f"*{SIDECAR_SUFFIX}")):
            case_id = sidecar.name[: -len(SIDECAR_SUFFIX)]
            if case_id.startswith(RECORD_PREFIX):
                continue
            if self.case(case_id) is not None:
                found.append(case_id)
        return found

    def case(self, case_id: str) -> CaseView | None:
        """The viewer's view of ``case_id``, or ``None`` if the folder holds no label map for it."""
        if not plain_name(case_id):
            return None
        outputs = CaseOutputs(self.folder, case_id)
        sidecar = outputs.read_sidecar()
        if sidecar is None or not isinstance(sidecar.get("task"), str):
            return None
        label_map = sidecar.get("label_map")
        if not plain_name(label_map) or image_suffix(Path(str(label_map))) not in VIEWABLE_SUFFIXES:
            return None
        if self.output_file([str(label_map)]) is None:
            return None
        ct, note = self._ct(case_id, sidecar)
        labels = _labels(sidecar)
        return CaseView(case_id=case_id, task=str(sidecar["task"]), label_map=str(label_map), labels=labels,
                        ct=ct, ct_note=note, files=self._files(sidecar),
                        colors=label_colors(labels, _own_colors(sidecar)))

    def _files(self, sidecar: Mapping[str, Any]) -> dict[str, str]:
        """Other per-case outputs the sidecar names that exist in the folder (link text → file name)."""
        return {text: name for text, name in sidecar_output_files(sidecar).items()
                if self.output_file([name]) is not None}

    def _ct(self, case_id: str, sidecar: Mapping[str, Any]) -> tuple[Path | None, str | None]:
        """The input image of a case, or ``None`` with the reason it is not shown."""
        if sidecar.get("dicom"):
            return None, "The CT is not shown for DICOM input (a series is many files); the label map is shown alone."
        name = sidecar.get("input")
        if not plain_name(name) or image_suffix(Path(str(name))) not in VIEWABLE_SUFFIXES:
            return None, "The CT is not shown: its file type is not one the viewer reads."
        base = self._run_input(case_id)
        if base is None:
            return None, "The CT is not shown: no run record in this folder names the input."
        candidate = base if base.name == name and not base.is_dir() else base / str(name)
        if not candidate.is_file() or fit_case_id(case_id_of(candidate)) != case_id:
            return None, f"The CT is not shown: {name} is no longer at {base}."
        return candidate, None

    def _run_input(self, case_id: str) -> Path | None:
        records = read_run_records(self.folder)
        entry = latest_case_entries(records).get(case_id)
        if entry is None:
            return None
        record = next((r for r in records if r.get("_file") == entry.get("run")), None)
        options = record.get("options") if record else None
        given = options.get("input") if isinstance(options, dict) else None
        return Path(given) if isinstance(given, str) and given else None
