"""Hostile names (issue 17, items 1, 3 and the task-file part of 12).

* Structure names of a task file become file names (``--split``): names that leave the output
  folder or are not safe file names are refused when the file is loaded (one line, exit 2), and
  every per-case and per-structure output path is built so it cannot leave the output folder.
* Names reach ``statistics.csv`` and the terminal: formula-like cells are neutralised, control
  characters and Rich markup are printed escaped.
* A broken task file (not UTF-8, not TOML/JSON, wrong types) is one line and exit 2, never a
  traceback.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from rich.console import Console
from typer.testing import CliRunner

from autoorgan.batch.job import CaseContext
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.cli.app import app
from autoorgan.cli.text import SafeRichHandler, terminal_safe
from autoorgan.errors import TaskError
from autoorgan.io.cases import Case
from autoorgan.io.image import Geometry, Volume
from autoorgan.io.safe_paths import UnsafePathError, path_inside, portable_name_problem
from autoorgan.registry.tasks import Task, load_registry
from autoorgan.report.preview import render_preview
from autoorgan.report.statistics import spreadsheet_safe
from autoorgan.steps.report import statistics_csv
from autoorgan.steps.split import SplitMasksStep

runner = CliRunner()

#: Label names that must be refused when a task file is loaded (the issue's list and more).
HOSTILE_LABELS = [
    "../../x", "/abs/x", "a/b", "..", ".", "x\x00y", "a\\b", "x\x1b[31mred", "\u202eevil", "a\nb", "tab\there",
    ".hidden", "CON", "nul.txt", "a:b", "what?", 'say"hi"', "a|b", "x" * 129, "\x85next", "a\u2028b", "\ud800",
    "", "   ",
]
#: Names that look odd but are fine file names, and are kept.
ACCEPTED_LABELS = ["liver", "Left Kidney", "vertebrae_C1", "a-b", "=HYPERLINK(A1)", "+1", "@x", "-5", "[bold]x",
                   "Wirbel_Ü", "a$b$", "x." , "ribs (left)"]


def _tasks_file(folder: Path, labels: dict[str, object], suffix: str = ".json", **fields: object) -> Path:
    path = folder / f"hostile tasks{suffix}"
    task = {"dataset_id": 990, "labels": labels, **fields}
    path.write_text(json.dumps({"tasks": {"custom": task}}), encoding="utf-8")
    return path


def _one_line_exit_2(args: list[str], *must_contain: str) -> str:
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in text and "\x1b" not in text and "\x00" not in text
    for part in must_contain:
        assert part in text, text
    return text


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------
# item 1: structure names at load time


@pytest.mark.parametrize("name", HOSTILE_LABELS, ids=[ascii(n)[:20] for n in HOSTILE_LABELS])
def test_hostile_label_names_are_refused_at_load(tmp_path: Path, name: str) -> None:
    path = _tasks_file(tmp_path, {"1": "fine", "2": name})
    with pytest.raises(TaskError) as caught:
        load_registry(path)
    message = str(caught.value)
    assert str(path) in message and "task 'custom'" in message and "label 2" in message
    assert "\n" not in message and "\x00" not in message and "\x1b" not in message


@pytest.mark.parametrize("name", ACCEPTED_LABELS)
def test_ordinary_odd_label_names_are_kept(tmp_path: Path, name: str) -> None:
    assert load_registry(_tasks_file(tmp_path, {"1": name})).get_task("custom").labels[1] == name.strip()


def test_builtin_and_demo_tables_pass_the_name_rule() -> None:
    from autoorgan.demo import demo_tasks_file
    from autoorgan.registry.whole_body import whole_body_table

    names = [n for t in load_registry(demo_tasks_file()).values() for n in t.labels.values()]
    names += list(whole_body_table().labels.values())
    assert len(names) > 200 and all(portable_name_problem(n) is None for n in names)


def test_toml_label_with_nul_and_traversal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[tasks.custom]\ndataset_id = 990\n[tasks.custom.labels]\n1 = "x\\u0000y"\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"label 1 cannot be called 'x\\x00y'"):
        load_registry(path)
    path.write_text('[tasks.custom]\ndataset_id = 990\n[tasks.custom.labels]\n1 = "../../x"\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"label 1 cannot be called '\.\./\.\./x': it contains '/'"):
        load_registry(path)


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", "x\x00y"])
def test_split_with_hostile_label_is_exit_2_and_writes_nothing(tmp_path: Path, name: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from autoorgan.demo import DEMO_TASK, demo_models_dir

    work = tmp_path / "deep" / "er"
    (work / "in").mkdir(parents=True)
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(work / "in" / "c1.nii.gz"))
    source = json.loads((demo_models_dir().parent / "tasks.json").read_text())
    source["tasks"][DEMO_TASK]["labels"]["2"] = name
    tasks_file = work / "tasks.json"
    tasks_file.write_text(json.dumps(source), encoding="utf-8")
    monkeypatch.chdir(work / "in")
    before = _files(tmp_path)
    _one_line_exit_2(["predict", "--task", DEMO_TASK, "--tasks-file", str(tasks_file), "--models-dir",
                      str(demo_models_dir()), "-i", str(work / "in"), "-o", str(work / "out"), "--split",
                      "--device", "cpu", "--quiet"], str(tasks_file), "label 2 cannot be called")
    assert _files(tmp_path) - before <= {work / "out"}  # at most the (empty) output folder
    assert not (work / "out").exists() or not any((work / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# item 1: output paths built inside the output folder (defence in depth)


@pytest.mark.parametrize("part", ["..", ".", "", "a/b", "/abs", "x\x00y", "../../x"])
def test_path_inside_refuses_parts_that_are_not_one_component(tmp_path: Path, part: str) -> None:
    with pytest.raises(UnsafePathError, match="cannot be part of an output path"):
        path_inside(tmp_path, "case", part)


def test_path_inside_refuses_a_folder_that_links_outside(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "case").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        path_inside(out, "case", "liver.nii.gz")
    assert path_inside(out, "case.json") == out / "case.json"  # the final name itself is not followed
    assert path_inside(out, "odd name ü;$x", "liver.nii.gz") == out / "odd name ü;$x" / "liver.nii.gz"


def _context(out: Path, labels: dict[int, str], case_id: str = "c1") -> CaseContext:
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[0], array[1] = 1, 2
    geometry = Geometry(size=(4, 5, 6), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    task = Task(name="t", dataset_id=5, labels=labels)  # built in Python: no load-time check
    return CaseContext(case=Case(case_id, out / f"{case_id}.nii.gz"), volume=Volume(np.zeros((4, 5, 6)), geometry),
                       task=task, outputs=CaseOutputs(out, case_id), labels=array, sidecar={})


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs_escaped", "sub/dir", "x/../../../y", "a\x00b"])
def test_split_step_never_writes_outside_even_for_unchecked_names(tmp_path: Path, name: str) -> None:
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    before = _files(tmp_path)
    with pytest.raises(UnsafePathError):
        SplitMasksStep()(_context(out, {1: "fine", 2: name}))
    assert _files(tmp_path) == before  # checked before anything, even the fine mask, is written
    assert not Path("/tmp/abs_escaped.nii.gz").exists()


def test_split_step_refuses_a_case_id_that_is_a_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafePathError):
        SplitMasksStep()(_context(out, {1: "liver"}, case_id="../c1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(out.iterdir())


def test_task_maps_step_builds_paths_inside_the_output_folder(tmp_path: Path) -> None:
    from autoorgan.steps.cascade import TaskMapsStep

    out = tmp_path / "out"
    out.mkdir()
    ctx = _context(out, {1: "liver"}, case_id="../c1")
    ctx.artifacts["task_maps"] = {"ribs": ctx.labels}
    with pytest.raises(UnsafePathError):
        TaskMapsStep({})(ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(out.iterdir())
    good = _context(out, {1: "liver"})
    good.artifacts["task_maps"] = {"ribs": good.labels}
    TaskMapsStep({})(good)
    assert good.sidecar["task_maps"] == {"ribs": "c1/ribs.nii.gz"} and (out / "c1" / "ribs.nii.gz").is_file()


def test_split_step_writes_ordinary_names(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {1: "=HYPERLINK(A1)", 2: "Left Kidney"})
    SplitMasksStep()(ctx)
    assert sorted(p.name for p in (tmp_path / "c1").iterdir()) == ["=HYPERLINK(A1).nii.gz", "Left Kidney.nii.gz"]
    assert ctx.sidecar["structure_masks"]["Left Kidney"] == "c1/Left Kidney.nii.gz"


# ---------------------------------------------------------------------------------------------
# item 3: spreadsheet formulas and terminal escapes


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "\uff1dx"])
def test_formula_cells_get_a_leading_quote(text: str) -> None:
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("value", [-5, -1.5, 0, "liver", "", "a=b", "'=x"])
def test_numbers_and_plain_text_are_left_alone(value: object) -> None:
    assert spreadsheet_safe(value) == value


def test_statistics_csv_neutralises_every_text_cell() -> None:
    entry = {"label": 1, "structure": "=HYPERLINK(\"http://evil\",\"x\")", "voxels": 0, "volume_ml": 0.0,
             "intensity_mean": -5.0, "intensity_std": 0.0, "intensity_median": 0.0, "intensity_min": -1000.0,
             "intensity_max": 0.0, "centroid_mm": None, "bbox_index": None, "bbox_mm": None, "touches_border": False}
    document = {"structures": {"x": entry}}
    text = statistics_csv({"@case": document, "a\rb,c": document})
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["case"] for r in rows] == ["'@case", "a\rb,c"]
    assert all(r["structure"] == "'=HYPERLINK(\"http://evil\",\"x\")" for r in rows)
    assert rows[0]["intensity_min"] == "-1000.0"  # numbers stay numbers
    assert text.count("\n") == 3  # the header and two rows: the \r stays inside its quoted cell


@pytest.mark.parametrize("text", ["a\x1b[2Jb", "x\x9b31m", "\x07bell", "\u202eevil", "line\nbreak", "\ud800"])
def test_terminal_safe_shows_control_characters_as_escapes(text: str) -> None:
    safe = terminal_safe(text)
    assert safe.isprintable() and "\\" in safe


def test_terminal_safe_escapes_rich_markup() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, emoji=False)
    console.print(f"[red]{terminal_safe('[bold]x[/] [link=http://e]y')}[/]", highlight=False)
    assert buffer.getvalue().strip() == "[bold]x[/] [link=http://e]y"


def test_log_messages_are_escaped_one_line() -> None:
    buffer = io.StringIO()
    handler = SafeRichHandler(console=Console(file=buffer, width=300), show_path=False, show_time=False,
                              markup=False)
    logger = logging.getLogger("autoorgan.test_hostile_names")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("%s: failed", "case\x1b]0;pwned\x07\nfake line")
    finally:
        logger.removeHandler(handler)
    text = buffer.getvalue()
    assert "\x1b" not in text and "\x07" not in text and len(text.strip().splitlines()) == 1
    assert "case\\x1b]0;pwned\\x07\\nfake line: failed" in text


def test_preview_draws_dollar_signs_as_written(tmp_path: Path) -> None:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    geometry = Geometry(size=(8, 8, 8), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    target = render_preview(np.zeros((8, 8, 8)), labels, geometry, {1: "a$\\frac$b"}, tmp_path / "p.png",
                            title="case $^$")
    assert target.stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# item 12: broken task files


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _task(labels: object = None, **fields: object) -> str:
    return json.dumps({"tasks": {"custom": {"dataset_id": 990, "labels": labels or {"1": "a"}, **fields}}})


BROKEN_FILES = {
    "latin1.json": ('{"tasks": {"x": {"dataset_id": 5, "labels": {"1": "Wirbelkörper"}}}}'.encode("latin-1"),
                    "is not UTF-8 text (byte 0xf6"),
    "bom16.toml": ('[tasks.x]\ndataset_id = 5\n'.encode("utf-16"), "is not UTF-8"),
    "bad.toml": ("[tasks.x\n", "is not valid TOML"),
    "bad.json": ('{"tasks": ', "is not valid JSON"),
    "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "top_list.json": ("[1, 2]", "must hold a 'tasks' table"),
    "top_string.json": ('"tasks"', "must hold a 'tasks' table"),
    "tasks_list.json": ('{"tasks": [1]}', "must hold a 'tasks' table"),
    "defaults_list.json": ('{"defaults": ["trainer"], "tasks": {}}', "'defaults' must be a table"),
    "task_list.json": ('{"tasks": {"x": [1]}}', "task 'x' must be a table"),
    "labels_list.json": (_task(["a", "b"]), "'labels' must be a non-empty table"),
    "labels_key.json": (_task({"one": "a"}), "must be an integer"),
    "labels_name_int.json": (_task({"1": 5}), "needs a non-empty name"),
    "labels_name_list.json": (_task({"1": ["a"]}), "needs a non-empty name"),
    "labels_dup_name.json": (_task({"1": "Liver", "2": "liver"}), "is used by labels 1 and 2"),
    "labels_zero.json": (_task({"0": "a"}), "label 0 is the background"),
    "labels_negative.json": (_task({"-1": "a"}), "must be an integer"),
    "labels_huge.json": (_task({"70000": "a"}), "outside 1..65535"),
    "labels_enormous.json": (_task({"9" * 5000: "a"}), "must be an integer"),
    "labels_nul.json": (_task({"1": "x\x00y"}), "control character '\\x00'"),
    "subdivisions_list.json": (_task(subdivisions=["ribs"]), "'subdivisions' of task 'custom' must be a table"),
    "subdivisions_key.json": (_task(subdivisions={"x": "ribs"}), "must be an integer"),
    "subdivisions_unknown.json": (_task(subdivisions={"7": "ribs"}), "is not one of its labels"),
    "subdivisions_value.json": (_task(subdivisions={"1": 3}), "must name a task"),
    "subdivisions_path.json": (_task(subdivisions={"1": "../ribs"}), "must name a task"),
    "description.json": (_task(description=["x"]), "description of task 'custom' must be text"),
    "trainer_path.json": (_task(trainer="../../evil"), "trainer of task 'custom' must be a plain name"),
    "trainer_nul.json": (_task(trainer="a\x00b"), "trainer of task 'custom' must be a plain name"),
    "fold_float.json": (_task(fold=1.5), "must be an integer"),
    "dataset_nan.toml": ("[tasks.x]\ndataset_id = nan\n[tasks.x.labels]\n1 = 'a'\n", "must be an integer"),
    "dup_key.json": ('{"tasks": {"x": {}, "x": {}}}', "key 'x' is given twice"),
    "task_name.json": ('{"tasks": {"a/b": {"dataset_id": 5, "labels": {"1": "a"}}}}', "is not a usable task name"),
    "task_name_esc.json": ('{"tasks": {"\\u001b[2J": {}}}', "is not a usable task name"),
}


@pytest.mark.parametrize("name", list(BROKEN_FILES))
def test_broken_task_file_is_one_line_exit_2_naming_the_file(tmp_path: Path, name: str) -> None:
    content, expected = BROKEN_FILES[name]
    path = _write(tmp_path / name, content)
    with pytest.raises(TaskError) as caught:
        load_registry(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    _one_line_exit_2(["tasks", "--tasks-file", str(path)], str(path), expected)


def test_task_file_that_is_not_a_regular_file_or_too_large(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(TaskError, match="is not a regular file"):  # would block forever if opened
        load_registry(fifo)
    big = _write(tmp_path / "big.json", " " * (5 * 2**20) + "{}")
    with pytest.raises(TaskError, match="larger than 4 MiB"):
        load_registry(big)


def test_cli_error_lines_escape_control_characters_in_the_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "ta\x1b[31msks[bold].json", "[1]")
    text = _one_line_exit_2(["tasks", "--tasks-file", str(path)], "must hold a 'tasks' table")
    assert "ta\\x1b[31msks[bold].json" in text


# ---------------------------------------------------------------------------------------------
# items 1 + 3 end to end with the shipped demo model


@pytest.mark.e2e
def test_hostile_case_and_label_names_end_to_end(tmp_path: Path) -> None:
    from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom

    source = json.loads((demo_models_dir().parent / "tasks.json").read_text())
    source["tasks"][DEMO_TASK]["labels"] = {"1": "=HYPERLINK(A1)", "2": "@SUM(1)", "3": "[bold]sacrum"}
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps(source), encoding="utf-8")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    ct = demo_phantom(3).ct
    escaped_name = "case\x1b[31m\x1b]0;title\x07red"
    sitk.WriteImage(ct, str(inp / f"{escaped_name}.nii.gz"))
    sitk.WriteImage(ct, str(inp / "-2+3.nii.gz"))
    (inp / "bad\x1b[2J.nii.gz").write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", "--task", DEMO_TASK, "--tasks-file", str(tasks_file), "--models-dir",
                                 str(demo_models_dir()), "-i", str(inp), "-o", str(out), "--device", "cpu",
                                 "--statistics", "--split"], terminal_width=300)
    assert result.exit_code == 1, result.output  # the bad case failed, the others are done
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "bad\\x1b[2J.nii.gz" in result.output and "2 done" in result.output
    rows = list(csv.DictReader((out / "statistics.csv").open(newline="", encoding="utf-8")))
    assert {r["case"] for r in rows} == {escaped_name, "'-2+3"}
    assert {r["structure"] for r in rows} == {"'=HYPERLINK(A1)", "'@SUM(1)", "[bold]sacrum"}
    masks = sorted(p.name for p in (out / "-2+3").iterdir())
    assert masks == ["=HYPERLINK(A1).nii.gz", "@SUM(1).nii.gz", "[bold]sacrum.nii.gz"]
    assert {p.parent for p in out.rglob("*.nii.gz")} <= {out, out / "-2+3", out / escaped_name}
