"""Per-structure statistics of a label map on its CT: size, volume, intensities, position.

Pure functions on arrays plus the grid: no files are read here. All voxels of a structure are
gathered in one pass over the foreground (a sort by label), so a whole-body map with a hundred
structures costs about as much as one with three.

Conventions (see docs/outputs.md):

* volume is in millilitres (``voxels × voxel volume in mm³ / 1000``);
* intensities are the CT values as stored (HU for CT), over every voxel of the structure;
  the standard deviation is the population one (``ddof=0``);
* positions are in patient (world) coordinates as ITK reports them: millimetres, LPS
  (x increases to the patient's left, y to posterior, z to superior);
* the bounding box is given as inclusive voxel indices ``[x, y, z]`` of the input grid and as
  the world extent (mm, LPS) of the voxel centres it spans;
* a structure of the task that is absent has 0 voxels, 0 ml and intensities 0; its centroid and
  bounding box are ``None`` (a position of 0 would be a real place in the patient);
* ``touches_border`` flags structures that reach the edge of the image, whose volume is
  therefore probably cut off by the field of view.

:func:`structure_statistics` computes in full precision; what is written (``to_json``, the
statistics files, and ``to_row``, the CSV) is rounded to what the measurement holds:
:data:`VOLUME_DECIMALS` for ml (0.001 ml = 1 mm³), :data:`INTENSITY_DECIMALS` for CT values
(0.01 HU; CT is stored in whole HU) and :data:`POSITION_DECIMALS` for mm (1 µm), so a file says
``509.571``, never ``509.57099999999997``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from itertools import product
from typing import Any

import numpy as np

from autoorgan.io.image import Geometry

#: Column order of the statistics table (CSV); also the keys of each structure's JSON entry.
FIELDS = (
    "label", "structure", "voxels", "volume_ml",
    "intensity_mean", "intensity_std", "intensity_median", "intensity_min", "intensity_max",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_x_min", "bbox_y_min", "bbox_z_min", "bbox_x_max", "bbox_y_max", "bbox_z_max",
    "bbox_x_min_mm", "bbox_y_min_mm", "bbox_z_min_mm", "bbox_x_max_mm", "bbox_y_max_mm", "bbox_z_max_mm",
    "touches_border",
)

#: Decimals of the written statistics (see the module's docstring): volumes (ml), CT values
#: (mean, std, median, min, max) and positions (centroid and bounding box, mm).
VOLUME_DECIMALS = 3
INTENSITY_DECIMALS = 2
POSITION_DECIMALS = 3


def _round(value: float, decimals: int) -> float:
    return round(float(value), decimals) + 0.0  # + 0.0: no "-0.0"


def _round_all(values: Any, decimals: int) -> Any:
    if values is None:
        return None
    if isinstance(values, (tuple, list)):
        return tuple(_round_all(v, decimals) for v in values)
    return _round(values, decimals)


@dataclass(frozen=True)
class StructureStats:
    """Statistics of one structure (one label value) of a label map."""

    label: int
    structure: str
    voxels: int
    volume_ml: float
    intensity_mean: float
    intensity_std: float
    intensity_median: float
    intensity_min: float
    intensity_max: float
    #: Centre of mass of the voxel centres, world mm (LPS); ``None`` if absent.
    centroid_mm: tuple[float, float, float] | None
    #: Inclusive voxel index bounds ``(min_xyz, max_xyz)``; ``None`` if absent.
    bbox_index: tuple[tuple[int, int, int], tuple[int, int, int]] | None
    #: World (LPS mm) bounds of the voxel centres in the index box; ``None`` if absent.
    bbox_mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    touches_border: bool

    @property
    def present(self) -> bool:
        return self.voxels > 0

    def rounded(self) -> StructureStats:
        """These statistics to the written decimals (:data:`VOLUME_DECIMALS`,
        :data:`INTENSITY_DECIMALS`, :data:`POSITION_DECIMALS`)."""
        return replace(
            self,
            volume_ml=_round(self.volume_ml, VOLUME_DECIMALS),
            intensity_mean=_round(self.intensity_mean, INTENSITY_DECIMALS),
            intensity_std=_round(self.intensity_std, INTENSITY_DECIMALS),
            intensity_median=_round(self.intensity_median, INTENSITY_DECIMALS),
            intensity_min=_round(self.intensity_min, INTENSITY_DECIMALS),
            intensity_max=_round(self.intensity_max, INTENSITY_DECIMALS),
            centroid_mm=_round_all(self.centroid_mm, POSITION_DECIMALS),
            bbox_mm=_round_all(self.bbox_mm, POSITION_DECIMALS),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists), rounded (:meth:`rounded`)."""
        data = asdict(self.rounded())
        for key in ("centroid_mm", "bbox_index", "bbox_mm"):
            value = data[key]
            data[key] = None if value is None else _listify(value)
        return data

    def to_row(self) -> dict[str, Any]:
        """A flat row for the statistics table: keys of :data:`FIELDS`, ``""`` where undefined;
        rounded (:meth:`rounded`)."""
        r = self.rounded()
        row: dict[str, Any] = {
            "label": r.label, "structure": r.structure, "voxels": r.voxels,
            "volume_ml": r.volume_ml, "intensity_mean": r.intensity_mean,
            "intensity_std": r.intensity_std, "intensity_median": r.intensity_median,
            "intensity_min": r.intensity_min, "intensity_max": r.intensity_max,
            "touches_border": int(r.touches_border),
        }
        for i, axis in enumerate("xyz"):
            row[f"centroid_{axis}_mm"] = "" if r.centroid_mm is None else r.centroid_mm[i]
            row[f"bbox_{axis}_min"] = "" if r.bbox_index is None else r.bbox_index[0][i]
            row[f"bbox_{axis}_max"] = "" if r.bbox_index is None else r.bbox_index[1][i]
            row[f"bbox_{axis}_min_mm"] = "" if r.bbox_mm is None else r.bbox_mm[0][i]
            row[f"bbox_{axis}_max_mm"] = "" if r.bbox_mm is None else r.bbox_mm[1][i]
        return row

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StructureStats:
        """Inverse of :meth:`to_json`."""
        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        values = dict(data)
        for key in ("centroid_mm", "bbox_index", "bbox_mm"):
            values[key] = None if values.get(key) is None else tup(values[key])
        return cls(**values)


