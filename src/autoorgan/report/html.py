"""``OUT/index.html``: one self-contained page giving an overview of an output folder.

One row per case: its preview, status, time, error, the main structure volumes and links to its
files (label map, statistics, DICOM SEG, RTSTRUCT, Slicer segmentation: whatever the sidecar names).
The page has inline CSS, no script and only relative links to files next to it, so it opens from
disk (or from any copy of the folder) without a server. The one exception is each case's "3D
viewer" link (:func:`viewer_href`), a page that ``autoorgan view OUT`` serves: from disk that link
leads nowhere, and the page says so.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from autoorgan.io.writing import write_text

#: How many structures' volumes a row shows (the largest ones).
MAIN_STRUCTURES = 6
#: Width in CSS pixels at which the page shows a preview picture (at most; narrower windows
#: scale it down): the preview's legend is drawn to be readable at this size.
PREVIEW_SHOWN_PX = 1200
#: The path, relative to the output folder, under which ``autoorgan view`` serves each case's
#: viewer page. It starts with a dot: no case id does (hidden inputs are ignored), so it never
#: hides a case's own folder.
VIEWER_PREFIX = ".view/"
#: Sidecar keys of per-case outputs worth a link, with the link text. A section is either the
#: file name or a mapping with a ``"file"`` entry.
OUTPUT_LINKS = (
    ("dicom_seg", "DICOM SEG"),
    ("rtstruct", "RTSTRUCT"),
    ("seg_nrrd", "Slicer .seg.nrrd"),
    ("seg-nrrd", "Slicer .seg.nrrd"),
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
p.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; white-space: nowrap; }
img.preview { max-width: PREVIEW_SHOWN_PXpx; width: 100%; height: auto; background: #000; }
td.preview { width: PREVIEW_SHOWN_PXpx; min-width: 480px; }
.done { color: #176f2c; } .skipped { color: #176f2c; } .failed { color: #b00020; font-weight: bold; }
.flag { color: #9a5b00; font-weight: bold; }
ul.vol { margin: 0; padding-left: 1.1em; }
""".replace("PREVIEW_SHOWN_PX", str(PREVIEW_SHOWN_PX))


@dataclass
class CaseRow:
    """What the page shows of one case."""

    case_id: str
    status: str
    seconds: float | None = None
    error: str | None = None
    preview: str | None = None
    statistics: str | None = None
    label_map: str | None = None
    #: (structure, volume in ml), largest first.
    volumes: list[tuple[str, float]] = field(default_factory=list)
    #: Other per-case files: link text → file name (see :func:`sidecar_output_files`).
    files: dict[str, str] = field(default_factory=dict)
    #: Whether the case has a label map the viewer shows (then the row links :func:`viewer_href`).
    viewer: bool = False
    #: The anatomical checks the prediction failed (see :func:`check_failures`); empty: none.
    check_failures: list[str] = field(default_factory=list)
    #: What the anatomical repair left for a person to look at (see :func:`repair_flags`).
    repair_flags: list[str] = field(default_factory=list)


def main_volumes(structures: Sequence[Mapping[str, Any]], limit: int = MAIN_STRUCTURES) -> list[tuple[str, float]]:
    """The ``limit`` largest structures (name, ml) of a statistics file's ``structures`` list."""
    present = [(str(s["structure"]), float(s["volume_ml"])) for s in structures if float(s.get("volume_ml", 0)) > 0]
    return sorted(present, key=lambda item: (-item[1], item[0]))[:limit]


def volumes_of_counts(volumes_ml: Mapping[str, Any], limit: int = MAIN_STRUCTURES) -> list[tuple[str, float]]:
    """The ``limit`` largest structures (name, ml) of a sidecar's ``volumes_ml`` section (structure
    → ml, written for every case, with or without ``--statistics``); anything else is ignored."""
    present = [(str(name), float(ml)) for name, ml in volumes_ml.items()
               if isinstance(ml, (int, float)) and not isinstance(ml, bool) and ml > 0]
    return sorted(present, key=lambda item: (-item[1], item[0]))[:limit]


def sidecar_output_files(sidecar: Mapping[str, Any]) -> dict[str, str]:
    """Link text → file name of the per-case outputs a sidecar names (:data:`OUTPUT_LINKS`).

    Only names are taken (a plain file name, no folder); whether the file exists is the caller's
    check.
    """
    files: dict[str, str] = {}
    for key, text in OUTPUT_LINKS:
        section = sidecar.get(key)
        name = section.get("file") if isinstance(section, Mapping) else section
        if isinstance(name, str) and name and Path(name).name == name and name not in (".", ".."):
            files.setdefault(text, name)
    return files


