"""Several sliding-window tiles per network call on the CPU: the same logits and labels as
nnU-Net's one-tile loop, with the real fixture model (and with mirroring forced on, so that the
batched test-time augmentation is exercised too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoorgan import engine
from autoorgan.demo import DEMO_SPACING
from autoorgan.demo.phantom import make_phantom
from autoorgan.engine import cpu_runtime
from autoorgan.models.store import require_model
from autoorgan.registry.tasks import load_registry
from autoorgan.report.metrics import dice_per_label
from fixture_model import FIXTURE_STRUCTURES, FIXTURE_TASK

TINY_ARCH = {"features_per_stage": [8, 16, 32, 64]}
DEFAULT_ARCH = {"features_per_stage": [32, 64, 128, 256, 320, 320]}


def test_small_networks_get_one_tile_per_thread_and_large_ones_one(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert engine.tile_batch_size([64, 64, 64], TINY_ARCH, cpu) == 2
    assert engine.tile_batch_size([160, 128, 112], DEFAULT_ARCH, cpu) == 1
    assert engine.tile_batch_size([64, 64, 64], TINY_ARCH, torch.device("cuda")) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert engine.tile_batch_size([64, 64, 64], TINY_ARCH, cpu) == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert engine.tile_batch_size([64, 64, 64], TINY_ARCH, cpu) == 1


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("mirroring", [False, True], ids=["no-tta", "tta"])
def test_batched_tiles_give_nnunets_logits_and_labels(trained_models: Path, mirroring: bool) -> None:
    folder = require_model(load_registry()[FIXTURE_TASK], trained_models).folder
    # The pelvis with a wider margin than the fixture's training crops: 8 tiles, so the last
    # group of 3 is smaller than the others.
    image = make_phantom(5, spacing=DEMO_SPACING).crop_to(list(FIXTURE_STRUCTURES), 30.0).ct
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(reversed(image.GetSpacing()))
    results = {}
    for batch in (1, 3):
        segmenter = engine.Segmenter(folder, 0, torch.device("cpu"), tile_batch=batch)
        predictor = segmenter._predictor
        if mirroring:
            predictor.allowed_mirroring_axes = (0, 1, 2)
        assert predictor.tile_batch == batch
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        data, _, _ = preprocessor.run_case_npy(array[None], None, {"spacing": list(spacing)},
                                               predictor.plans_manager, predictor.configuration_manager,
                                               predictor.dataset_json)
        tiles = predictor._internal_get_sliding_window_slicers(data.shape[1:])
        assert len(tiles) > 3 and len(tiles) % 3 != 0, f"{len(tiles)} tiles"
        calls: list[int] = []  # tiles per network call
        hook = predictor.network.register_forward_pre_hook(
            lambda _m, args, calls=calls: calls.append(args[0].shape[0]))
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
        hook.remove()
        passes = 8 if mirroring else 1  # the network runs once per mirroring combination
        assert sum(calls) == len(tiles) * passes and max(calls) == batch
        results[batch] = (logits, segmenter.predict(array, spacing))
    (one_logits, one_labels), (three_logits, three_labels) = results[1], results[3]
    # The network's float32 outputs differ by ~1e-4 between batch sizes; nnU-Net sums the
    # Gaussian-weighted tiles (weights up to 10) in half precision, where one rounding step at
    # sums of a few hundred is 0.25 before the division by the weights: a few hundredths after.
    difference = (one_logits - three_logits).abs()
    assert float(difference.max()) <= 0.1
    assert torch.allclose(one_logits, three_logits, rtol=2e-3, atol=0.1)
    labels = load_registry()[FIXTURE_TASK].labels
    present = {v: n for v, n in labels.items() if (one_labels == v).any()}
    assert len(present) >= 2  # (mirroring a model trained without it may lose a structure)
    for name, score in ((present[v], s) for v, s in dice_per_label(one_labels, three_labels, present).items()):
        assert score >= 0.999, f"{name}: Dice {score:.4f} between batched and one-tile prediction"


@pytest.mark.e2e
def test_freed_memory_reuse_keeps_nnunets_logits_and_is_restored(trained_models: Path) -> None:
    """With freed memory reused (every CPU sliding window, where the C library is glibc) the
    logits are bit for bit those of nnU-Net's own predictor, which leaves malloc alone, and the
    setting is off again afterwards, on the whole-image and on the region path."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = require_model(load_registry()[FIXTURE_TASK], trained_models).folder
    image = make_phantom(6, spacing=DEMO_SPACING).crop_to(list(FIXTURE_STRUCTURES), 20.0).ct
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(reversed(image.GetSpacing()))
    segmenter = engine.Segmenter(folder, 0, torch.device("cpu"), tile_batch=1)
    ours = segmenter._predictor
    flags_seen: list[bool] = []

    def record(_module: object, _inputs: object) -> None:
        flags_seen.append(cpu_runtime.reusing_freed_memory())

    hook = ours.network.register_forward_pre_hook(record)
    preprocessor = ours.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case_npy(array[None], None, {"spacing": list(spacing)}, ours.plans_manager,
                                           ours.configuration_manager, ours.dataset_json)
    logits = ours.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    hook.remove()
    reuse = cpu_runtime.heap_reuse_supported()
    assert flags_seen and all(seen == reuse for seen in flags_seen), "the network ran without freed memory reused"
    assert not cpu_runtime.reusing_freed_memory()
    theirs = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                             perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                             allow_tqdm=False)
    theirs.manual_initialization(ours.network, ours.plans_manager, ours.configuration_manager,
                                 ours.list_of_parameters, ours.dataset_json, ours.trainer_name,
                                 ours.allowed_mirroring_axes)
    theirs.use_mirroring = ours.use_mirroring
    reference = theirs.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    assert torch.equal(logits, reference)
    flags_seen.clear()
    hook = ours.network.register_forward_pre_hook(record)
    segmenter.predict(array, spacing, roi=(slice(0, 4), slice(0, array.shape[1]), slice(0, array.shape[2])))
    hook.remove()
    assert flags_seen and all(seen == reuse for seen in flags_seen), "the region path ran without it"
    assert not cpu_runtime.reusing_freed_memory()
