"""The cluster scripts for real: a Slurm job array on a private one-node Slurm, and the GPU-server script
(on CPU here: every process gets its own CUDA_VISIBLE_DEVICES and part id)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from autoorgan.batch.sharding import shard_of
from autoorgan.batch.status import collect_status
from fixture_model import FIXTURE_TASK, pelvis_phantom
from slurm_local import LocalSlurm, slurm_available

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
AUTOORGAN = f"{shlex.quote(sys.executable)} -m autoorgan"


def _inputs(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    names = [f"ct{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        sitk.WriteImage(pelvis_phantom(500 + i).ct, str(folder / f"{name}.nii.gz"))
    return names


def _summary_counts(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+) done, (\d+) already complete, (\d+) failed", text)
    assert match, text
    return int(match[1]), int(match[2]), int(match[3])


@pytest.mark.slow
@pytest.mark.skipif(not slurm_available(), reason="slurmctld/slurmd/munged not installed (CI installs slurm-wlm)")
def test_slurm_job_array_does_every_case_once(trained_models: Path, tmp_path: Path) -> None:
    names = _inputs(tmp_path / "in", 6)
    logs = tmp_path / "logs"
    logs.mkdir()
    env_before = time.monotonic()
    with LocalSlurm() as cluster:
        job = cluster.sbatch(
            "--array=1-3",  # not starting at 0: part = task id - min
            "--cpus-per-task=1", f"--output={logs}/%A_%a.log", f"--export=ALL,AUTOORGAN={AUTOORGAN},OMP_NUM_THREADS=1",
            str(ROOT / "scripts" / "slurm_predict.sbatch"), FIXTURE_TASK, str(tmp_path / "in"), str(tmp_path / "out"),
            "--models-dir", str(trained_models), "--device", "cpu", cwd=tmp_path)
        states = cluster.wait(job, timeout=600)
    seconds = time.monotonic() - env_before
    texts = {int(p.stem.split("_")[1]): p.read_text() for p in logs.glob("*.log")}
    assert states == ["COMPLETED"] * 3, texts
    assert sorted(texts) == [1, 2, 3]
    for task_id, text in texts.items():
        part = task_id - 1
        expected = sum(shard_of(n, 3) == part for n in names)
        assert _summary_counts(text) == (expected, 0, 0), text
    assert sum(_summary_counts(t)[0] for t in texts.values()) == len(names)  # every case once, none twice
    status = collect_status(tmp_path / "in", tmp_path / "out", num_parts=3, task=FIXTURE_TASK)
    assert status.complete and len(status.cases) == len(names)
    print(f"slurm array of 3 tasks on {len(names)} cases: {seconds:.1f} s including cluster start and stop")


@pytest.mark.slow
def test_multi_gpu_script_runs_every_shard_and_reports_failures(trained_models: Path, tmp_path: Path) -> None:
    names = _inputs(tmp_path / "in", 3)
    script = ROOT / "scripts" / "predict_multi_gpu.sh"
    env = {**os.environ, "AUTOORGAN": AUTOORGAN, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([str(script), "-g", "0,1", FIXTURE_TASK, str(tmp_path / "in"), str(tmp_path / "out"),
                         "--models-dir", str(trained_models), "--device", "cpu"],
                        env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "part 0 of 2 on GPU 0" in ok.stdout and "part 1 (GPU 1): ok" in ok.stdout
    assert "all 2 part(s) finished" in ok.stdout
    done = [_summary_counts((tmp_path / "out" / "logs" / f"part{i}.log").read_text())[0] for i in range(2)]
    assert done == [sum(shard_of(n, 2) == i for n in names) for i in range(2)]
    assert collect_status(tmp_path / "in", tmp_path / "out").complete

    bad = subprocess.run([str(script), "-g", "2,3", FIXTURE_TASK, str(tmp_path / "in"), str(tmp_path / "out2"),
                          "--models-dir", str(tmp_path / "no_models"), "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1
    assert "part 0 (GPU 2): FAILED with exit code 3" in bad.stderr and "part 1 (GPU 3): FAILED" in bad.stderr
    assert "2 of 2 part(s) failed" in bad.stderr


def test_multi_gpu_script_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([str(ROOT / "scripts" / "predict_multi_gpu.sh"), "hip", "in"], capture_output=True,
                            text=True, env={**os.environ, "GPUS": ""})
    assert result.returncode == 2 and "usage:" in result.stderr
