"""The run record: contents, one file per shard and run, and merging records into case statuses."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from autoorgan import __version__
from autoorgan.batch.job import BatchResult, CaseResult
from autoorgan.report.run_record import (
    RunRecorder,
    latest_case_entries,
    read_run_records,
    record_name,
    sha256_file,
)


def _results(*items: tuple[str, str, float, str | None]) -> BatchResult:
    return BatchResult([CaseResult(case, status, seconds, error) for case, status, seconds, error in items])


def test_record_contents(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint_final.pth"
    checkpoint.write_bytes(b"weights" * 1000)
    recorder = RunRecorder(part_id=1, num_parts=3, options={"task": "hip", "output": tmp_path / "out"},
                           checkpoints=[checkpoint, tmp_path / "gone.pth"], device={"device": "cpu"},
                           command=["autoorgan", "predict", "-i", "my cts/"])
    recorder(_results(("a", "done", 1.23456, None), ("b", "failed", 0.5, "b.nii.gz: file is empty"),
                      ("c", "skipped", 0.0, None)), tmp_path)
    assert recorder.written is not None and recorder.written.parent == tmp_path
    assert recorder.written.name.startswith("autoorgan_run-part1of3-") and recorder.written.suffix == ".json"
    data = json.loads(recorder.written.read_text())
    assert data["command"] == "autoorgan predict -i 'my cts/'"
    assert data["options"] == {"task": "hip", "output": str(tmp_path / "out")}
    assert (data["part_id"], data["num_parts"]) == (1, 3)
    assert data["versions"]["autoorgan"] == __version__ and data["versions"]["nnunetv2"].startswith("2.")
    assert data["versions"]["torch"] and data["versions"]["SimpleITK"]
    assert data["model"]["checkpoints"][0] == {"file": str(checkpoint),
                                               "sha256": hashlib.sha256(b"weights" * 1000).hexdigest()}
    assert data["model"]["checkpoints"][1]["sha256"] is None
    assert data["device"] == {"device": "cpu"}
    assert data["summary"] == {"done": 1, "skipped": 1, "failed": 1}
    assert data["cases"] == [
        {"case": "a", "status": "done", "error": None, "seconds": 1.235},
        {"case": "b", "status": "failed", "error": "b.nii.gz: file is empty", "seconds": 0.5},
        {"case": "c", "status": "skipped", "error": None, "seconds": 0.0},
    ]
    assert datetime.fromisoformat(data["started"]) <= datetime.fromisoformat(data["finished"])


def test_every_shard_and_run_gets_its_own_file(tmp_path: Path) -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert record_name(0, 2, started, "abc") == "autoorgan_run-part0of2-20260102T030405Z-abc.json"
    recorders = [RunRecorder(part_id=p, num_parts=2, options={}, started=started) for p in (0, 1, 0)]
    for r in recorders:
        r(_results(("x", "done", 1.0, None)), tmp_path)
    assert len({r.file_name for r in recorders}) == 3
    assert len(list(tmp_path.glob("autoorgan_run*.json"))) == 3


def test_latest_status_per_case_over_records(tmp_path: Path) -> None:
    def write(name: str, finished: str, cases: list[dict[str, object]]) -> None:
        (tmp_path / name).write_text(json.dumps({"finished": finished, "cases": cases}))

    write("autoorgan_run-part0of1-1.json", "2026-01-01T00:00:00+00:00", [
        {"case": "a", "status": "done", "seconds": 10.0}, {"case": "b", "status": "failed", "error": "x"}])
    write("autoorgan_run-part0of1-2.json", "2026-01-02T00:00:00+00:00", [
        {"case": "a", "status": "skipped", "seconds": 0.0}, {"case": "b", "status": "done", "seconds": 7.0}])
    (tmp_path / "autoorgan_run-broken.json").write_text("{not json")
    records = read_run_records(tmp_path)
    assert [r["_file"] for r in records] == ["autoorgan_run-part0of1-1.json", "autoorgan_run-part0of1-2.json"]
    latest = latest_case_entries(records)
    assert (latest["a"]["status"], latest["a"]["seconds"]) == ("done", 10.0)  # a later skip keeps the done run
    assert (latest["b"]["status"], latest["b"]["seconds"]) == ("done", 7.0)


def test_sha256_of_a_large_file_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=4096) == hashlib.sha256(data).hexdigest()


def test_overview_is_rebuilt_when_another_shard_finishes_meanwhile(tmp_path: Path) -> None:
    from autoorgan.registry.tasks import load_registry
    from autoorgan.steps.report import IndexPage, write_settled

    seen: list[int] = []

    def write() -> None:
        seen.append(len(read_run_records(tmp_path)))
        if len(seen) == 1:  # another shard writes its record while this one builds the page
            RunRecorder(part_id=1, num_parts=2, options={})(_results(("s2", "done", 2.0, None)), tmp_path)

    write_settled(tmp_path, write)
    assert seen == [0, 1]
    # the page of shard 0 lists shard 1's cases too
    mine = _results(("s1", "done", 1.0, None))
    RunRecorder(part_id=0, num_parts=2, options={})(mine, tmp_path)
    IndexPage(load_registry().get_task("hip"))(mine, tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "<td>s1<br>" in page and "<td>s2<br>" in page and "2 case(s): 2 complete, 0 failed." in page
