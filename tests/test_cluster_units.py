"""Shards from Slurm, worker planning, failure records and batch status — without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan.batch.failures import clear_failure, error_record_path, read_failure, write_failure
from autoorgan.batch.launcher import parse_devices, plan_workers, worker_command
from autoorgan.batch.sharding import resolve_shard, shard_from_slurm, shard_of
from autoorgan.batch.status import collect_status
from autoorgan.cli.app import app, worker_arguments
from autoorgan.errors import InputError
from autoorgan.io.writing import file_digest
from autoorgan.options import PredictOptions

runner = CliRunner()


def _array_env(task_id: int, low: int, high: int) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_MAX": str(high), "SLURM_ARRAY_TASK_COUNT": str(high - low + 1)}


@pytest.mark.parametrize(("task_id", "low", "high", "expected"), [
    (0, 0, 3, (0, 4)), (3, 0, 3, (3, 4)), (1, 1, 3, (0, 3)), (3, 1, 3, (2, 3)), (12, 10, 12, (2, 3)),
])
def test_shard_from_slurm_array(task_id: int, low: int, high: int, expected: tuple[int, int]) -> None:
    assert shard_from_slurm(_array_env(task_id, low, high)) == expected
    assert resolve_shard("auto", "auto", _array_env(task_id, low, high)) == expected


def test_shard_from_slurm_outside_array_is_clear_error() -> None:
    with pytest.raises(InputError, match=r"need a Slurm job array .*SLURM_ARRAY_TASK_ID"):
        resolve_shard("auto", "auto", {"SLURM_JOB_ID": "5"})


def test_shard_from_slurm_refuses_stepped_array() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "8",
           "SLURM_ARRAY_TASK_COUNT": "5"}  # --array=0-8:2
    with pytest.raises(InputError, match="contiguous"):
        shard_from_slurm(env)


def test_resolve_shard_plain_and_mixed() -> None:
    assert resolve_shard("2", "5", {}) == (2, 5)
    assert resolve_shard("auto", "3", _array_env(2, 1, 3)) == (1, 3)
    with pytest.raises(InputError, match="differs from the Slurm array's 3"):
        resolve_shard("auto", "4", _array_env(2, 1, 3))
    with pytest.raises(InputError, match="integer or 'auto'"):
        resolve_shard("one", "2", {})
    with pytest.raises(InputError, match="between 0 and 1"):
        resolve_shard("2", "2", {})


def test_predict_cli_auto_outside_slurm_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var, raising=False)
    result = runner.invoke(app, ["predict", "-t", "hip", "-i", str(tmp_path), "-o", str(tmp_path / "o"),
                                 "--part-id", "auto", "--num-parts", "auto"])
    assert result.exit_code == 2
    assert "need a Slurm job array" in result.output and "Traceback" not in result.output


def test_parse_devices() -> None:
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_devices("2,3") == ["cuda:2", "cuda:3"]
    for bad, message in (("cuda:0,cuda:0", "twice"), ("cpu", "--workers"), ("gpu0", "not a CUDA device"), (",", "empty")):
        with pytest.raises(InputError, match=message):
            parse_devices(bad)


def test_plan_workers_gpus_map_through_visible_devices() -> None:
    specs = plan_workers(devices=["cuda:0", "cuda:1"], workers=None, device="auto", env={})
    assert [(s.part_id, s.num_parts, s.device, dict(s.env)) for s in specs] == [
        (0, 2, "cuda", {"CUDA_VISIBLE_DEVICES": "0"}), (1, 2, "cuda", {"CUDA_VISIBLE_DEVICES": "1"})]
    specs = plan_workers(devices=["cuda:1"], workers=None, device="auto", env={"CUDA_VISIBLE_DEVICES": "4,6"})
    assert specs[0].env == {"CUDA_VISIBLE_DEVICES": "6"}
    with pytest.raises(InputError, match="only 2 device"):
        plan_workers(devices=["cuda:2"], workers=None, device="auto", env={"CUDA_VISIBLE_DEVICES": "4,6"})


def test_plan_workers_cpu_share_threads() -> None:
    specs = plan_workers(devices=None, workers=3, device="cpu", env={}, cpu_count=12)
    assert [s.part_id for s in specs] == [0, 1, 2] and {s.num_parts for s in specs} == {3}
    assert all(s.env["OMP_NUM_THREADS"] == "4" and s.device == "cpu" for s in specs)
    kept = plan_workers(devices=None, workers=2, device="cpu", env={"OMP_NUM_THREADS": "1"}, cpu_count=12)
    assert kept[0].env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(InputError, match="at least 1"):
        plan_workers(devices=None, workers=0, device="cpu", env={})
    with pytest.raises(InputError, match="not both"):
        plan_workers(devices=["cuda:0"], workers=2, device="cpu", env={})


def test_worker_command_repeats_options_with_its_shard() -> None:
    args = worker_arguments(task="hip", input=Path("in"), output=Path("out"),
                            options=PredictOptions(resume=True, skip_failed=False,
                                   models_dir=Path("m"), tasks_file=None, dataset_id=None, trainer=None, fold="all",
                                   configuration=None, plans=None, step_size=0.75))
    assert args == ["--task", "hip", "--input", "in", "--output", "out", "--step-size", "0.75", "--continue",
                    "--models-dir", "m", "--fold", "all"]
    spec = plan_workers(devices=None, workers=2, device="cpu", env={}, cpu_count=2)[1]
    command = worker_command(args, spec)
    assert command[1:4] == ["-m", "autoorgan", "predict"]
    assert command[-7:] == ["--part-id", "1", "--num-parts", "2", "--device", "cpu", "--quiet"]


def test_failure_record_roundtrip(tmp_path: Path) -> None:
    # the message is kept whole: a newline may be part of a file name (issue 17, item 12)
    path = write_failure(tmp_path, "case 1", "case\n1.nii.gz: not a 3D image\n")
    assert path == error_record_path(tmp_path, "case 1") == tmp_path / "case 1.error.json"
    data = json.loads(path.read_text())
    assert data["case_id"] == "case 1" and data["error"] == "case\n1.nii.gz: not a 3D image"
    assert set(data) == {"case_id", "error", "time", "host", "autoorgan"}
    record = read_failure(tmp_path, "case 1")
    assert record is not None and record.error == "case\n1.nii.gz: not a 3D image"
    assert [p.name for p in tmp_path.iterdir()] == ["case 1.error.json"]  # no temporaries left
    assert clear_failure(tmp_path, "case 1") is True
    assert clear_failure(tmp_path, "case 1") is False and read_failure(tmp_path, "case 1") is None


def _fake_done(out: Path, case_id: str, task: str = "hip") -> None:
    out.mkdir(exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), str(out / f"{case_id}.nii.gz"))
    digest = file_digest(out / f"{case_id}.nii.gz")  # a finished pair: the sidecar names its map's checksum
    (out / f"{case_id}.json").write_text(json.dumps({"task": task, "dataset_id": 114, "label_map": f"{case_id}.nii.gz",
                                                     "label_map_sha256": digest.sha256, "label_map_size": digest.size}))


def test_status_counts_per_case_and_shard(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    names = [f"c{i}" for i in range(6)]
    for name in names:
        (inp / f"{name}.nii.gz").write_bytes(b"x")
    _fake_done(out, "c0")
    _fake_done(out, "c1", task="ribs")
    write_failure(out, "c2", "c2.nii.gz: unreadable")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), str(out / "c3.nii.gz"))  # no sidecar
    status = collect_status(inp, out, num_parts=3)
    states = {c.case_id: c.state for c in status.cases}
    assert states == {"c0": "done", "c1": "done", "c2": "failed", "c3": "missing", "c4": "missing", "c5": "missing"}
    assert next(c.error for c in status.cases if c.case_id == "c2") == "c2.nii.gz: unreadable"
    assert {c.case_id: c.shard for c in status.cases} == {n: shard_of(n, 3) for n in names}
    per_shard = status.per_shard()
    assert sum(per_shard[s]["missing"] for s in range(3)) == 3 and set(per_shard) == {0, 1, 2}
    assert not status.complete
    assert collect_status(inp, out, task="hip").count("done") == 1
    (out / "c4.json").write_text(json.dumps({"task": "hip", "label_map": None}))  # masks only
    (out / "c5.json").write_text(json.dumps({"task": "hip", "label_map": "c5.nrrd"}))  # .nrrd not written
    states = {c.case_id: c.state for c in collect_status(inp, out).cases}
    assert (states["c4"], states["c5"]) == ("done", "missing")


def test_status_cli_exit_code(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in ("a", "b"):
        (inp / f"{name}.nii.gz").write_bytes(b"x")
    _fake_done(out, "a")
    write_failure(out, "b", "b.nii.gz: [bad] file")
    result = runner.invoke(app, ["status", "-i", str(inp), "-o", str(out), "--num-parts", "2"])
    assert result.exit_code == 1, result.output
    assert "1 done, 1 failed, 0 missing" in result.output and "b.nii.gz: [bad] file" in result.output
    clear_failure(out, "b")
    _fake_done(out, "b")
    result = runner.invoke(app, ["status", "-i", str(inp), "-o", str(out)])
    assert result.exit_code == 0 and "complete: 2 done, 0 failed, 0 missing" in result.output
    missing = runner.invoke(app, ["status", "-i", str(tmp_path / "nope"), "-o", str(out)])
    assert missing.exit_code == 2 and "does not exist" in missing.output
