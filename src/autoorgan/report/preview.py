"""A preview picture of one case: CT slices with the label map drawn over them.

The picture shows an axial, a coronal and a sagittal slice through the centre of the segmented
structures and a coronal maximum-intensity projection, with a coloured overlay and a legend of
structure names. Both arrays are first permuted/flipped (never resampled) into one fixed
orientation, so the picture is the same whatever the orientation the CT was stored in, and it is
drawn the way radiologists look at images: patient's right on the image's left, anterior at the
top of axial slices, head at the top of coronal and sagittal ones (anterior on the left). Pixels
keep their physical aspect (anisotropic voxels are not squashed).

The picture is :data:`PREVIEW_WIDTH` pixels wide; its height follows the panels. The panels are laid
out in as few rows as keep every panel at least :data:`MIN_PANEL_PX` high (:func:`layout_panels`),
so a thin series (say 20 slices) shows its coronal and sagittal slices large, in their physical
aspect, on rows of their own rather than as strips. Only a slab thinner than the picture allows at
that height (its width would exceed the picture) is stretched along the slice axis, and its panel
title says by how much. The legend runs under the panels in as many columns as fit, its text
:data:`LEGEND_FONT_PX` pixels high: readable where the overview shows the picture
(:data:`autoorgan.report.html.PREVIEW_SHOWN_PX` wide).

Drawing uses matplotlib's Agg canvas directly (no pyplot, no display), so it works headless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from autoorgan.errors import OutputError
from autoorgan.io.image import Geometry
from autoorgan.io.orientation import plan_reorientation
from autoorgan.io.writing import atomic_path
from autoorgan.registry.colors import RGB, label_colors

#: The fixed array orientation used for display (nibabel codes: index increases towards the
#: patient's Left, Posterior and Superior).
DISPLAY_ORIENTATION = "LPS"
#: Soft-tissue window (level, width) in HU for the slices.
SLICE_WINDOW = (40.0, 400.0)
#: A wider window for the projection, where bone dominates.
MIP_WINDOW = (300.0, 1500.0)
#: Width of the picture in pixels (its height follows the layout of the panels).
PREVIEW_WIDTH = 1600
#: Smallest and largest height of a panel (the image of one slice) in pixels.
MIN_PANEL_PX = 240
MAX_PANEL_PX = 560
#: Font size (pixels) of the legend, the panel titles and the picture's title.
LEGEND_FONT_PX = 20
PANEL_TITLE_PX = 18
TITLE_PX = 22
_DPI = 100
_OVERLAY_ALPHA = 0.45
_MARGIN = 12
_GAP = 16


@dataclass(frozen=True)
class Plane:
    """One panel: a 2D CT image, its label overlay (rows top→bottom, columns left→right on screen)
    and the pixel size in mm (rows, columns)."""

    title: str
    ct: np.ndarray
    labels: np.ndarray
    pixel_mm: tuple[float, float]
    window: tuple[float, float]
    #: Patient side at the image's left and right edge (e.g. ``("R", "L")``).
    sides: tuple[str, str]


def display_planes(ct_xyz: np.ndarray, labels_xyz: np.ndarray, geometry: Geometry) -> list[Plane]:
    """The four panels of a preview, in radiological display orientation.

    Slices go through the centre of mass of all labelled voxels (the image centre if there are
    none). The arrays are ``[x, y, z]`` on ``geometry``'s grid.
    """
    reorientation = plan_reorientation(geometry.direction_matrix, DISPLAY_ORIENTATION)
    ct = reorientation.to_target(np.asarray(ct_xyz))
    labels = reorientation.to_target(np.asarray(labels_xyz))
    sx, sy, sz = reorientation.spacing(geometry.spacing)
    foreground = np.argwhere(labels > 0)
    centre = foreground.mean(axis=0) if len(foreground) else (np.asarray(labels.shape) - 1) / 2.0
    cx, cy, cz = (int(np.clip(np.floor(c + 0.5), 0, n - 1)) for c, n in zip(centre, labels.shape, strict=True))

    # After reorientation index x runs to the patient's left, y to posterior, z to superior.
    # Axial: rows anterior→posterior (y), columns right→left (x).
    axial = Plane(f"axial (slice {cz + 1}/{labels.shape[2]})", ct[:, :, cz].T, labels[:, :, cz].T,
                  (sy, sx), SLICE_WINDOW, ("R", "L"))
    # Coronal: rows superior→inferior (z reversed), columns right→left (x).
    coronal = Plane(f"coronal (slice {cy + 1}/{labels.shape[1]})", ct[:, cy, :].T[::-1], labels[:, cy, :].T[::-1],
                    (sz, sx), SLICE_WINDOW, ("R", "L"))
    # Sagittal: rows superior→inferior, columns anterior→posterior (y).
    sagittal = Plane(f"sagittal (slice {cx + 1}/{labels.shape[0]})", ct[cx, :, :].T[::-1],
                     labels[cx, :, :].T[::-1], (sz, sy), SLICE_WINDOW, ("A", "P"))
    # Coronal MIP of the CT; overlay: the most anterior labelled voxel along each ray.
    labelled = labels > 0
    first = np.argmax(labelled, axis=1)
    projected = np.take_along_axis(labels, first[:, None, :], axis=1)[:, 0, :]
    projected = np.where(labelled.any(axis=1), projected, 0)
    mip = Plane("coronal MIP", ct.max(axis=1).T[::-1], projected.T[::-1], (sz, sx), MIP_WINDOW, ("R", "L"))
    return [axial, coronal, sagittal, mip]


def label_colours(names: Mapping[int, str],
                  colors: Mapping[str, RGB] | None = None) -> dict[int, tuple[float, float, float]]:
    """Each label value's structure colour (:func:`autoorgan.registry.colors.label_colors`, the
    same as in every other output; ``colors``: a task's own), as matplotlib's 0..1 floats."""
    return {value: (r / 255.0, g / 255.0, b / 255.0) for value, (r, g, b) in label_colors(names, colors).items()}


def _overlay_rgba(labels: np.ndarray, colours: Mapping[int, tuple[float, float, float]]) -> np.ndarray:
    top = int(max(max(colours, default=0), int(labels.max(initial=0))))
    lut = np.zeros((top + 1, 4), dtype=np.float32)
    for value, rgb in colours.items():
        lut[value] = (*rgb, _OVERLAY_ALPHA)
    return lut[np.clip(labels.astype(np.int64), 0, top)]


def label_values_present(labels: np.ndarray, chunk: int = 1 << 24) -> list[int]:
    """Non-zero label values that occur in ``labels`` (counted in chunks: no full-size copy)."""
    flat = np.asarray(labels).reshape(-1)
    counts = np.zeros(1, dtype=np.int64)
    for start in range(0, flat.size, chunk):
        part = np.bincount(flat[start:start + chunk])
        if len(part) > len(counts):
            counts = np.pad(counts, (0, len(part) - len(counts)))
        counts[: len(part)] += part
    return [int(v) for v in np.flatnonzero(counts) if v != 0]


def _plain(text: str) -> str:
    """``text`` drawn as written: a ``$`` escaped, so a name like ``a$x$`` is not parsed as
    matplotlib math (a name like ``$\\frac$`` would otherwise fail the preview)."""
    return text.replace("$", r"\$")


@dataclass(frozen=True)
class PanelBox:
    """Where a panel goes in the picture, in pixels from the top left corner, and how much its
    height is stretched beyond the physical aspect (1.0: not at all)."""

    x: float
    y: float
    width: float
    height: float
    stretch: float = 1.0


def _row_height(aspects: list[float], available: float) -> float:
    return (available - _GAP * (len(aspects) - 1)) / sum(aspects)


def layout_panels(aspects: list[float], width: float = PREVIEW_WIDTH, *, min_height: float = MIN_PANEL_PX,
                  max_height: float = MAX_PANEL_PX, top: float = 0.0, title_px: float = 0.0) -> list[PanelBox]:
    """Boxes for panels of the given aspects (width / height, physical) in rows across ``width``.

    The panels keep their order; of the ways to break them into rows, the one with the fewest rows
    in which every row is at least ``min_height`` high wins (ties: the highest lowest row). The
    rows are as high as the lowest of them fills the width (at most ``max_height``), each centred.
    A panel too wide for
    ``min_height`` even on a row of its own is stretched to that height. ``title_px`` is room
    left above each row for the panel titles, ``top`` above the first row.
    """
    available = width - 2 * _MARGIN
    n = len(aspects)
    best: tuple[int, float] | None = None
    best_rows: list[list[int]] = [[i] for i in range(n)]
    for mask in range(1 << max(n - 1, 0)):  # bit i set: a new row after panel i
        rows: list[list[int]] = [[]]
        for i in range(n):
            rows[-1].append(i)
            if i < n - 1 and mask >> i & 1:
                rows.append([])
        lowest = min(min(max_height, _row_height([aspects[i] for i in row], available)) for row in rows)
        if lowest < min_height:
            continue
        key = (len(rows), -lowest)
        if best is None or key < best:
            best, best_rows = key, rows
    # One height for all rows (the lowest row's), so that the panels keep one scale where they can.
    common = min(min(max_height, _row_height([aspects[i] for i in row], available)) for row in best_rows)
    boxes: list[PanelBox] = [PanelBox(0, 0, 0, 0)] * n
    y = top
    for row in best_rows:
        row_aspects = [aspects[i] for i in row]
        height = min(max(common, min_height), _row_height(row_aspects, available))
        stretch = 1.0
        if height < min_height:  # one panel alone, still too thin: stretch it to the minimum height
            stretch, height = min_height / height, min_height
        widths = [a * height / stretch for a in row_aspects]
        x = _MARGIN + (available - sum(widths) - _GAP * (len(row) - 1)) / 2
        y += title_px
        for i, w in zip(row, widths, strict=True):
            boxes[i] = PanelBox(x, y, w, height, stretch)
            x += w + _GAP
        y += height + _GAP
    return boxes


def _panel_aspect(plane: Plane) -> float:
    rows, cols = plane.ct.shape
    return (cols * plane.pixel_mm[1]) / max(rows * plane.pixel_mm[0], 1e-6)


def _legend_grid(labels: list[str], width: float) -> tuple[int, int, float]:
    """(columns, rows, column width in px) of a legend of ``labels`` across ``width``."""
    widest = max((len(text) for text in labels), default=1)
    column = LEGEND_FONT_PX * (1.8 + 0.62 * widest)
    columns = max(1, min(len(labels), int((width - 2 * _MARGIN) // column)))
    return columns, -(-len(labels) // columns), column


def render_preview(ct_xyz: np.ndarray, labels_xyz: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                   target: Path, *, title: str = "", colors: Mapping[str, RGB] | None = None) -> Path:
    """Draw the preview of a case into the PNG ``target`` (written atomically); returns ``target``.

    ``names`` maps label values to structure names; the legend lists those present. ``colors``:
    a task's own structure colours (see :func:`label_colours`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    planes = display_planes(ct_xyz, labels_xyz, geometry)
    colours = label_colours(names, colors)
    present = [v for v in label_values_present(labels_xyz) if v in names]

    width = PREVIEW_WIDTH
    top = TITLE_PX * 2.0 if title else _MARGIN
    boxes = layout_panels([_panel_aspect(p) for p in planes], width, top=top, title_px=PANEL_TITLE_PX * 1.6)
    entries = [f"{v} {names[v]}" for v in present] or ["no structure found"]
    _columns, rows, column_px = _legend_grid(entries, width)
    line_px = LEGEND_FONT_PX * 1.5
    legend_top = max(b.y + b.height for b in boxes) + _GAP
    height = int(np.ceil(legend_top + rows * line_px + _MARGIN))
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    points = 72.0 / _DPI  # font sizes are in points; one pixel is 72/dpi points

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return x / width, 1.0 - (y + h) / height, w / width, h / height

    for plane, box in zip(planes, boxes, strict=True):
        ax = fig.add_axes(rect(box.x, box.y, box.width, box.height))
        rows_px, cols_px = plane.ct.shape
        extent = (0.0, cols_px * plane.pixel_mm[1], rows_px * plane.pixel_mm[0], 0.0)
        level, window = plane.window
        aspect: Literal["equal", "auto"] = "equal" if box.stretch == 1.0 else "auto"
        ax.imshow(plane.ct.astype(np.float32), cmap="gray", vmin=level - window / 2, vmax=level + window / 2,
                  extent=extent, interpolation="nearest", aspect=aspect)
        ax.imshow(_overlay_rgba(plane.labels, colours), extent=extent, interpolation="nearest", aspect=aspect)
        caption = plane.title if box.stretch == 1.0 else f"{plane.title}, height ×{box.stretch:.1f}"
        ax.set_title(caption, color="white", fontsize=PANEL_TITLE_PX * points, pad=4)
        for x, side, align in ((0.01, plane.sides[0], "left"), (0.99, plane.sides[1], "right")):
            ax.text(x, 0.5, side, transform=ax.transAxes, color="yellow", fontsize=PANEL_TITLE_PX * points,
                    ha=align, va="center")
        ax.set_axis_off()
    font = LEGEND_FONT_PX * points
    for k, text in enumerate(entries):
        column, row = divmod(k, rows)
        x = _MARGIN + column * column_px
        y = legend_top + row * line_px + line_px / 2
        if present:
            swatch = LEGEND_FONT_PX * 0.8
            fig.patches.append(Rectangle((x / width, 1.0 - (y + swatch / 2) / height), swatch / width,
                                         swatch / height, transform=fig.transFigure, facecolor=colours[present[k]],
                                         edgecolor="none"))
            x += LEGEND_FONT_PX * 1.2
        fig.text(x / width, 1.0 - y / height, _plain(text), color="white", fontsize=font, va="center", ha="left")
    if title:
        fig.text(_MARGIN / width, 1.0 - TITLE_PX / height, _plain(title), color="white", fontsize=TITLE_PX * points,
                 ha="left", va="center")
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, facecolor=fig.get_facecolor())
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
