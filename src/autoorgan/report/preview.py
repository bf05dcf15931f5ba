"""A preview picture of one case: CT slices with the label map drawn over them.

The picture shows an axial, a coronal and a sagittal slice through the centre of the segmented
structures and a coronal maximum-intensity projection, with a coloured overlay and a legend of
structure names. Both arrays are first permuted/flipped (never resampled) into one fixed
orientation, so the picture is the same whatever the orientation the CT was stored in, and it is
drawn the way radiologists look at images: patient's right on the image's left, anterior at the
top of axial slices, head at the top of coronal and sagittal ones (anterior on the left). Pixels
keep their physical aspect (anisotropic voxels are not squashed).

Drawing uses matplotlib's Agg canvas directly (no pyplot, no display), so it works headless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoorgan.errors import OutputError
from autoorgan.io.image import Geometry
from autoorgan.io.orientation import plan_reorientation
from autoorgan.io.writing import atomic_path

#: The fixed array orientation used for display (nibabel codes: index increases towards the
#: patient's Left, Posterior and Superior).
DISPLAY_ORIENTATION = "LPS"
#: Soft-tissue window (level, width) in HU for the slices.
SLICE_WINDOW = (40.0, 400.0)
#: A wider window for the projection, where bone dominates.
MIP_WINDOW = (300.0, 1500.0)
#: Size of the picture in pixels (width, height).
PREVIEW_SIZE = (1600, 500)
_DPI = 100
_OVERLAY_ALPHA = 0.45


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


def label_colours(names: Mapping[int, str]) -> dict[int, tuple[float, float, float]]:
    """A distinct colour per label value (matplotlib's qualitative tables, cycled)."""
    from matplotlib import colormaps

    maps = [colormaps[name] for name in ("tab10", "tab20b", "tab20c")]
    table = np.concatenate([np.asarray(cmap(np.arange(cmap.N)))[:, :3] for cmap in maps])
    colours: dict[int, tuple[float, float, float]] = {}
    for i, value in enumerate(sorted(names)):
        r, g, b = table[i % len(table)]
        colours[value] = (float(r), float(g), float(b))
    return colours


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


def render_preview(ct_xyz: np.ndarray, labels_xyz: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                   target: Path, *, title: str = "") -> Path:
    """Draw the preview of a case into the PNG ``target`` (written atomically); returns ``target``.

    ``names`` maps label values to structure names; the legend lists those present.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    planes = display_planes(ct_xyz, labels_xyz, geometry)
    colours = label_colours(names)
    present = [v for v in label_values_present(labels_xyz) if v in names]

    width, height = PREVIEW_SIZE
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 5, width_ratios=[1, 1, 1, 1, 0.8], left=0.01, right=0.99, top=0.88,
                            bottom=0.03, wspace=0.06)
    for i, plane in enumerate(planes):
        ax = fig.add_subplot(grid[0, i])
        rows, cols = plane.ct.shape
        extent = (0.0, cols * plane.pixel_mm[1], rows * plane.pixel_mm[0], 0.0)
        level, window = plane.window
        ax.imshow(plane.ct.astype(np.float32), cmap="gray", vmin=level - window / 2, vmax=level + window / 2,
                  extent=extent, interpolation="nearest", aspect="equal")
        ax.imshow(_overlay_rgba(plane.labels, colours), extent=extent, interpolation="nearest", aspect="equal")
        ax.set_title(plane.title, color="white", fontsize=10)
        for x, side, align in ((0.01, plane.sides[0], "left"), (0.99, plane.sides[1], "right")):
            ax.text(x, 0.5, side, transform=ax.transAxes, color="yellow", fontsize=11, ha=align, va="center")
        ax.set_axis_off()
    legend_ax = fig.add_subplot(grid[0, 4])
    legend_ax.set_axis_off()
    if present:
        handles = [Patch(facecolor=colours[v], edgecolor="none", label=_plain(f"{v} {names[v]}"))
                   for v in present]
        columns = 1 + (len(handles) - 1) // 24
        legend_ax.legend(handles=handles, loc="upper left", fontsize=max(5, 9 - columns), ncol=columns,
                         frameon=False, labelcolor="white", handlelength=1.0, borderaxespad=0.0)
    else:
        legend_ax.text(0.0, 1.0, "no structure found", color="white", fontsize=9, va="top",
                       transform=legend_ax.transAxes)
    if title:
        fig.suptitle(_plain(title), color="white", fontsize=12, x=0.01, ha="left")
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, facecolor=fig.get_facecolor())
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
