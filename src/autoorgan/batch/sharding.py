"""Splitting a batch into shards that stay put when cases come and go.

A case's shard depends on its case id alone (a hash), not on its position in a sorted list, so
adding or removing other cases never moves a case to another shard: shards launched at
different times on a growing folder neither skip nor repeat a case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
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


def shard_from_slurm(env: Mapping[str, str]) -> tuple[int, int]:
    """``(part_id, num_parts)`` of this Slurm array task, from its environment.

    The part id is ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` (so ``--array=1-4`` works as
    well as ``--array=0-3``), the number of parts ``SLURM_ARRAY_TASK_COUNT``. Arrays with a step
    or holes (``--array=1,5,9`` or ``0-9:2``) cannot be mapped onto contiguous shards and are
    refused. :class:`InputError` outside an array job.
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise InputError("--part-id auto / --num-parts auto need a Slurm job array "
                         f"(sbatch --array=...); {', '.join(missing)} not set")
    try:
        task_id, count, low = (int(env[n]) for n in names)
        high = int(env.get("SLURM_ARRAY_TASK_MAX", str(low + count - 1)))
    except ValueError:
        raise InputError("Slurm array variables are not integers: "
                         + ", ".join(f"{n}={env.get(n)}" for n in names)) from None
    if high - low + 1 != count:
        raise InputError(f"the Slurm array {low}-{high} has {count} task(s), not one per index; "
                         "use a contiguous array such as --array=0-N")
    part_id = task_id - low
    check_shard(part_id, count)
    return part_id, count


def resolve_shard(part_id: str | int, num_parts: str | int, env: Mapping[str, str]) -> tuple[int, int]:
    """``--part-id``/``--num-parts`` as given (integers or ``auto``) → integers.

    ``auto`` takes the value from the Slurm array environment (both must then be ``auto`` or the
    explicit one must agree with Slurm's).
    """
    def as_int(name: str, value: str | int) -> int | None:
        if isinstance(value, int):
            return value
        if value.strip().lower() == "auto":
            return None
        try:
            return int(value)
        except ValueError:
            raise InputError(f"{name} must be an integer or 'auto', got '{value}'") from None

    pid, parts = as_int("--part-id", part_id), as_int("--num-parts", num_parts)
    if pid is None or parts is None:
        slurm_pid, slurm_parts = shard_from_slurm(env)
        if parts is not None and parts != slurm_parts:
            raise InputError(f"--num-parts {parts} differs from the Slurm array's {slurm_parts} task(s)")
        if pid is not None and pid != slurm_pid:
            raise InputError(f"--part-id {pid} differs from this Slurm array task's part {slurm_pid}")
        pid, parts = slurm_pid, slurm_parts
    check_shard(pid, parts)
    return pid, parts
