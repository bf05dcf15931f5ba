"""Build the demo model shipped in ``src/autoorgan/demo/models`` from synthetic phantoms only.

    python scripts/make_demo_model.py            # about 2-3 minutes on 2 CPU cores

Trains the ``demo_pelvis`` task (hip_left, hip_right, sacrum) with autoorgan's own training path
(nnU-Net planning, preprocessing and ``nnUNetTrainerNoMirroring``) on eight phantoms stored in
mixed orientations, with a tiny architecture and a short schedule, all fixed in
:mod:`autoorgan.demo`. Random generators are seeded and augmentation runs in-process, so a rerun
on the same software gives the same kind of model. The shipped checkpoint keeps only what
prediction needs (the optimizer state is dropped). The result is a demo model: it is not for real CT.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from autoorgan import api
from autoorgan.demo import (
    DEMO_NOTE,
    DEMO_PLANS,
    DEMO_SCHEDULE,
    DEMO_TASK,
    TRAINING_ORIENTATIONS,
    TRAINING_SEEDS,
    demo_models_dir,
    demo_phantom,
    demo_tasks_file,
)
from autoorgan.phantom import reorient
from autoorgan.tasks import load_registry

ROOT = Path(__file__).resolve().parents[1]
#: What prediction needs of an nnU-Net checkpoint.
KEEP_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")


def write_training_data(folder: Path) -> None:
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i, (seed, codes) in enumerate(zip(TRAINING_SEEDS, TRAINING_ORIENTATIONS, strict=True)):
        phantom = demo_phantom(seed)
        sitk.WriteImage(reorient(phantom.ct, codes), str(folder / "images" / f"phantom_{i}.nii.gz"))
        sitk.WriteImage(reorient(phantom.labels_for(task.labels), codes), str(folder / "labels" / f"phantom_{i}.nii.gz"))


def ship(model_folder: Path, target_models: Path) -> Path:
    """Copy dataset.json, plans.json and a slimmed fold_0 checkpoint into the package."""
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    dataset_folder = f"Dataset{task.dataset_id:03d}_DemoPelvis"
    target = target_models / dataset_folder / task.model_subfolder
    if target_models.exists():
        shutil.rmtree(target_models)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=demo_models_dir(),
                        help="models folder to (re)write (default: the package's demo/models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep-work", type=Path, default=None, help="keep the training folders here")
    parser.add_argument("--from-trained", type=Path, default=None,
                        help="ship an already trained model folder ({trainer}__{plans}__{configuration}) of this "
                             "recipe instead of training, e.g. the test suite's fixture model, which is trained "
                             "on the same phantoms with the same plans and schedule")
    args = parser.parse_args()
    if args.from_trained is not None:
        target = ship(args.from_trained, args.output)
        size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
        print(f"demo model in {target}: {size / 1e6:.2f} MB (shipped from {args.from_trained})")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("autoorgan.engine").setLevel(logging.INFO)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    work = args.keep_work or Path(tempfile.mkdtemp(prefix="autoorgan-demo-"))
    start = time.perf_counter()
    try:
        write_training_data(work / "data")
        model_folder = api.train(task=DEMO_TASK, tasks_file=demo_tasks_file(), data=work / "data",
                                 models_dir=work / "models", work_dir=work / "work", device=args.device,
                                 plans_override=DEMO_PLANS, augmentation_workers=0, **DEMO_SCHEDULE)
        trained = time.perf_counter() - start
        target = ship(model_folder, args.output)
    finally:
        if args.keep_work is None:
            shutil.rmtree(work, ignore_errors=True)
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"demo model in {target}: {size / 1e6:.2f} MB, trained in {trained:.0f} s")


if __name__ == "__main__":
    main()
