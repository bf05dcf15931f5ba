"""Batches that survive faults: kill -9, concurrent shards, growing inputs, unwritable or full output,
failure records, and multi-process runs — with the real nnU-Net fixture model (CPU)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.batch.sharding import shard_of
from autoorgan.batch.status import collect_status
from autoorgan.cli.app import app
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e
runner = CliRunner()
NAMES = [f"case{i}" for i in range(6)]


def _write_case(folder: Path, name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pelvis_phantom(seed).ct, str(folder / f"{name}.nii.gz"))


@pytest.fixture(scope="module")
def batch(trained_models: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An input folder of six phantoms and their single-process reference outputs."""
    base = tmp_path_factory.mktemp("batch")
    for i, name in enumerate(NAMES):
        _write_case(base / "in", name, 400 + i)
    result = api.predict(task=FIXTURE_TASK, input=base / "in", output=base / "reference", models_dir=trained_models,
                         device="cpu")
    assert [r.status for r in result.results] == ["done"] * len(NAMES)
    return base / "in", base / "reference"


def _cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoorgan", "predict", "--task", FIXTURE_TASK, "--device", "cpu", "--quiet", *args]


def _worker_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _stable(data: object) -> object:
    """A sidecar without its timings (``seconds``, ``timing``), which differ from run to run."""
    if isinstance(data, dict):
        return {k: _stable(v) for k, v in data.items() if k not in ("seconds", "timing")}
    if isinstance(data, list):
        return [_stable(v) for v in data]
    return data


