"""One worker process per device (or per CPU worker), each a shard of the batch.

``autoorgan predict --devices cuda:0,cuda:1`` (or ``--workers N --device cpu``) starts one
``python -m autoorgan predict ... --part-id i --num-parts n`` per device with an explicit
environment (``CUDA_VISIBLE_DEVICES`` for a GPU, a thread count for a CPU worker). The workers run
exactly the single-process code path on disjoint shards, so the outputs are the same files a
single process writes. Progress is read from the output folder (label map + sidecar = done,
failure record = failed), which is also what ``autoorgan status`` reads.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoorgan.batch.status import CaseState, case_state
from autoorgan.errors import InputError
from autoorgan.io.cases import find_cases

log = logging.getLogger(__name__)

#: Seconds a stopped worker gets to write its run record and overview before it is killed.
STOP_GRACE_SECONDS = 20.0
#: Environment variables that set the thread count of the math libraries torch uses.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its shard, the ``--device`` it is given, and its environment additions."""

    part_id: int
    num_parts: int
    device: str
    env: Mapping[str, str]

    @property
    def label(self) -> str:
        gpu = self.env.get("CUDA_VISIBLE_DEVICES")
        return f"part {self.part_id} ({'GPU ' + gpu if gpu is not None else self.device})"


@dataclass(frozen=True)
class WorkerOutcome:
    """How a worker ended: its exit code and the last lines it wrote."""

    spec: WorkerSpec
    returncode: int
    tail: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def parse_devices(text: str) -> list[str]:
    """``cuda:0,cuda:1`` (or ``0,1``) → ``["cuda:0", "cuda:1"]``; each device at most once."""
    devices = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        if item.isdigit():
            item = f"cuda:{item}"
        elif item == "gpu" or item.startswith("gpu:"):  # the common spelling of CUDA devices
            item = "cuda" + item[3:]
        if item == "cpu":
            raise InputError("--devices takes CUDA devices (cuda:0,cuda:1); for CPU workers use --workers N "
                             "--device cpu")
        if not (item.startswith("cuda:") and item[5:].isdigit()):
            raise InputError(f"--devices: '{item}' is not a CUDA device such as cuda:0")
        if item in devices:
            raise InputError(f"--devices names {item} twice")
        devices.append(item)
    if not devices:
        raise InputError("--devices is empty; give e.g. cuda:0,cuda:1")
    return devices


def plan_workers(*, devices: Sequence[str] | None, workers: int | None, device: str,
                 env: Mapping[str, str], cpu_count: int | None = None) -> list[WorkerSpec]:
    """The worker processes for ``--devices`` or ``--workers``.

    A GPU worker sees only its GPU (``CUDA_VISIBLE_DEVICES``, mapped through the caller's own
    ``CUDA_VISIBLE_DEVICES`` if set) and uses ``--device cuda``. CPU workers share the cores:
    each gets ``cores // workers`` threads unless the caller fixed ``OMP_NUM_THREADS``.
    """
    if devices and workers is not None:
        raise InputError("give either --devices or --workers, not both")
    if devices:
        visible = [v.strip() for v in env["CUDA_VISIBLE_DEVICES"].split(",")] if env.get("CUDA_VISIBLE_DEVICES") else None
        specs = []
        for i, name in enumerate(devices):
            index = int(name.partition(":")[2])
            if visible is not None and index >= len(visible):
                raise InputError(f"--devices {name}: only {len(visible)} device(s) in CUDA_VISIBLE_DEVICES="
                                 f"{env['CUDA_VISIBLE_DEVICES']}")
            physical = visible[index] if visible is not None else str(index)
            specs.append(WorkerSpec(i, len(devices), "cuda", {"CUDA_VISIBLE_DEVICES": physical}))
        return specs
    if workers is None or workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    extra: dict[str, str] = {}
    if device.strip().lower() == "cpu":
        threads = max(1, (cpu_count or os.cpu_count() or 1) // workers)
        extra = {var: env.get(var) or str(threads) for var in THREAD_VARIABLES}
    elif device.strip().lower() not in ("auto",) and workers > 1:
        log.warning("%d workers share device %s", workers, device)
    return [WorkerSpec(i, workers, device, extra) for i in range(workers)]


def worker_command(predict_args: Sequence[str], spec: WorkerSpec) -> list[str]:
    """The command line of one worker: this Python, the same ``predict`` options, its shard."""
    return [sys.executable, "-m", "autoorgan", "predict", *predict_args, "--part-id", str(spec.part_id),
            "--num-parts", str(spec.num_parts), "--device", spec.device, "--quiet"]


class FolderProgress:
    """Counts done / failed cases of an input in an output folder, re-checking only open cases."""

    def __init__(self, input_path: Path, output_dir: Path):
        self.output_dir = output_dir
        self.case_ids = [c.case_id for c in find_cases(input_path, exclude=output_dir)]
        self._final: dict[str, CaseState] = {}

    def poll(self) -> tuple[int, int, int]:
        """``(done, failed, total)`` now."""
        failed = 0
        for cid in self.case_ids:
            if cid in self._final:
                continue
            state, _ = case_state(self.output_dir, cid)
            if state == "done":
                self._final[cid] = state
            failed += state == "failed"
        return len(self._final), failed, len(self.case_ids)


def run_workers(specs: Sequence[WorkerSpec], predict_args: Sequence[str], *,
                progress: Callable[[], None] | None = None, poll_seconds: float = 0.5,
                base_env: Mapping[str, str] | None = None, tail_lines: int = 5) -> list[WorkerOutcome]:
    """Start every worker, call ``progress`` while they run, wait for all; one outcome each.

    Each worker's output goes to a temporary log whose last lines come back in its outcome. If
    this process is interrupted (Ctrl-C, or SIGTERM under :func:`autoorgan.batch.interrupts.signals_as_interrupts`),
    the workers it started get SIGTERM, so each ends as an interrupted run (run record ``aborted``,
    overview written, exit 143), and are killed if still running after :data:`STOP_GRACE_SECONDS`.
    """
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONUNBUFFERED"] = "1"
    with tempfile.TemporaryDirectory(prefix="autoorgan-workers-") as tmp:
        procs: list[tuple[WorkerSpec, subprocess.Popen[bytes], Path]] = []
        try:
            for spec in specs:
                log_path = Path(tmp) / f"part{spec.part_id}.log"
                with open(log_path, "wb") as fh:
                    proc = subprocess.Popen(worker_command(predict_args, spec), env={**env, **spec.env},
                                            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
                log.debug("started %s as pid %d", spec.label, proc.pid)
                procs.append((spec, proc, log_path))
            while any(p.poll() is None for _, p, _ in procs):
                if progress is not None:
                    progress()
                time.sleep(poll_seconds)
            if progress is not None:
                progress()
        except BaseException:
            _stop(p for _, p, _ in procs)
            raise
        return [WorkerOutcome(spec, proc.returncode, _tail(log_path, tail_lines)) for spec, proc, log_path in procs]


def _stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Terminate the workers this process started (by their Popen handles), then kill stragglers."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in running:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
