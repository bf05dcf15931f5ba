"""Splitting a batch into shards that stay put when cases come and go.

A case's shard depends on its case id alone (a hash), not on its position in a sorted list, so
adding or removing other cases never moves a case to another shard: shards launched at
different times on a growing folder neither skip nor repeat a case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from autoorgan.errors import InputError

T = TypeVar("T")


def check_shard(part_id: int, num_parts: int) -> None:
    """Validate ``0 <= part_id < num_parts``; :class:`InputError` otherwise."""
    if num_parts < 1:
        raise InputError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id must be between 0 and {num_parts - 1} for {num_parts} part(s), got {part_id}")


def shard_of(case_id: str, num_parts: int) -> int:
    """The shard (0-based) that processes ``case_id`` among ``num_parts``."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_parts


def select_shard(items: Sequence[T], case_ids: Sequence[str], part_id: int, num_parts: int) -> list[T]:
    """The items whose case id falls in shard ``part_id`` of ``num_parts``."""
    check_shard(part_id, num_parts)
    return [item for item, cid in zip(items, case_ids, strict=True) if shard_of(cid, num_parts) == part_id]
