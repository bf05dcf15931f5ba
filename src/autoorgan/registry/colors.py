"""One display colour per structure, the same in every output that shows or carries colours.

The colours are data (``configs/colors.json``, shipped inside the package), keyed by structure
name: organs follow 3D Slicer's GenericAnatomyColors where neighbours stay distinguishable
(liver brown, spleen purple, heart and aorta red), bones are ivory tints that differ per bone, and
numbered series (vertebrae C1..L5, ribs 1..12) change hue from each number to the next so that
neighbours are told apart. A structure that is not in the table (a user's task) gets a colour
derived from its name alone, so it is the same in every run and on every machine; a task file
may give its own colours (``colors`` table, see :mod:`autoorgan.registry.tasks`).

Colours are sRGB triples of integers 0..255. :func:`rgb_to_cielab` and :func:`color_distance`
(CIE76 ΔE) let outputs that need CIELab (DICOM) and the tests measure them.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

#: An sRGB colour, components 0..255.
RGB = tuple[int, int, int]

_HEX_RE = re.compile(r"#[0-9a-fA-F]{6}")


def _canonical(name: str) -> str:
    """The table's key for a structure name: the same forgiving form as task and structure names
    (:func:`autoorgan.registry.tasks.normalize_name`), so ``"Kidney Left"`` finds ``kidney_left``."""
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def parse_color(value: Any) -> RGB:
    """A colour given as ``"#rrggbb"`` or ``[r, g, b]`` (integers 0..255) as an RGB triple.

    Raises :class:`ValueError` with a short reason for anything else (the caller names the file).
    """
    if isinstance(value, str):
        text = value.strip()
        if not _HEX_RE.fullmatch(text):
            raise ValueError(f"must be \"#rrggbb\" or [r, g, b], got {ascii(value)[:40]}")
        return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) for c in value):
        if not all(0 <= c <= 255 for c in value):
            raise ValueError(f"components must be 0..255, got {list(value)}")
        return int(value[0]), int(value[1]), int(value[2])
    raise ValueError(f"must be \"#rrggbb\" or [r, g, b], got {repr(value)[:40]}")


def color_hex(rgb: RGB) -> str:
    """``#rrggbb`` of an RGB triple."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@lru_cache(maxsize=1)
def shipped_colors() -> Mapping[str, RGB]:
    """The shipped colour table (``configs/colors.json``): structure name → RGB."""
    ref = resources.files("autoorgan") / "configs" / "colors.json"
    data = json.loads(ref.read_text(encoding="utf-8"))
    return MappingProxyType({name: parse_color(value) for name, value in data["colors"].items()})


@lru_cache(maxsize=1)
def _shipped_by_key() -> Mapping[str, RGB]:
    return {_canonical(name): rgb for name, rgb in shipped_colors().items()}


def derived_color(name: str) -> RGB:
    """A colour computed from ``name`` alone (SHA-256, not Python's salted ``hash``), for
    structures without a colour in the table: stable across runs, machines and versions, and
    spread over hue, saturation and brightness so that different names rarely look alike."""
    digest = hashlib.sha256(_canonical(name).encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.45 + 0.4 * digest[2] / 255.0
    value = 0.7 + 0.3 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def structure_color(name: str, colors: Mapping[str, RGB] | None = None) -> RGB:
    """The colour of a structure: ``colors`` (a task file's own, by structure name) first, then
    the shipped table, then :func:`derived_color`. Names are matched forgivingly (case, ``-``
    and spaces)."""
    key = _canonical(name)
    if colors:
        for given, rgb in colors.items():
            if _canonical(given) == key:
                return rgb
    shipped = _shipped_by_key().get(key)
    return shipped if shipped is not None else derived_color(key)


def label_colors(labels: Mapping[int, str], colors: Mapping[str, RGB] | None = None) -> dict[int, RGB]:
    """Label value → colour for a label table (value → structure name), sorted by value.

    ``colors``: a task's own colours by structure name (:attr:`autoorgan.registry.tasks.Task.colors`),
    which take precedence over the shipped table."""
    return {value: structure_color(labels[value], colors) for value in sorted(labels)}


def rgb_to_cielab(rgb: RGB) -> tuple[float, float, float]:
    """CIELab (D65 white) of an sRGB colour: L* 0..100, a* and b* about -128..127."""
    def linear(c: int) -> float:
        x = c / 255.0
        return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1.0 / 3.0) if t > 216.0 / 24389.0 else (24389.0 / 27.0 * t + 16.0) / 116.0

    fx, fy, fz = f(x), f(y), f(z)
    return 116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)


def color_distance(a: RGB, b: RGB) -> float:
    """Perceptual distance of two colours (CIE76 ΔE in CIELab; about 2 is just noticeable,
    above 10 clearly different)."""
    return math.dist(rgb_to_cielab(a), rgb_to_cielab(b))


__all__ = ["RGB", "color_distance", "color_hex", "derived_color", "label_colors", "parse_color",
           "rgb_to_cielab", "shipped_colors", "structure_color"]
