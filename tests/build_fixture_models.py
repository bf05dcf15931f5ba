"""Build the test suite's fixture models: nnU-Net model zips in ``tests/data/models``.

    python tests/build_fixture_models.py                       # trains all six models (about 30 min of a 2-core CI run)
    python tests/build_fixture_models.py --export-from FOLDER  # exports models trained earlier by the same code
    python tests/build_fixture_models.py --export-from FOLDER --only hip_stored_lps.zip  # and keeps the other zips

The models are trained exactly as the session fixtures used to train them, by the functions they
share with the tests: :func:`fixture_model.train_fixture_model` (the ``hip`` fixture model of
``trained_models``: the demo recipe on twelve pelvis phantoms) and
:func:`multitask_fixtures.train_whole_body_models` (the ``skeleton``, ``hip`` and ``lower_limb``
models of ``whole_body_models``) and :func:`fixture_model.train_stored_orientation_model` (the
hip models of ``stored_orientation_models``, trained on phantoms all stored LPS, or PIL, fed as
stored, with nothing recording it: what ``autoorgan calibrate`` must find), all through
``autoorgan train`` on CPU. Each trained model is
checked against its recipe (plans override, epochs, iterations per epoch, learning rate, label
table) and written with ``autoorgan export-weights`` (nnU-Net's export format: dataset.json,
plans.json, dataset_fingerprint.json, checkpoint_final.pth, progress.png and the validation
summary; the checkpoint is nnU-Net's, unchanged). ``checksums.json`` records the SHA-256 of each
zip and how the zips were made; the fixtures refuse a zip whose SHA-256 differs.

``--export-from FOLDER`` skips the training and exports the models found in ``FOLDER/models``
(the fixture model) and ``FOLDER/whole_body/models`` (the multi-task models), the layout the
session fixtures used as their local model cache; the recipe checks still apply.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.models.store import find_model
from autoorgan.registry.tasks import load_registry
from fixture_model import (
    FIXTURE_ARCHIVES,
    FIXTURE_CHECKSUMS,
    FIXTURE_MODELS_DIR,
    FIXTURE_TASK,
    STORED_ORIENTATIONS,
    STORED_SCHEDULE,
    TINY_PLANS,
    TRAIN_ORIENTATIONS,
    TRAIN_SCHEDULE,
    TRAIN_SEEDS,
    schedule_options,
    sha256_of,
    train_fixture_model,
    train_stored_orientation_model,
)
from multitask_fixtures import SCHEDULE_BY_TASK, TRAINING_SEEDS, WHOLE_BODY_TASKS, train_whole_body_models


def _schedule(options: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("--epochs", "100", ...)`` → ``{"epochs": "100", ...}``."""
    return {options[i].lstrip("-").replace("-", "_"): options[i + 1] for i in range(0, len(options), 2)}


#: Each zip: the fixture that installs it, its task, the models folder (relative to the training
#: base) and the training recipe it must match.
ARCHIVES: dict[str, dict[str, Any]] = {
    FIXTURE_ARCHIVES["trained_models"][0]: {
        "fixture": "trained_models", "task": FIXTURE_TASK, "models": "models",
        "data": f"pelvis phantoms of seeds {list(TRAIN_SEEDS)} stored as {list(TRAIN_ORIENTATIONS)} "
                "(tests/fixture_model.py)",
        "options": schedule_options(TRAIN_SCHEDULE),
    },
    **{name: {
        "fixture": "whole_body_models", "task": task, "models": "whole_body/models",
        "data": f"lower-body phantoms of seeds {list(TRAINING_SEEDS)} with soft tissue above "
                "(tests/multitask_fixtures.py)",
        "options": [*SCHEDULE_BY_TASK[task], "--seed", "0"],
    } for name, task in zip(FIXTURE_ARCHIVES["whole_body_models"], WHOLE_BODY_TASKS, strict=True)},
    **{name: {
        "fixture": "stored_orientation_models", "task": FIXTURE_TASK, "models": f"stored_{codes}/models",
        "data": f"pelvis phantoms of seeds {list(TRAIN_SEEDS)} all stored as {codes} and fed as stored (task "
                "orientation native); the model's dataset.json keeps nnU-Net's fields only (tests/fixture_model.py)",
        "options": schedule_options(STORED_SCHEDULE),
    } for name, codes in STORED_ORIENTATIONS.items()},
}


