"""How far a batch has got: done / failed / missing per case and per shard, from the folders alone.

Nothing but the input folder and the output folder is consulted, so the status of a batch
spread over GPUs, processes or Slurm array tasks can be read from anywhere that sees both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autoorgan.batch.failures import read_failure
from autoorgan.batch.outputs import CaseOutputs, done_sidecar
from autoorgan.batch.sharding import check_shard, shard_of
from autoorgan.io.cases import find_cases

CaseState = Literal["done", "failed", "missing"]
STATES: tuple[CaseState, ...] = ("done", "failed", "missing")


@dataclass(frozen=True)
class CaseStatus:
    """One case: its shard, its state, and the recorded error of a failed case."""

    case_id: str
    shard: int
    state: CaseState
    error: str | None = None


@dataclass
class BatchStatus:
    """Every case of an input folder against an output folder."""

    num_parts: int
    cases: list[CaseStatus] = field(default_factory=list)

    def count(self, state: CaseState, shard: int | None = None) -> int:
        return sum(c.state == state and (shard is None or c.shard == shard) for c in self.cases)

    def per_shard(self) -> dict[int, Counter[str]]:
        """Shard → counts of each state (every shard listed, even an empty one)."""
        table: dict[int, Counter[str]] = {i: Counter({s: 0 for s in STATES}) for i in range(self.num_parts)}
        for c in self.cases:
            table[c.shard][c.state] += 1
        return table

    @property
    def complete(self) -> bool:
        """True when every case is done."""
        return all(c.state == "done" for c in self.cases)


def case_state(output_dir: Path, case_id: str, task: str | None = None) -> tuple[CaseState, str | None]:
    """The state of one case in ``output_dir`` (and the error of a failed one).

    Done is :func:`autoorgan.batch.outputs.done_sidecar` (the rule ``--continue`` uses too): a
    finished, consistent label map and sidecar, of ``task`` if given; failed means a failure
    record and no finished output.
    """
    if done_sidecar(CaseOutputs(output_dir, case_id), task) is not None:
        return "done", None
    record = read_failure(output_dir, case_id)
    if record is not None:
        return "failed", record.error
    return "missing", None


def collect_status(input_path: Path, output_dir: Path, *, num_parts: int = 1, task: str | None = None) -> BatchStatus:
    """The state of every case of ``input_path`` in ``output_dir``, with its shard among ``num_parts``."""
    check_shard(0, num_parts)
    status = BatchStatus(num_parts=num_parts)
    for case in find_cases(input_path, exclude=output_dir):
        state, error = case_state(output_dir, case.case_id, task)
        status.cases.append(CaseStatus(case.case_id, shard_of(case.case_id, num_parts), state, error))
    return status
