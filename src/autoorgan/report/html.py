"""``OUT/index.html``: one self-contained page giving an overview of an output folder.

One row per case: its preview, status, time, error and the main structure volumes. The page has
inline CSS, no script and only relative links to files next to it, so it opens from disk (or
from any copy of the folder) without a server.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from autoorgan.errors import OutputError
from autoorgan.io.writing import atomic_path

#: How many structures' volumes a row shows (the largest ones).
MAIN_STRUCTURES = 6

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
p.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; white-space: nowrap; }
img.preview { max-width: 640px; width: 100%; height: auto; background: #000; }
.done { color: #176f2c; } .skipped { color: #176f2c; } .failed { color: #b00020; font-weight: bold; }
ul.vol { margin: 0; padding-left: 1.1em; }
"""


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


def main_volumes(structures: Sequence[Mapping[str, Any]], limit: int = MAIN_STRUCTURES) -> list[tuple[str, float]]:
    """The ``limit`` largest structures (name, ml) of a statistics file's ``structures`` list."""
    present = [(str(s["structure"]), float(s["volume_ml"])) for s in structures if float(s.get("volume_ml", 0)) > 0]
    return sorted(present, key=lambda item: (-item[1], item[0]))[:limit]


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
        f'<p class="meta">{len(rows)} case(s): {counts["done"] + counts["skipped"]} complete, '
        f'{counts["failed"]} failed.',
    ]
    for text, target in extra_links:
        parts.append(f' <a href="{_link(target)}">{esc(text)}</a>')
    parts.append("</p>")
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
        status = f'<span class="{esc(row.status)}">{esc(_status_text(row))}</span>'
        if row.error:
            status += f"<br>{esc(row.error)}"
        seconds = "" if row.seconds is None else f"{row.seconds:.1f}"
        volumes = "".join(f"<li>{esc(name)}: {ml:.1f}</li>" for name, ml in row.volumes)
        volumes_html = f'<ul class="vol">{volumes}</ul>' if volumes else ""
        parts.append(f"<tr><td>{case}<br>{' · '.join(links)}</td><td>{preview}</td><td>{status}</td>"
                     f'<td class="num">{seconds}</td><td>{volumes_html}</td></tr>')
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"


def write_index(target: Path, rows: Sequence[CaseRow], *, title: str,
                extra_links: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the overview page atomically."""
    text = render_index(rows, title=title, extra_links=extra_links)
    try:
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