def check_recipe(folder: Path, task_name: str, options: list[str]) -> dict[str, Any]:
    """Refuse a model folder not trained with the fixture recipe; returns facts for the checksum file."""
    task = load_registry().get_task(task_name)
    problems: list[str] = []
    config = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    for key in ("patch_size", "batch_size"):
        if config[key] != TINY_PLANS[key]:
            problems.append(f"plans {key} {config[key]} != {TINY_PLANS[key]}")
    for key, value in TINY_PLANS["architecture"]["arch_kwargs"].items():
        if config["architecture"]["arch_kwargs"].get(key) != value:
            problems.append(f"architecture {key} {config['architecture']['arch_kwargs'].get(key)} != {value}")
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    if {int(v): k for k, v in labels.items() if int(v)} != dict(task.labels):
        problems.append(f"labels {labels} differ from task {task_name}'s table")
    schedule = _schedule(options)
    fold = folder / task.fold_folder
    debug = json.loads((fold / "debug.json").read_text())
    for key, debug_key in (("epochs", "num_epochs"), ("iterations_per_epoch", "num_iterations_per_epoch"),
                           ("initial_lr", "initial_lr")):
        if float(debug[debug_key]) != float(schedule[key]):
            problems.append(f"{debug_key} {debug[debug_key]} != {schedule[key]}")
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    if checkpoint["current_epoch"] != int(schedule["epochs"]):
        problems.append(f"checkpoint_final.pth is of epoch {checkpoint['current_epoch']}, not {schedule['epochs']}")
    if problems:
        raise SystemExit(f"{folder} was not trained with the fixture recipe: " + "; ".join(problems))
    logs = sorted(fold.glob("training_log_*.txt"))
    return {"trainer": checkpoint["trainer_name"], "epochs": checkpoint["current_epoch"],
            "training_log": logs[-1].name if logs else None}


def export(task: str, models: Path, archive: Path) -> None:
    result = CliRunner().invoke(app, ["export-weights", "--task", task, "-o", str(archive), "--models-dir",
                                      str(models)])
    if result.exit_code != 0:
        raise SystemExit(f"autoorgan export-weights --task {task} failed (exit {result.exit_code}): "
                         f"{result.output}{result.exception!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=FIXTURE_MODELS_DIR, help="folder of the zips and checksums.json")
    parser.add_argument("--work", type=Path, default=None, help="training folder (default: a temporary one)")
    parser.add_argument("--export-from", type=Path, default=None, metavar="FOLDER",
                        help="export the models trained earlier in FOLDER/models, FOLDER/whole_body/models and "
                             "FOLDER/stored_<codes>/models")
    parser.add_argument("--only", action="append", choices=sorted(ARCHIVES), default=None,
                        help="with --export-from: export only these zips and keep the others' entries")
    args = parser.parse_args(argv)
    if args.only and args.export_from is None:
        parser.error("--only needs --export-from")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fixture_models_") as scratch:
        base = args.export_from or args.work or Path(scratch)
        if args.export_from is None:
            print(f"training the fixture model in {base / 'models'}", flush=True)
            train_fixture_model(base)
            print(f"training the multi-task models in {base / 'whole_body' / 'models'}", flush=True)
            train_whole_body_models(base / "whole_body")
            for codes in STORED_ORIENTATIONS.values():
                print(f"training the hip model on phantoms stored {codes} in {base / f'stored_{codes}'}", flush=True)
                train_stored_orientation_model(base / f"stored_{codes}", codes)
        args.output.mkdir(parents=True, exist_ok=True)
        entries: dict[str, Any] = {}
        previous = args.output / FIXTURE_CHECKSUMS.name
        if args.only and previous.is_file():
            entries = {name: entry for name, entry in json.loads(previous.read_text())["archives"].items()
                       if name not in args.only}
        for name, spec in ARCHIVES.items():
            if args.only and name not in args.only:
                continue
            models = base / spec["models"]
            location = find_model(load_registry().get_task(spec["task"]), models)
            if location is None:
                raise SystemExit(f"no model of task {spec['task']} in {models}")
            facts = check_recipe(location.folder, spec["task"], spec["options"])
            archive = args.output / name
            export(spec["task"], models, archive)
            entries[name] = {"sha256": sha256_of(archive), "bytes": archive.stat().st_size,
                             "fixture": spec["fixture"], "task": spec["task"],
                             "training": {"command": "autoorgan train --device cpu --plans-override TINY_PLANS "
                                                     "--augmentation-workers 0 " + " ".join(spec["options"]),
                                          "data": spec["data"], **facts}}
            print(f"{archive}: {entries[name]['bytes']} bytes, sha256 {entries[name]['sha256']}", flush=True)

    how = ("trained by this script (autoorgan train, CPU)" if args.export_from is None else
           f"exported with --export-from {args.export_from}: models trained earlier by the same training "
           "functions (fixture_model.train_fixture_model, multitask_fixtures.train_whole_body_models, "
           "fixture_model.train_stored_orientation_model)")
    versions = {"python": platform.python_version()}
    for package in ("autoorgan", "nnunetv2", "torch", "SimpleITK", "numpy"):
        versions[package] = metadata.version(package)
    table = {
        "about": "nnU-Net model zips of the test suite's fixture models, written by autoorgan export-weights; "
                 "the session fixtures install them with autoorgan install-weights after checking sha256.",
        "made_by": "python tests/build_fixture_models.py"
                   + ("" if args.export_from is None else f" --export-from {args.export_from}"),
        "how": how,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions,
        "archives": entries,
    }
    target = args.output / FIXTURE_CHECKSUMS.name
    if args.only and target.is_file():  # the other zips keep how they were made; this export is added
        earlier = json.loads(target.read_text(encoding="utf-8"))
        update = {key: table[key] for key in ("made_by", "how", "date", "versions")}
        update["made_by"] += " " + " ".join(f"--only {name}" for name in args.only)
        table = {**earlier, "archives": entries, "updates": [*earlier.get("updates", []), update]}
    target.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {target} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