#: First characters that make a spreadsheet read a cell as a formula (OWASP's CSV-injection list:
#: ``= + - @``, tab and carriage return), plus their full-width forms, which some spreadsheets
#: treat alike.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_safe(value: Any) -> Any:
    """A table cell that a spreadsheet shows as text, never runs (OWASP's CSV-injection rule).

    Text starting with a :data:`FORMULA_TRIGGERS` character gets a leading single quote, which
    spreadsheets take as "this is text" (``=HYPERLINK(...)`` becomes ``'=HYPERLINK(...)``). Numbers
    are left alone, negative ones included: only text comes from user data (case ids, structure
    names). Quoting of commas, quotes and line breaks is the :mod:`csv` writer's job.
    """
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def spreadsheet_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`spreadsheet_safe` applied to every cell of a table row."""
    return {key: spreadsheet_safe(value) for key, value in row.items()}


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def index_to_world(index_xyz: np.ndarray, geometry: Geometry) -> np.ndarray:
    """World (LPS mm) positions of continuous voxel indices ``[..., 3]`` (ITK's convention)."""
    scaled = np.asarray(index_xyz, dtype=float) * np.asarray(geometry.spacing)
    return np.asarray(geometry.origin) + scaled @ geometry.direction_matrix.T


def _absent(label: int, name: str) -> StructureStats:
    return StructureStats(label=label, structure=name, voxels=0, volume_ml=0.0, intensity_mean=0.0,
                          intensity_std=0.0, intensity_median=0.0, intensity_min=0.0, intensity_max=0.0,
                          centroid_mm=None, bbox_index=None, bbox_mm=None, touches_border=False)


def structure_statistics(labels: np.ndarray, ct: np.ndarray, geometry: Geometry,
                         names: Mapping[int, str]) -> list[StructureStats]:
    """Statistics of every structure in ``names`` (label value → name), in label order.

    ``labels`` and ``ct`` are ``[x, y, z]`` arrays of the same shape on ``geometry``'s grid.
    Label values present in ``labels`` but not in ``names`` are ignored.
    """
    labels = np.asarray(labels)
    ct = np.asarray(ct)
    if labels.shape != ct.shape or tuple(labels.shape) != tuple(geometry.size):
        raise ValueError(f"label map {labels.shape}, CT {ct.shape} and grid {geometry.size} differ in size")
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    shape = np.asarray(labels.shape)

    flat = labels.reshape(-1)
    foreground = np.flatnonzero(flat)
    values = flat[foreground]
    order = np.argsort(values, kind="stable")
    foreground, values = foreground[order], values[order]
    present, starts = np.unique(values, return_index=True)
    ends = np.append(starts[1:], len(values))
    groups = {int(v): (int(s), int(e)) for v, s, e in zip(present, starts, ends, strict=True)}

    result: list[StructureStats] = []
    for label in sorted(names):
        name = names[label]
        if label not in groups:
            result.append(_absent(label, name))
            continue
        start, end = groups[label]
        flat_index = foreground[start:end]
        intensities = ct.reshape(-1)[flat_index].astype(np.float64)
        index = np.stack(np.unravel_index(flat_index, labels.shape), axis=1)
        low, high = index.min(axis=0), index.max(axis=0)
        centroid = index_to_world(index.mean(axis=0), geometry)
        corners = index_to_world(np.array(list(product(*zip(low, high, strict=True)))), geometry)
        result.append(StructureStats(
            label=label,
            structure=name,
            voxels=int(end - start),
            volume_ml=float((end - start) * voxel_ml),
            intensity_mean=float(intensities.mean()),
            intensity_std=float(intensities.std()),
            intensity_median=float(np.median(intensities)),
            intensity_min=float(intensities.min()),
            intensity_max=float(intensities.max()),
            centroid_mm=_triple(centroid),
            bbox_index=(_int_triple(low), _int_triple(high)),
            bbox_mm=(_triple(corners.min(axis=0)), _triple(corners.max(axis=0))),
            touches_border=bool((low == 0).any() or (high == shape - 1).any()),
        ))
    return result


def _triple(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def _int_triple(v: np.ndarray) -> tuple[int, int, int]:
    return (int(v[0]), int(v[1]), int(v[2]))
