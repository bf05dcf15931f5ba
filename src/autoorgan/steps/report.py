"""The report outputs as pipeline steps: what ``--statistics`` and ``--preview`` add to a batch.

Per case (:class:`~autoorgan.batch.job.CaseStep`, run after the label map is written):

* :class:`VolumesStep` → the sidecar's ``volumes_ml`` (always: voxel counts × voxel volume, so the
  overview lists volumes without ``--statistics``);
* :class:`StatisticsStep` → ``OUT/<case>.stats.json``
* :class:`PreviewStep` → ``OUT/<case>.png``

Once per batch (:class:`~autoorgan.batch.job.BatchStep`, in this order):

* :class:`BackfillSkipped` — cases skipped by ``--continue`` get the per-case files they lack,
  from their existing label map, so the overview is complete;
* :class:`~autoorgan.report.run_record.RunRecorder` → ``OUT/autoorgan_run-part….json``;
* :class:`StatisticsTable` → ``OUT/statistics.csv``;
* :class:`IndexPage` → ``OUT/index.html``.

The table and the page cover every case that any run record in the folder mentions (each case
with its latest status). They are the only files several shards write: each rebuilds them
atomically from the folder, and rebuilds again if another shard's run record appeared meanwhile,
so the folder ends with an overview of all shards however they interleave.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from autoorgan.batch.job import BatchResult, CaseContext
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.errors import AutoOrganError, OutputError
from autoorgan.io.cases import Case
from autoorgan.io.image import read_volume
from autoorgan.io.reading import read_case
from autoorgan.io.safe_paths import component_problem, path_inside
from autoorgan.io.writing import atomic_path, write_json
from autoorgan.registry.tasks import Task
from autoorgan.report.html import (
    CaseRow,
    check_failures,
    main_volumes,
    repair_flags,
    sidecar_output_files,
    volumes_of_counts,
    write_index,
)
from autoorgan.report.preview import render_preview
from autoorgan.report.run_record import RECORD_GLOB, RunRecorder, latest_case_entries, read_run_records
from autoorgan.report.statistics import FIELDS, StructureStats, spreadsheet_row, structure_statistics
from autoorgan.steps.viewer_files import ViewerLabelTables

log = logging.getLogger(__name__)

STATS_SUFFIX = ".stats.json"
PREVIEW_SUFFIX = ".png"
STATISTICS_CSV = "statistics.csv"
INDEX_HTML = "index.html"

UNITS = {
    "volume_ml": "millilitres (voxels × voxel volume)",
    "intensity": "CT values as stored (HU); std is the population standard deviation",
    "centroid_mm": "patient coordinates in mm, LPS (ITK world: +x left, +y posterior, +z superior)",
    "bbox_index": "inclusive voxel indices [x, y, z] of the input grid (min, max)",
    "bbox_mm": "LPS mm extent of the voxel centres in the index box (min, max)",
}


def stats_path(folder: Path, case_id: str) -> Path:
    return folder / f"{case_id}{STATS_SUFFIX}"


def preview_path(folder: Path, case_id: str) -> Path:
    return folder / f"{case_id}{PREVIEW_SUFFIX}"


class ReportStep(Protocol):
    """A per-case step that writes one file (so it can be back-filled for skipped cases)."""

    name: str

    def target(self, outputs: CaseOutputs) -> Path: ...

    def __call__(self, ctx: CaseContext) -> None: ...


def statistics_document(ctx: CaseContext) -> dict[str, Any]:
    """The content of ``<case>.stats.json`` for a case."""
    geometry = ctx.volume.geometry
    stats = structure_statistics(ctx.labels, ctx.volume.array, geometry, ctx.task.labels)
    return {
        "case": ctx.case.case_id,
        "task": ctx.task.name,
        "input": ctx.case.name,
        "voxel_volume_mm3": float(np.prod(geometry.spacing)),
        "units": UNITS,
        "structures": {s.structure: s.to_json() for s in stats},
    }


def structure_volumes(labels: np.ndarray, voxel_mm3: float, names: Mapping[int, str]) -> dict[str, float]:
    """Structure → volume in ml (voxel count × voxel volume, 3 decimals) of the structures present."""
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64, copy=False))
    return {names[v]: round(float(counts[v]) * voxel_mm3 / 1000.0, 3)
            for v in sorted(names) if 0 < v < len(counts) and counts[v] > 0}


@dataclass
class VolumesStep:
    """Records each present structure's volume (ml) in the sidecar's ``volumes_ml``: one count of
    the label map already in memory, so the overview lists volumes for every run."""

    name: str = "volumes"

    def __call__(self, ctx: CaseContext) -> None:
        names = {int(k): v for k, v in ctx.task.labels.items()}
        voxel_mm3 = float(np.prod(ctx.volume.geometry.spacing))
        ctx.sidecar["volumes_ml"] = structure_volumes(ctx.labels, voxel_mm3, names)


@dataclass
class StatisticsStep:
    """Writes ``OUT/<case>.stats.json``: per-structure statistics of the label map on the CT."""

    name: str = "statistics"

    def target(self, outputs: CaseOutputs) -> Path:
        return path_inside(outputs.folder, f"{outputs.case_id}{STATS_SUFFIX}")

    def __call__(self, ctx: CaseContext) -> None:
        target = write_json(statistics_document(ctx), self.target(ctx.outputs))
        ctx.sidecar.setdefault("reports", {})["statistics"] = target.name


@dataclass
class PreviewStep:
    """Writes ``OUT/<case>.png``: slices and a projection with the label overlay."""

    name: str = "preview"

    def target(self, outputs: CaseOutputs) -> Path:
        return path_inside(outputs.folder, f"{outputs.case_id}{PREVIEW_SUFFIX}")

    def __call__(self, ctx: CaseContext) -> None:
        names = {int(k): v for k, v in ctx.task.labels.items()}
        target = render_preview(ctx.volume.array, ctx.labels, ctx.volume.geometry, names,
                                self.target(ctx.outputs), title=f"{ctx.case.case_id} — {ctx.task.name}",
                                colors=ctx.task.colors)
        ctx.sidecar.setdefault("reports", {})["preview"] = target.name


@dataclass
class BackfillSkipped:
    """For cases skipped by ``--continue``, writes the per-case report files they lack.

    The label map already on disk is used with its CT; a case that cannot be back-filled is
    logged and left out of the overview's statistics, never failing the batch.
    """

    task: Task
    cases: Sequence[Case]
    steps: Sequence[ReportStep]

    def __call__(self, results: BatchResult, output_dir: Path) -> None:
        by_id = {c.case_id: c for c in self.cases}
        for result in results.results:
            case = by_id.get(result.case_id)
            if result.status != "skipped" or case is None:
                continue
            outputs = CaseOutputs(output_dir, case.case_id)
            missing = [s for s in self.steps if not s.target(outputs).is_file()]
            label_map = result.output or outputs.label_map
            if missing and not label_map.is_file():
                log.warning("%s: no label map to add %s to", case.case_id, ", ".join(s.name for s in missing))
            elif missing:
                self._fill(case, outputs, label_map, missing)

    def _fill(self, case: Case, outputs: CaseOutputs, label_map: Path, steps: Sequence[ReportStep]) -> None:
        try:
            volume = read_case(case)
            labels = read_volume(label_map).array
            if labels.shape != volume.array.shape:
                raise OutputError(f"{label_map.name} does not match its CT's size")
            ctx = CaseContext(case=case, volume=volume, task=self.task, outputs=outputs, labels=labels)
            for step in steps:
                step(ctx)
        except AutoOrganError as exc:
            log.warning("%s: cannot add %s for the earlier result (%s)", case.case_id,
                        ", ".join(s.name for s in steps), exc)


def overview_entries(results: BatchResult, output_dir: Path) -> dict[str, dict[str, Any]]:
    """Each case the folder's run records mention (plus this batch's), with its latest entry."""
    entries = latest_case_entries(read_run_records(output_dir))
    for r in results.results:
        previous = entries.get(r.case_id)
        if r.status == "skipped" and previous is not None and previous.get("status") == "done":
            continue
        entries[r.case_id] = {"case": r.case_id, "status": r.status, "error": r.error, "seconds": r.seconds}
    return dict(sorted(entries.items()))


def _record_files(output_dir: Path) -> set[str]:
    return {p.name for p in output_dir.glob(RECORD_GLOB)}


def write_settled(output_dir: Path, write: Callable[[], None], attempts: int = 5) -> None:
    """Run ``write`` (which builds a file from the folder's run records) until no new run record
    appeared while it ran, so a concurrent shard's cases are never left out for good."""
    for _ in range(attempts):
        before = _record_files(output_dir)
        write()
        if _record_files(output_dir) == before:
            return


def read_statistics(folder: Path, case_id: str) -> dict[str, Any] | None:
    """A case's statistics document, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads(stats_path(folder, case_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("structures"), dict) else None


def statistics_csv(documents: Mapping[str, Mapping[str, Any]]) -> str:
    """The statistics table (case id → statistics document): one row per case and structure.

    Text cells are quoted (so a line break or comma in a name stays in its cell) and neutralised
    against spreadsheet formulas (:func:`~autoorgan.report.statistics.spreadsheet_safe`).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", *FIELDS], lineterminator="\n",
                            quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    for case_id, document in documents.items():
        for entry in document["structures"].values():
            writer.writerow(spreadsheet_row({"case": case_id, **StructureStats.from_json(entry).to_row()}))
    return buffer.getvalue()


@dataclass
class StatisticsTable:
    """Writes ``OUT/statistics.csv`` from the ``<case>.stats.json`` of every complete case."""

    def __call__(self, results: BatchResult, output_dir: Path) -> None:
        write_settled(output_dir, lambda: self._write(results, output_dir))

    def _write(self, results: BatchResult, output_dir: Path) -> None:
        documents = {}
        for case_id, entry in overview_entries(results, output_dir).items():
            if entry.get("status") == "failed":
                continue
            document = read_statistics(output_dir, case_id)
            if document is not None:
                documents[case_id] = document
        target = output_dir / STATISTICS_CSV
        try:
            with atomic_path(target) as tmp:
                tmp.write_text(statistics_csv(documents), encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
        log.info("statistics of %d case(s): %s", len(documents), target.name)


def _label_map_name(outputs: CaseOutputs, sidecar: Mapping[str, Any]) -> str | None:
    """The case's label map file as its sidecar names it (any output format), if it exists."""
    name = sidecar.get("label_map", outputs.label_map.name)
    plain = isinstance(name, str) and component_problem(name) is None  # a sidecar's word is not trusted
    return name if plain and (outputs.folder / name).is_file() else None


def _existing_outputs(outputs: CaseOutputs, sidecar: Mapping[str, Any]) -> dict[str, str]:
    """The DICOM SEG, RTSTRUCT, Slicer segmentation... the sidecar names and the folder holds."""
    return {text: name for text, name in sidecar_output_files(sidecar).items()
            if component_problem(name) is None and (outputs.folder / name).is_file()}


@dataclass
class IndexPage:
    """Writes ``OUT/index.html``: one row per case with preview, status, time and main volumes."""

    task: Task
    recorder: RunRecorder | None = None

    def __call__(self, results: BatchResult, output_dir: Path) -> None:
        write_settled(output_dir, lambda: self._write(results, output_dir))

    def _write(self, results: BatchResult, output_dir: Path) -> None:
        rows = []
        for case_id, entry in overview_entries(results, output_dir).items():
            outputs = CaseOutputs(output_dir, case_id)
            sidecar = outputs.read_sidecar() or {}
            document = read_statistics(output_dir, case_id)
            label_map = _label_map_name(outputs, sidecar)
            counted = sidecar.get("volumes_ml")
            preview = preview_path(output_dir, case_id)
            seconds = entry.get("seconds")
            rows.append(CaseRow(
                case_id=case_id,
                status=str(entry.get("status", "unknown")),
                seconds=float(seconds) if isinstance(seconds, (int, float)) and entry.get("status") != "skipped"
                else None,
                error=entry.get("error"),
                preview=preview.name if preview.is_file() else None,
                statistics=stats_path(output_dir, case_id).name if document is not None else None,
                label_map=label_map,
                volumes=main_volumes(list(document["structures"].values())) if document
                else volumes_of_counts(counted) if isinstance(counted, dict) else [],
                files=_existing_outputs(outputs, sidecar),
                viewer=label_map is not None,
                check_failures=check_failures(sidecar),
                repair_flags=repair_flags(sidecar),
            ))
        links = []
        if (output_dir / STATISTICS_CSV).is_file():
            links.append(("statistics.csv", STATISTICS_CSV))
        if self.recorder is not None and self.recorder.written is not None:
            links.append(("run record", self.recorder.written.name))
        for text, table in zip(("3D Slicer colour table", "ITK-SNAP label descriptions"),
                               ViewerLabelTables(self.task).paths(output_dir), strict=True):
            if table.is_file():
                links.append((text, table.name))
        write_index(output_dir / INDEX_HTML, rows, title=f"autoorgan · {self.task.name}", extra_links=links)