def _assert_matches_reference(out: Path, reference: Path, names: list[str], inputs: Path) -> None:
    """Every case's label map loads, has its CT's grid, and equals the single-process result."""
    for name in names:
        seg = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        ct = sitk.ReadImage(str(inputs / f"{name}.nii.gz"))
        assert seg.GetSize() == ct.GetSize()
        assert np.allclose(seg.GetSpacing(), ct.GetSpacing()) and np.allclose(seg.GetOrigin(), ct.GetOrigin())
        assert np.allclose(seg.GetDirection(), ct.GetDirection())
        ref = sitk.ReadImage(str(reference / f"{name}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(ref)), name
        assert _stable(json.loads((out / f"{name}.json").read_text())) == _stable(
            json.loads((reference / f"{name}.json").read_text()))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.slow
def test_workers_give_the_single_process_outputs(batch: tuple[Path, Path], trained_models: Path,
                                                 tmp_path: Path) -> None:
    inputs, reference = batch
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(inputs), "-o", str(tmp_path / "out"),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "6 of 6 done, 0 failed, 2 of 2 worker(s) succeeded" in result.output
    _assert_matches_reference(tmp_path / "out", reference, NAMES, inputs)
    # (batch-level files of other features, e.g. run records or an overview, may sit next to the cases)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("case")) == sorted(
        [f"{n}.nii.gz" for n in NAMES] + [f"{n}.json" for n in NAMES])


@pytest.mark.slow
def test_failed_case_record_retry_and_skip(batch: tuple[Path, Path], trained_models: Path, tmp_path: Path) -> None:
    inputs, reference = batch
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in NAMES[:2]:
        shutil.copy(inputs / f"{name}.nii.gz", inp)
    (inp / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(inp), "-o", str(out), "--models-dir",
                                 str(trained_models), "--device", "cpu", "--workers", "2", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "2 of 3 done, 1 failed" in result.output and "failed (exit code 1)" in result.output
    record = json.loads((out / "broken.error.json").read_text())
    assert record["case_id"] == "broken" and "broken.nii.gz" in record["error"]
    assert not (out / "broken.nii.gz").exists() and not (out / "broken.json").exists()
    status = runner.invoke(app, ["status", "-i", str(inp), "-o", str(out)])
    assert status.exit_code == 1 and "2 done, 1 failed, 0 missing" in status.output

    skipped = api.predict(task=FIXTURE_TASK, input=inp, output=out, models_dir=trained_models, device="cpu",
                          resume=True, skip_failed=True)
    assert {r.case_id: r.status for r in skipped.results} == {"case0": "skipped", "case1": "skipped",
                                                               "broken": "failed"}
    assert "not retried" in (skipped.failed[0].error or "")
    retried = api.predict(task=FIXTURE_TASK, input=inp, output=out, models_dir=trained_models, device="cpu",
                          resume=True)
    assert retried.failed[0].case_id == "broken" and "not retried" not in (retried.failed[0].error or "")

    shutil.copy(inputs / f"{NAMES[2]}.nii.gz", inp / "broken.nii.gz")  # the file is repaired
    fixed = api.predict(task=FIXTURE_TASK, input=inp, output=out, models_dir=trained_models, device="cpu",
                        resume=True)
    assert {r.case_id: r.status for r in fixed.results}["broken"] == "done"
    assert not (out / "broken.error.json").exists()
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "broken.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(reference / f"{NAMES[2]}.nii.gz"))))


@pytest.mark.slow
def test_kill_9_then_continue_recomputes_exactly_the_missing(batch: tuple[Path, Path], trained_models: Path,
                                                             tmp_path: Path) -> None:
    inputs, reference = batch
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli_command("-i", str(inputs), "-o", str(out), "--models-dir", str(trained_models)),
                            env=_worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (time.monotonic() < deadline and proc.poll() is None
           and not any(CaseOutputs(out, n).sidecar.exists() for n in NAMES)):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    complete = {n for n in NAMES if CaseOutputs(out, n).is_complete("hip", 114)}
    assert complete and len(complete) < len(NAMES), f"kill came too late or too early: {complete}"
    stamps = {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in complete}

    resumed = api.predict(task=FIXTURE_TASK, input=inputs, output=out, models_dir=trained_models, device="cpu",
                          resume=True)
    statuses = {r.case_id: r.status for r in resumed.results}
    assert {n for n, s in statuses.items() if s == "skipped"} == complete
    assert {n for n, s in statuses.items() if s == "done"} == set(NAMES) - complete
    assert {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in complete} == stamps  # not rewritten
    _assert_matches_reference(out, reference, NAMES, inputs)


@pytest.mark.slow
def test_two_shards_on_one_folder_at_once(batch: tuple[Path, Path], trained_models: Path, tmp_path: Path) -> None:
    inputs, reference = batch
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cli_command("-i", str(inputs), "-o", str(out), "--models-dir", str(trained_models),
                                           "--part-id", str(i), "--num-parts", "2"),
                              env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    expected = [sum(shard_of(n, 2) == i for n in NAMES) for i in range(2)]
    for log, count in zip(logs, expected, strict=True):
        assert f"{count} done, 0 already complete, 0 failed" in log, log
    _assert_matches_reference(out, reference, NAMES, inputs)


def _name_in_shard(shard: int, taken: set[str]) -> str:
    return next(f"late{i}" for i in range(100) if shard_of(f"late{i}", 2) == shard and f"late{i}" not in taken)


def test_case_added_between_shard_launches(batch: tuple[Path, Path], trained_models: Path, tmp_path: Path) -> None:
    inputs, _ = batch
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(inputs, inp)
    runs: list[dict[str, str]] = []

    def shard(part: int, resume: bool = False) -> None:
        result = api.predict(task=FIXTURE_TASK, input=inp, output=out, models_dir=trained_models, device="cpu",
                             part_id=part, num_parts=2, resume=resume)
        runs.append({r.case_id: r.status for r in result.results})

    shard(0)
    late = [_name_in_shard(0, set()), _name_in_shard(1, set())]
    for i, name in enumerate(late):
        shutil.copy(inputs / f"{NAMES[i]}.nii.gz", inp / f"{name}.nii.gz")
    shard(1)
    assert runs[1][late[1]] == "done" and late[0] not in runs[1]
    status = collect_status(inp, out, num_parts=2)
    assert [(c.case_id, c.shard) for c in status.cases if c.state != "done"] == [(late[0], 0)]  # reported, not lost
    shard(0, resume=True)
    assert {c for c, s in runs[2].items() if s == "done"} == {late[0]}
    everything = NAMES + late
    done_counts = {n: sum(run.get(n) == "done" for run in runs) for n in everything}
    assert done_counts == {n: 1 for n in everything}
    assert collect_status(inp, out, num_parts=2).complete


def test_output_under_a_file_is_one_clear_error(batch: tuple[Path, Path], trained_models: Path,
                                                tmp_path: Path) -> None:
    inputs, _ = batch
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(inputs), "-o", str(blocker / "out"),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--quiet"])
    assert result.exit_code == 4
    assert "cannot create output folder" in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "x"


def _limit_file_size() -> None:
    """In the child: files may not grow past 300 bytes (EFBIG instead of SIGXFSZ), like a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))


@pytest.mark.slow
def test_output_that_cannot_grow_is_one_clear_error_and_leaves_nothing(batch: tuple[Path, Path],
                                                                      trained_models: Path, tmp_path: Path) -> None:
    inputs, _ = batch
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(_cli_command("-i", str(inputs), "-o", str(out), "--models-dir", str(trained_models)),
                          env=_worker_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size)
    assert proc.returncode == 4, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()][-1].startswith("error: cannot write")
    assert list(out.iterdir()) == []  # no partial label map, no temporary, no failure record
