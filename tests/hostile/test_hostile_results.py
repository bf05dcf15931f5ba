"""Issue 17, items 5, 6, 7 and 11: results are never lost, and never wrongly counted done.

5. Concurrent runs on one folder: temporary names say whose they are; a run removes only abandoned
   temporaries and only the label map it wrote itself.
6. A label map and its sidecar belong together: the old sidecar goes before the map is replaced,
   and the sidecar records the map's SHA-256 and size, checked by both "done" rules.
7. ``--continue`` counts the model (checkpoint, plans...) and the prediction settings.
11. SIGTERM / SIGINT end a run cleanly: run record ``aborted``, overview written, no temporaries,
    exit 143 / 130, also for ``--workers 2``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from autoorgan import api
from autoorgan.batch import job as pipeline
from autoorgan.batch.interrupts import Interrupted, signals_as_interrupts
from autoorgan.batch.outputs import LABEL_SHA256_KEY, LABEL_SIZE_KEY, MADE_WITH_KEY, CaseOutputs
from autoorgan.batch.status import case_state
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.errors import CaseError
from autoorgan.io.writing import (
    ABANDONED_AFTER_SECONDS,
    all_temporaries,
    atomic_path,
    file_digest,
    host_token,
    is_abandoned,
    remove_abandoned,
    temporary_owner,
    temporary_sibling,
    write_image,
)
from autoorgan.report import run_record
from autoorgan.report.run_record import RECORD_GLOB

DEMO = {"task": DEMO_TASK, "tasks_file": demo_tasks_file(), "models_dir": demo_models_dir(), "device": "cpu"}
CLI = [sys.executable, "-m", "autoorgan", "predict", "--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()),
       "--models-dir", str(demo_models_dir()), "--device", "cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cases(folder: Path, count: int, *, zoom: int = 1) -> list[str]:
    """``count`` demo phantoms (``zoom`` times finer, for slower cases) as c00, c01..."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        ct = demo_phantom(i).ct
        if zoom > 1:
            size = [n * zoom for n in ct.GetSize()]
            spacing = [s / zoom for s in ct.GetSpacing()]
            ct = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), spacing,
                               ct.GetDirection(), -1000.0, ct.GetPixelID())
        names.append(f"c{i:02d}")
        sitk.WriteImage(ct, str(folder / f"{names[-1]}.nii.gz"))
    return names


def _statuses(result: pipeline.BatchResult) -> dict[str, str]:
    return {r.case_id: r.status for r in result.results}


def _hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(RECORD_GLOB))]


def _temp_of(folder: Path, stem: str, host: str, pid: int, ending: str = ".nii.gz") -> Path:
    path = folder / f".{stem}.tmp-{host}-{pid}-{'0a1b2c3d4e5f'}{ending}"
    path.write_bytes(b"being written")
    return path


# ---------------------------------------------------------------------------------------------
# 5. Temporary files say whose they are; only abandoned ones are removed


def test_temporary_names_name_host_and_process_and_are_unique(tmp_path: Path) -> None:
    first, second = temporary_sibling(tmp_path / "c.nii.gz"), temporary_sibling(tmp_path / "c.nii.gz")
    assert first != second
    assert first.name.startswith(f".c.tmp-{host_token()}-{os.getpid()}-") and first.name.endswith(".nii.gz")
    assert temporary_owner(first).pid == os.getpid() and temporary_owner(first).host == host_token()
    # A case id that itself holds ".tmp-" still parses to the right owner.
    odd = temporary_sibling(tmp_path / "a.tmp-12-x.json")
    assert temporary_owner(odd).pid == os.getpid()
    assert temporary_owner(tmp_path / ".c.tmp-0123456789ab.nii.gz") is None  # an older autoorgan's


