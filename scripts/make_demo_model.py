"""Build the demo model shipped in ``src/autoorgan/demo/models`` from synthetic phantoms only.

    python scripts/make_demo_model.py            # about 5-8 minutes on 2 CPU cores

Trains the ``demo_pelvis`` task (hip_left, hip_right, sacrum) with autoorgan's own training path
(nnU-Net planning, preprocessing and ``nnUNetTrainerNoMirroring``) with the recipe fixed in
:mod:`autoorgan.demo` — the same recipe the test suite's fixture model uses: twelve phantoms
(``TRAINING_SEEDS``) stored in mixed orientations (``TRAINING_ORIENTATIONS``), a tiny architecture
(``DEMO_PLANS``) and the ``DEMO_SCHEDULE`` (45 epochs of 25 iterations, learning rate 0.1, seed 0).
Random generators are seeded and augmentation runs in-process, so a rerun on the same software
gives the same kind of model.

The shipped checkpoint keeps only what prediction needs (the optimizer state is dropped). Before
it replaces the installed demo model, the fresh model runs the demo (:func:`autoorgan.demo.run_demo`
on its own phantom) and must reach Dice >= ``DEMO_MIN_DICE`` on every structure; otherwise the
script stops with exit code 1 and leaves the installed model as it was. After installing, it
packs the demo model into a byte-reproducible release zip and records its checksum in
``configs/model_checksums.json`` (see :mod:`autoorgan.models.releases`). The result is a demo model: it
is not for real CT.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from autoorgan.demo import (
    DEMO_MIN_DICE,
    DEMO_NOTE,
    DEMO_TASK,
    demo_models_dir,
    demo_shortfalls,
    demo_tasks_file,
    run_demo,
    train_with_recipe,
)
from autoorgan.io.writing import write_json
from autoorgan.models.releases import default_table_path, release_entry, write_release_zip
from autoorgan.registry.tasks import load_registry

log = logging.getLogger("make_demo_model")
#: What prediction needs of an nnU-Net checkpoint.
KEEP_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")
#: File name of the demo model's release zip (its entry in the checksum table).
RELEASE_NAME = "autoorgan_demo_pelvis_model.zip"


def ship(model_folder: Path, target_models: Path) -> Path:
    """Copy dataset.json, plans.json and a slimmed fold_0 checkpoint into a (new) models folder."""
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    dataset_folder = f"Dataset{task.dataset_id:03d}_DemoPelvis"
    target = target_models / dataset_folder / task.model_subfolder
    (target / "fold_0").mkdir(parents=True)
    dataset = json.loads((model_folder / "dataset.json").read_text(encoding="utf-8"))
    dataset["description"] = DEMO_NOTE
    dataset["autoorgan"] = {"task": DEMO_TASK, "orientation": task.orientation}
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    plans = json.loads((model_folder / "plans.json").read_text(encoding="utf-8"))
    plans["dataset_name"] = dataset_folder
    (target / "plans.json").write_text(json.dumps(plans, indent=2) + "\n", encoding="utf-8")
    checkpoint = torch.load(model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    torch.save({k: checkpoint[k] for k in KEEP_KEYS if k in checkpoint}, target / "fold_0" / "checkpoint_final.pth")
    return target


def install(staged: Path, output: Path) -> None:
    """Replace the models folder ``output`` with the checked ``staged`` one."""
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(staged, output)


def record_release(models: Path, releases_dir: Path, table_path: Path) -> dict[str, str]:
    """Pack the installed demo model into its release zip and record its checksum in the table.

    Only the package's own demo model is recorded (a model written elsewhere is not a release).
    """
    archive = write_release_zip(models, releases_dir / RELEASE_NAME)
    entry = release_entry(archive, task=DEMO_TASK, version=time.strftime("%Y-%m-%d"),
                          note="demo model (synthetic phantoms only, not for real CT); rebuild the zip "
                               "from the shipped files with autoorgan.models.releases.write_release_zip")
    table = json.loads(table_path.read_text(encoding="utf-8")) if table_path.is_file() else {"releases": []}
    table["releases"] = [r for r in table.get("releases", []) if r.get("file") != RELEASE_NAME] + [entry]
    write_json(table, table_path)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=demo_models_dir(),
                        help="models folder to (re)write (default: the package's demo/models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep-work", type=Path, default=None, help="keep the training folders here")
    parser.add_argument("--release-dir", type=Path, default=None,
                        help="also keep the release zip here (its checksum is recorded either way)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("autoorgan.engine").setLevel(logging.INFO)
    work = args.keep_work or Path(tempfile.mkdtemp(prefix="autoorgan-demo-"))
    start = time.perf_counter()
    try:
        model_folder = train_with_recipe(work, device=args.device)
        trained = time.perf_counter() - start
        staged = work / "ship"
        ship(model_folder, staged)
        demo = run_demo(output=work / "evaluation", device=args.device, models_dir=staged)
        log.info("fresh demo model on the demo phantom: Dice %s", demo.dice)
        short = demo_shortfalls(demo.dice)
        if short:
            log.error("refusing to install the demo model: Dice below %.2f for %s (all: %s)",
                      DEMO_MIN_DICE, short, demo.dice)
            return 1
        install(staged, args.output)
        releases_dir = args.release_dir or work / "release"
        shipped = args.output.resolve() == demo_models_dir().resolve()
        entry = (record_release(args.output, releases_dir, default_table_path()) if shipped
                 else release_entry(write_release_zip(args.output, releases_dir / RELEASE_NAME),
                                    task=DEMO_TASK, version="unrecorded"))
    finally:
        if args.keep_work is None:
            shutil.rmtree(work, ignore_errors=True)
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    log.info("demo model in %s: %.2f MB, trained in %.0f s, Dice %s; release %s sha256 %s",
             args.output, size / 1e6, trained, demo.dice, entry["file"], entry["sha256"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