def check_failures(sidecar: Mapping[str, Any]) -> list[str]:
    """The failures of the sidecar's anatomical ``checks`` (one task's, or each task's of a
    multi-task map, prefixed with the task)."""
    checks = sidecar.get("checks")
    if not isinstance(checks, Mapping) or checks.get("passed", True):
        return []
    sections = checks.get("tasks")
    found: list[str] = []
    for prefix, record in (sections.items() if isinstance(sections, Mapping) else [("", checks)]):
        if not isinstance(record, Mapping):
            continue
        for check in record.values():
            if isinstance(check, Mapping):
                found += [f"{prefix}: {f}" if prefix else str(f) for f in check.get("failures", [])]
    return found or ["see the sidecar"]


def repair_flags(sidecar: Mapping[str, Any]) -> list[str]:
    """The flags of the sidecar's ``postprocess`` section (one task's repair, or each repaired
    task's of a multi-task map, prefixed with the task)."""
    section = sidecar.get("postprocess")
    if not isinstance(section, Mapping):
        return []
    reports = [("", section)] if "steps" in section else list(section.items())
    # A step's flags start with its name, which for a task's own step is the task's name.
    return [f"{task}: {flag}" if task and not str(flag).startswith(f"{task}: ") else str(flag)
            for task, report in reports if isinstance(report, Mapping) for flag in (report.get("flags") or [])]


def viewer_href(case_id: str) -> str:
    """The viewer page of a case, relative to the output folder (served by ``autoorgan view``)."""
    return VIEWER_PREFIX + quote(case_id, safe="")


def _link(name: str) -> str:
    return html.escape(quote(name), quote=True)


def _status_text(row: CaseRow) -> str:
    return "done (earlier run)" if row.status == "skipped" else row.status


def render_index(rows: Sequence[CaseRow], *, title: str, extra_links: Sequence[tuple[str, str]] = ()) -> str:
    """The page's HTML for ``rows`` (pure; see :func:`write_index`)."""
    esc = html.escape
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        (f'<p class="meta">{len(rows)} case(s): {counts["done"] + counts["skipped"]} complete, '
         f'{counts["failed"]} failed.'),
    ]
    for text, target in extra_links:
        parts.append(f' <a href="{_link(target)}">{esc(text)}</a>')
    parts.append("</p>")
    if any(row.viewer for row in rows):
        parts.append('<p class="meta">The "3D viewer" links open when this folder is served by '
                     "<code>autoorgan view OUTPUT_FOLDER</code> (a browser cannot load the images from disk).</p>")
    parts.append("<table><thead><tr><th>case</th><th>preview</th><th>status</th><th>seconds</th>"
                 "<th>main volumes (ml)</th></tr></thead><tbody>")
    for row in rows:
        case = esc(row.case_id)
        if row.preview:
            preview = (f'<a href="{_link(row.preview)}"><img class="preview" src="{_link(row.preview)}" '
                       f'alt="preview of {case}"></a>')
        else:
            preview = "—"
        links = []
        if row.label_map:
            links.append(f'<a href="{_link(row.label_map)}">label map</a>')
        if row.statistics:
            links.append(f'<a href="{_link(row.statistics)}">statistics</a>')
        for text, name in row.files.items():
            links.append(f'<a href="{_link(name)}">{esc(text)}</a>')
        if row.viewer:
            links.append(f'<a class="viewer" href="{esc(viewer_href(row.case_id), quote=True)}">3D viewer</a>')
        status = f'<span class="{esc(row.status)}">{esc(_status_text(row))}</span>'
        if row.error:
            status += f"<br>{esc(row.error)}"
        if row.check_failures:
            shown = "; ".join(row.check_failures[:3]) + (" …" if len(row.check_failures) > 3 else "")
            status += (f'<br><span class="flag" title="{esc(shown, quote=True)}">anatomical checks failed: '
                       f"{esc(shown)}</span>")
        if row.repair_flags:
            shown = "; ".join(row.repair_flags[:3]) + (" …" if len(row.repair_flags) > 3 else "")
            status += (f'<br><span class="flag" title="{esc(shown, quote=True)}">repair needs a look: '
                       f"{esc(shown)}</span>")
        seconds = "" if row.seconds is None else f"{row.seconds:.1f}"
        volumes = "".join(f"<li>{esc(name)}: {ml:.1f}</li>" for name, ml in row.volumes)
        volumes_html = f'<ul class="vol">{volumes}</ul>' if volumes else ""
        parts.append(f"<tr><td>{case}<br>{' · '.join(links)}</td><td class=\"preview\">{preview}</td><td>{status}</td>"
                     f'<td class="num">{seconds}</td><td>{volumes_html}</td></tr>')
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"


def write_index(target: Path, rows: Sequence[CaseRow], *, title: str,
                extra_links: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the overview page atomically."""
    return write_text(render_index(rows, title=title, extra_links=extra_links), target)