def test_a_live_runs_temporary_file_survives_another_runs_start_up(tmp_path: Path) -> None:
    """The issue's loss: run B's start-up deleted run A's temporary file, so A failed (exit 4)."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        theirs = _temp_of(tmp_path, "c", host_token(), live.pid)
        mine = temporary_sibling(tmp_path / "c.json")
        mine.write_text("{")
        assert CaseOutputs(tmp_path, "c").remove_leftovers() == 0
        assert remove_abandoned(all_temporaries(tmp_path)) == 0
        assert theirs.read_bytes() == b"being written" and mine.exists()
        # A batch's start-up in this folder leaves it too.
        _cases(tmp_path / "in", 1)
        api.predict(input=tmp_path / "in", output=tmp_path, **DEMO)
        assert theirs.exists()
    finally:
        live.kill()
        live.wait()
    # Once its writer is gone, it is a leftover and the next start-up removes it (not the file of
    # this very process, which is still writing it).
    assert is_abandoned(theirs) and not is_abandoned(mine)
    assert CaseOutputs(tmp_path, "c").remove_leftovers() == 1
    assert not theirs.exists() and mine.exists()


def test_a_reused_process_id_does_not_keep_a_leftover(tmp_path: Path) -> None:
    """The pid in the name belongs to a live process that started after the file was last written."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = _temp_of(tmp_path, "c", host_token(), live.pid)
        long_ago = time.time() - 3600
        os.utime(stale, (long_ago, long_ago))
        assert is_abandoned(stale)
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("owner", ["other_host_0a1b2c-4242-", "legacy"])
def test_temporaries_of_other_hosts_go_only_when_long_untouched(tmp_path: Path, owner: str) -> None:
    if owner == "legacy":
        path = tmp_path / ".c.tmp-0123456789ab.nii.gz"
        path.write_bytes(b"x")
    else:
        path = _temp_of(tmp_path, "c", "other_host_0a1b2c", 4242)
    assert not is_abandoned(path)  # its process cannot be checked from here
    assert remove_abandoned(all_temporaries(tmp_path)) == 0 and path.exists()
    old = time.time() - ABANDONED_AFTER_SECONDS - 60
    os.utime(path, (old, old))
    assert remove_abandoned(all_temporaries(tmp_path)) == 1 and not path.exists()


