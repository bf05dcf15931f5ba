"""What holds in (nearly) every CT, as data (``configs/anatomy.json``) and from structure names.

Names say most of it: ``..._left``/``..._right`` give a side, ``vertebrae_C1`` … ``vertebrae_L5``
and ``rib_<side>_<n>`` an order from head to feet. The table adds the side of unpaired organs
(liver right, spleen left, …) and coarse levels from head to feet (skull above the ribs above the
hip above the legs) and from front to back (bladder, hip bones, sacrum), leaving out what depends
on the pose (the arms).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from autoorgan.postprocess.frame import rib_of, side_of, vertebra_level


@dataclass(frozen=True)
class AnatomyPriors:
    """Sides of unpaired structures and head-to-feet levels (see ``configs/anatomy.json``)."""

    #: Structure name → ``"left"``/``"right"``: where its centre of mass lies.
    side: Mapping[str, str]
    #: Levels from head to feet: each structure's centre lies above those of later levels.
    levels: tuple[frozenset[str], ...]
    #: Levels from front to back: each structure's centre lies in front of those of later levels.
    depths: tuple[frozenset[str], ...] = ()

    def level_of(self, name: str) -> int | None:
        return next((i for i, level in enumerate(self.levels) if name in level), None)

    def depth_of(self, name: str) -> int | None:
        return next((i for i, level in enumerate(self.depths) if name in level), None)

    def side_of(self, name: str) -> str | None:
        """The side a structure lies on: from its name, else from the table."""
        return side_of(name) or self.side.get(name)


@lru_cache(maxsize=1)
def load_priors() -> AnatomyPriors:
    """The priors shipped in ``configs/anatomy.json``."""
    ref = resources.files("autoorgan") / "configs" / "anatomy.json"
    data = json.loads(ref.read_text(encoding="utf-8"))
    side = {k: v for k, v in data["side"].items() if k != "about"}
    levels = tuple(frozenset(level) for level in data["head_to_feet"]["levels"])
    depths = tuple(frozenset(level) for level in data["front_to_back"]["levels"])
    return AnatomyPriors(side=side, levels=levels, depths=depths)


def series_position(name: str) -> tuple[str, int] | None:
    """``(series, position)`` of a numbered structure, position growing towards the feet:
    ``vertebrae_T1`` → ``("vertebrae", 7)``, ``rib_left_3`` → ``("rib_left", 3)``; else ``None``."""
    level = vertebra_level(name)
    if level is not None:
        return "vertebrae", level
    rib = rib_of(name)
    if rib is not None:
        return f"rib_{rib[0]}", rib[1]
    return None


__all__ = ["AnatomyPriors", "load_priors", "series_position"]