def test_a_failing_run_never_removes_the_label_map_another_run_wrote(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's second loss: run A failed and, cleaning up, deleted run B's finished label map."""
    _cases(tmp_path / "in", 1)
    out = tmp_path / "out"
    theirs = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    real_write_json = pipeline.write_json

    def other_run_finishes_then_we_fail(data: dict, target: Path) -> Path:
        if target == out / "c00.json":
            write_image(theirs, out / "c00.nii.gz")  # run B replaces the label map...
            raise RuntimeError("disk hiccup")  # ...and then run A fails
        return real_write_json(data, target)

    monkeypatch.setattr(pipeline, "write_json", other_run_finishes_then_we_fail)
    result = api.predict(input=tmp_path / "in", output=out, **DEMO)
    assert _statuses(result) == {"c00": "failed"} and "disk hiccup" in result.results[0].error
    assert sitk.ReadImage(str(out / "c00.nii.gz")).GetSize() == (2, 2, 2)  # B's map is still there
    # Without another writer, a failing case removes its own label map (no half-done case).
    monkeypatch.setattr(pipeline, "write_json", lambda data, target: (_ for _ in ()).throw(CaseError("no")))
    result = api.predict(input=tmp_path / "in", output=out, **DEMO)
    assert _statuses(result) == {"c00": "failed"} and not (out / "c00.nii.gz").exists()


def test_a_failing_extra_output_leaves_the_earlier_label_map_in_place(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from autoorgan.steps import report as steps

    _cases(tmp_path / "in", 1)
    out = tmp_path / "out"
    api.predict(input=tmp_path / "in", output=out, **DEMO)
    before = (out / "c00.nii.gz").read_bytes()

    def broken(self: object, ctx: object) -> None:
        raise CaseError("statistics cannot be written")

    monkeypatch.setattr(steps.StatisticsStep, "__call__", broken)
    result = api.predict(input=tmp_path / "in", output=out, statistics=True, **DEMO)
    assert _statuses(result) == {"c00": "failed"}
    assert (out / "c00.nii.gz").read_bytes() == before  # nothing finished is deleted...
    assert not (out / "c00.json").exists() and case_state(out, "c00")[0] == "failed"  # ...nor counted done
    monkeypatch.undo()
    again = api.predict(input=tmp_path / "in", output=out, statistics=True, resume=True, **DEMO)
    assert _statuses(again) == {"c00": "done"} and case_state(out, "c00") == ("done", None)


@pytest.mark.e2e
@pytest.mark.slow
def test_two_concurrent_processes_on_one_output_folder_both_succeed(tmp_path: Path) -> None:
    names = _cases(tmp_path / "in", 8)
    out = tmp_path / "out"
    runs = [subprocess.Popen([*CLI, "-i", str(tmp_path / "in"), "-o", str(out)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("Traceback" not in text for text in outputs)
    assert {n: case_state(out, n)[0] for n in names} == {n: "done" for n in names}
    assert _hidden(out) == []
    assert len(_records(out)) == 2 and all(r["status"] == "completed" for r in _records(out))
    # A third run that starts while neither is writing finds everything complete.
    again = api.predict(input=tmp_path / "in", output=out, resume=True, **DEMO)
    assert set(_statuses(again).values()) == {"skipped"}


# ---------------------------------------------------------------------------------------------
# 6. Label map and sidecar belong together


def test_a_sidecar_counts_only_beside_the_label_map_it_describes(tmp_path: Path) -> None:
    _cases(tmp_path / "in", 1)
    out = tmp_path / "out"
    api.predict(input=tmp_path / "in", output=out, **DEMO)
    outputs = CaseOutputs(out, "c00")
    sidecar = json.loads(outputs.sidecar.read_text())
    assert sidecar[LABEL_SHA256_KEY] == file_digest(outputs.label_map).sha256
    assert sidecar[LABEL_SIZE_KEY] == outputs.label_map.stat().st_size
    assert outputs.is_complete(DEMO_TASK, 990) and case_state(out, "c00") == ("done", None)
    # A different label map of the same size (one voxel changed): the checksum tells.
    image = sitk.ReadImage(str(outputs.label_map))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 3 if array[0, 0, 0] != 3 else 0
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    write_image(changed, outputs.label_map)
    assert not outputs.is_complete(DEMO_TASK, 990)
    assert case_state(out, "c00") == ("missing", None)
    # A sidecar naming a file outside the folder is not taken.
    outputs.sidecar.write_text(json.dumps({**sidecar, "label_map": "../in/c00.nii.gz"}))
    assert outputs.finished_sidecar() is None
    again = api.predict(input=tmp_path / "in", output=out, resume=True, **DEMO)
    assert _statuses(again) == {"c00": "done"} and case_state(out, "c00")[0] == "done"


KILL_BEFORE_SIDECAR = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from autoorgan import api
    from autoorgan.batch import job as pipeline
    from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_tasks_file

    out = Path(sys.argv[2])
    real = pipeline.write_json

    def write_json(data, target):
        if target == out / "c01.json":
            os._exit(137)  # killed between the label map and the sidecar
        return real(data, target)

    pipeline.write_json = write_json
    api.predict(task=DEMO_TASK, tasks_file=demo_tasks_file(), models_dir=demo_models_dir(), device="cpu",
                input=sys.argv[1], output=out, roi_subset=sys.argv[3])
""")


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_between_label_map_and_sidecar_is_recomputed_by_continue(tmp_path: Path) -> None:
    _cases(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert set(_statuses(api.predict(input=tmp_path / "in", output=out, **DEMO)).values()) == {"done"}
    old_sidecar = json.loads((out / "c01.json").read_text())
    # A re-run keeping only the sacrum is killed after c01's new label map, before its sidecar.
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_SIDECAR, str(tmp_path / "in"), str(out), "sacrum"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    assert (out / "c01.nii.gz").is_file() and not (out / "c01.json").exists()  # old sidecar went first
    assert file_digest(out / "c01.nii.gz").sha256 != old_sidecar[LABEL_SHA256_KEY]
    assert case_state(out, "c01") == ("missing", None)
    # Even if the old sidecar were still there, it would not describe this map.
    (out / "c01.json").write_text(json.dumps(old_sidecar))
    assert not CaseOutputs(out, "c01").is_complete(DEMO_TASK, 990) and case_state(out, "c01")[0] == "missing"
    again = api.predict(input=tmp_path / "in", output=out, resume=True, roi_subset="sacrum", **DEMO)
    # c00 was finished by the killed run, c01 is redone, c02 still has the first run's options.
    assert _statuses(again) == {"c00": "skipped", "c01": "done", "c02": "done"}
    assert CaseOutputs(out, "c01").is_complete(DEMO_TASK, 990)
    assert _hidden(out) == []


def test_atomic_writes_flush_the_file_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "x.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert len(synced) == 2
    assert Path(synced[0]).name == tmp.name  # the file, before its rename
    assert Path(synced[1]) == tmp_path  # the folder, after it


# ---------------------------------------------------------------------------------------------
# 7. --continue counts the model and the prediction settings


@pytest.mark.e2e
@pytest.mark.slow
def test_continue_recomputes_for_another_model_or_other_speed_settings(tmp_path: Path) -> None:
    _cases(tmp_path / "in", 2)
    out, models = tmp_path / "out", tmp_path / "models"
    shutil.copytree(demo_models_dir(), models)
    demo = {**DEMO, "models_dir": models}

    def run(**options: object) -> set[str]:
        result = api.predict(input=tmp_path / "in", output=out, resume=True, **demo, **options)
        return set(_statuses(result).values())

    assert run() == {"done"}
    made_with = json.loads((out / "c00.json").read_text())[MADE_WITH_KEY]
    assert made_with["prediction"] == {"step_size": 0.5, "tta": True, "crop_body": False, "export": "torch",
                                       "precision": "auto", "orientation": None}
    [model] = made_with["models"].values()  # one task: one model
    assert model["fold"] == "0" and len(model["checkpoint_sha256"]) == 64
    assert model["orientation"] == "RAS"  # as the demo task table states it
    assert run() == {"skipped"}
    assert run(step_size=0.75) == {"done"}
    assert run(step_size=0.75) == {"skipped"}
    assert run(step_size=0.75, tta=False) == {"done"}  # mirroring
    assert run(step_size=0.75, fast=True) == {"done"}  # --fast: no mirroring and the body crop
    assert run(step_size=0.75, fast=True) == {"skipped"}
    assert run(step_size=0.75, fast=True, export="nnunet") == {"done"}
    # The same trainer/plans/fold but a checkpoint whose bytes changed (retrained, replaced).
    from autoorgan import engine

    checkpoint = next(models.rglob("checkpoint_final.pth"))
    weights = engine.load_checkpoint(checkpoint)
    weights["autoorgan_test_note"] = "retrained"
    import torch

    torch.save(weights, checkpoint)
    assert run(step_size=0.75, fast=True, export="nnunet") == {"done"}
    assert run(step_size=0.75, fast=True, export="nnunet") == {"skipped"}
    # The model fed in another orientation (--orientation) makes other labels.
    assert run(step_size=0.75, fast=True, export="nnunet", orientation="LPS") == {"done"}
    [model] = json.loads((out / "c00.json").read_text())[MADE_WITH_KEY]["models"].values()
    assert model["checkpoint_sha256"] == run_record.sha256_file(checkpoint)


def test_the_checkpoint_is_hashed_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cases(tmp_path / "in", 3)
    hashed: list[str] = []
    digest = run_record.file_digest

    def counting_digest(path: Path, *args: object) -> object:
        hashed.append(Path(path).name)
        return digest(path, *args)

    monkeypatch.setattr(run_record, "_DIGESTS", {})
    monkeypatch.setattr(run_record, "file_digest", counting_digest)
    result = api.predict(input=tmp_path / "in", output=tmp_path / "out", **DEMO)
    assert set(_statuses(result).values()) == {"done"}
    # checkpoint_final.pth and plans.json, once each, for 3 sidecars and the run record
    assert sorted(hashed) == ["checkpoint_final.pth", "plans.json"]
    record = _records(tmp_path / "out")[0]
    sidecar = json.loads((tmp_path / "out" / "c02.json").read_text())
    [model] = sidecar[MADE_WITH_KEY]["models"].values()
    assert record["model"]["checkpoints"][0]["sha256"] == model["checkpoint_sha256"]


# ---------------------------------------------------------------------------------------------
# 11. SIGTERM and SIGINT end a run like a crash should


def test_signals_become_interruptions_inside_the_block_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, signals_as_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert caught.value.exit_code == 143 and str(caught.value) == "interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_interruption_mid_batch_writes_record_and_overview_and_keeps_finished_cases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cases(tmp_path / "in", 4)
    out = tmp_path / "out"
    real_timing = pipeline.record_timing

    def signal_after_the_label_map_of_c02(case_id: str, *args: object) -> object:
        if case_id == "c02":  # c02's label map has landed; its sidecar is not written yet
            assert (out / "c02.nii.gz").is_file()
            raise Interrupted(signal.SIGTERM)
        return real_timing(case_id, *args)

    monkeypatch.setattr(pipeline, "record_timing", signal_after_the_label_map_of_c02)
    with pytest.raises(Interrupted):
        api.predict(input=tmp_path / "in", output=out, statistics=True, **DEMO)
    [record] = _records(out)
    assert record["status"] == "aborted" and record["aborted"] == "interrupted by SIGTERM"
    assert [(c["case"], c["status"]) for c in record["cases"]] == [("c00", "done"), ("c01", "done")]
    page = (out / "index.html").read_text()
    assert "c00" in page and "c01" in page
    assert not (out / "c02.nii.gz").exists() and not (out / "c02.json").exists()  # no half-done case
    assert not (out / "c02.error.json").exists()  # an interruption is not the case's failure
    assert _hidden(out) == []
    monkeypatch.undo()
    again = api.predict(input=tmp_path / "in", output=out, resume=True, **DEMO)
    assert _statuses(again) == {"c00": "skipped", "c01": "skipped", "c02": "done", "c03": "done"}


def _wait_for_done(out: Path, count: int, proc: subprocess.Popen, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in out.glob("c*.json") if not p.name.endswith((".error.json", ".stats.json"))]
        if len(done) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} finished case(s) before the signal; exit {proc.poll()}")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_batch_ends_the_run_cleanly(tmp_path: Path, signum: int, code: int) -> None:
    names = _cases(tmp_path / "in", 16)
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "-i", str(tmp_path / "in"), "-o", str(out), "--statistics"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_done(out, 1, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    name = signal.Signals(signum).name
    assert "Traceback" not in stderr
    assert f"error: interrupted by {name}; finished cases are kept" in " ".join(stderr.split())
    [record] = _records(out)
    assert record["status"] == "aborted" and record["aborted"] == f"interrupted by {name}"
    finished = [c["case"] for c in record["cases"] if c["status"] == "done"]
    assert 1 <= len(finished) < len(names)
    assert (out / "index.html").is_file() and all(n in (out / "index.html").read_text() for n in finished)
    assert _hidden(out) == []
    states = {n: case_state(out, n)[0] for n in names}
    assert {n for n, s in states.items() if s == "done"} == set(finished)
    assert "failed" not in states.values()
    again = api.predict(input=tmp_path / "in", output=out, resume=True, statistics=True, **DEMO)
    assert {n for n, s in _statuses(again).items() if s == "skipped"} == set(finished)
    assert {n: case_state(out, n)[0] for n in names} == {n: "done" for n in names}


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_to_a_multi_process_run_reaches_its_workers(tmp_path: Path) -> None:
    import psutil

    names = _cases(tmp_path / "in", 16)
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "-i", str(tmp_path / "in"), "-o", str(out), "--workers", "2"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_done(out, 1, proc)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "interrupted by SIGTERM" in stderr
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []
    records = _records(out)
    assert len(records) == 2 and {r["status"] for r in records} <= {"aborted", "completed"}
    assert any(r["aborted"] == "interrupted by SIGTERM" for r in records)
    assert (out / "index.html").is_file() and _hidden(out) == []
    again = api.predict(input=tmp_path / "in", output=out, resume=True, **DEMO)
    assert {n: case_state(out, n)[0] for n in names} == {n: "done" for n in names}
    assert "skipped" in _statuses(again).values()
