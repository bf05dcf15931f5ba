"""The speed helpers on hand-built arrays: streamed torch export against nnU-Net's own resampling,
the body box, and the speed presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoorgan.engine.body import body_box, box_fraction
from autoorgan.engine.fast_export import (
    export_labels,
    logits_to_labels,
    region_source_box,
    sample_positions,
    source_box,
)
from autoorgan.errors import InputError
from autoorgan.options import DEFAULT_STEP, resolve_speed


def _nnunet_labels(logits: torch.Tensor, out_shape: tuple[int, ...], current: list[float],
                   new: list[float]) -> np.ndarray:
    """nnU-Net's default probability resampling followed by its argmax."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    resampled = resample_data_or_seg_to_shape(logits, out_shape, current, new, is_seg=False, order=1, order_z=0,
                                              force_separate_z=None)
    return torch.as_tensor(resampled).argmax(0).numpy().astype(np.uint8)


def _random_logits(shape: tuple[int, ...], classes: int = 4, seed: int = 0) -> torch.Tensor:
    """Smooth random logits (blobs, as a network gives) in float16, nnU-Net's logits dtype."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=(1, classes, *[max(2, s // 4) for s in shape])).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0]
    return (smooth * 5).half()


@pytest.mark.parametrize(("in_shape", "out_shape", "current", "new", "nearest_axis"), [
    ((20, 30, 26), (41, 57, 49), [1.5, 1.5, 1.5], [0.73, 0.79, 0.8], None),   # upsampling to a fine grid
    ((40, 36, 30), (20, 25, 17), [1.5, 1.5, 1.5], [3.0, 2.16, 2.65], None),   # downsampling
    ((12, 30, 30), (7, 52, 44), [3.0, 1.5, 1.5], [5.14, 0.87, 1.02], 0),      # anisotropic: nearest along z
])
def test_torch_export_matches_nnunet_resampling(in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                                                current: list[float], new: list[float],
                                                nearest_axis: int | None) -> None:
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    separate, axis = determine_do_sep_z_and_axis(None, current, new)
    assert (int(axis) if separate else None) == nearest_axis
    logits = _random_logits(in_shape)
    expected = _nnunet_labels(logits, out_shape, current, new)
    ours = logits_to_labels(logits, out_shape, nearest_axis, slab_voxels=5_000)
    assert ours.shape == out_shape and ours.dtype == np.uint8
    assert set(np.unique(expected)) == {0, 1, 2, 3}
    assert (ours != expected).mean() < 1e-4


@pytest.mark.parametrize("out_shape", [(37, 33, 29), (16, 33, 29), (16, 20, 24)])
def test_slab_size_does_not_change_the_labels(out_shape: tuple[int, int, int]) -> None:
    """Also where axis 0 (the slab axis) or no axis is resampled."""
    logits = _random_logits((16, 20, 24), classes=3, seed=1)
    whole = logits_to_labels(logits, out_shape, None, slab_voxels=10**9)
    assert whole.shape == out_shape
    if out_shape == (16, 20, 24):
        assert np.array_equal(whole, logits.float().argmax(0).numpy())
    for slab in (1, 700, 5_000):
        assert np.array_equal(logits_to_labels(logits, out_shape, None, slab_voxels=slab), whole)


def test_sample_positions_align_pixel_centres() -> None:
    lo, hi, w = sample_positions(2, 4)
    # output centres at -0.25, 0.25, 0.75, 1.25 in source coordinates, clamped to [0, 1]
    assert lo.tolist() == [0, 0, 0, 1] and hi.tolist() == [1, 1, 1, 1]
    assert np.allclose(w, [0.0, 0.25, 0.75, 0.0])
    near, _, w0 = sample_positions(5, 2, nearest=True)
    assert near.tolist() == [1, 3] and not w0.any()  # centres 0.75 and 3.25 round to 1 and 3
    assert sample_positions(3, 3)[0].tolist() == [0, 1, 2]


def test_export_undoes_crop_and_transpose() -> None:
    logits = torch.zeros((2, 3, 4, 5), dtype=torch.float16)
    logits[1, 1:, :, 2:] = 1.0
    properties = {"shape_before_cropping": (5, 4, 7), "bbox_used_for_cropping": [[1, 4], [0, 4], [2, 7]],
                  "shape_after_cropping_and_before_resampling": (3, 4, 5)}
    labels = export_labels(logits, properties, transpose_backward=(2, 1, 0), nearest_axis=None)
    assert labels.shape == (7, 4, 5)
    expected = np.zeros((5, 4, 7), dtype=np.uint8)
    expected[2:4, :, 4:7] = 1
    assert np.array_equal(labels, expected.transpose(2, 1, 0))


@pytest.mark.parametrize(("in_shape", "out_shape", "nearest_axis"), [
    ((20, 30, 26), (41, 57, 49), None),    # upsampling
    ((40, 36, 30), (20, 25, 17), None),    # downsampling
    ((12, 30, 30), (7, 52, 44), 0),        # nearest along axis 0
    ((16, 20, 24), (16, 33, 24), None),    # axes 0 and 2 not resampled
])
def test_a_region_exports_exactly_as_in_the_whole_grid(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                                                       nearest_axis: int | None) -> None:
    """Given only the logits :func:`source_box` names, an output box gets the whole export's labels."""
    logits = _random_logits(in_shape, seed=3)
    whole = logits_to_labels(logits, out_shape, nearest_axis)
    rng = np.random.default_rng(4)
    for _ in range(6):
        starts = [int(rng.integers(0, n - 1)) for n in out_shape]
        out_box = tuple(slice(s, int(rng.integers(s + 1, n + 1))) for s, n in zip(starts, out_shape, strict=True))
        need = source_box(in_shape, out_shape, out_box, nearest_axis)
        part = logits[(slice(None), *need)].clone()
        ours = logits_to_labels(part, out_shape, nearest_axis, in_shape=in_shape,
                                in_start=[s.start for s in need], out_box=out_box, slab_voxels=2_000)
        assert np.array_equal(ours, whole[out_box])
        if any(s.start > 0 for s in need):  # a logit the box does not need is not read
            with pytest.raises(ValueError, match="do not hold"):
                shifted = [s.start + 1 if s.start > 0 else s.start for s in need]
                logits_to_labels(part, out_shape, nearest_axis, in_shape=in_shape, in_start=shifted, out_box=out_box)


def test_export_of_a_region_leaves_the_rest_background() -> None:
    logits = _random_logits((6, 8, 10), classes=3, seed=5)
    properties = {"shape_before_cropping": (9, 8, 14), "bbox_used_for_cropping": [[1, 7], [0, 8], [2, 12]],
                  "shape_after_cropping_and_before_resampling": (6, 8, 10)}
    whole = export_labels(logits, properties, transpose_backward=(2, 1, 0), nearest_axis=None)
    region = (slice(0, 5), slice(2, 6), slice(4, 14))  # reaches outside the crop on two axes
    need = region_source_box(region, properties, (6, 8, 10), None)
    assert need is not None
    part = logits[(slice(None), *need)]
    labels = export_labels(part, properties, transpose_backward=(2, 1, 0), nearest_axis=None,
                           working_shape=(6, 8, 10), logits_start=[s.start for s in need], region=region)
    expected = np.zeros_like(whole)
    inside = tuple(region[i] for i in (2, 1, 0))
    expected[inside] = whole[inside]
    assert whole[inside].any() and np.array_equal(labels, expected)
    assert region_source_box((slice(7, 9), slice(0, 8), slice(0, 14)), properties, (6, 8, 10), None) is None


def test_body_box_finds_the_largest_body_with_margin() -> None:
    ct = np.full((40, 60, 80), -1000.0, dtype=np.float32)
    ct[10:30, 20:45, 15:65] = 40.0     # the body
    ct[2:4, 2:4, 2:4] = 300.0          # a small dense object apart from it (not the body)
    box = body_box(ct, (2.0, 1.0, 1.0), margin_mm=4.0)
    assert box == (slice(8, 32), slice(16, 49), slice(11, 69))
    assert box_fraction(box, ct.shape) == pytest.approx(24 * 33 * 58 / ct.size)


def test_body_box_clips_to_the_image_and_handles_air() -> None:
    ct = np.full((10, 12, 14), -1000, dtype=np.int16)
    assert body_box(ct, (1.0, 1.0, 1.0)) is None
    ct[0:5, 3:9, 10:14] = 0
    assert body_box(ct, (1.0, 1.0, 1.0), margin_mm=2.0) == (slice(0, 7), slice(1, 11), slice(8, 14))
    with pytest.raises(ValueError, match="spacing"):
        body_box(ct, (1.0, 1.0))


def test_body_box_on_a_subsampled_mask_still_covers_the_body() -> None:
    ct = np.full((220, 200, 200), -1000, dtype=np.int16)   # 8.8 M voxels: searched with stride 2
    ct[51:171, 33:150, 60:141] = 20
    box = body_box(ct, (1.0, 1.0, 1.0), margin_mm=0.0)
    assert box is not None
    for sl, (lo, hi) in zip(box, [(51, 171), (33, 150), (60, 141)], strict=True):
        assert sl.start <= lo and sl.stop >= hi and sl.stop - sl.start <= hi - lo + 4


def test_speed_presets() -> None:
    default = resolve_speed()
    assert (default.step_size, default.tta, default.crop_body, default.export) == (0.5, True, False, "torch")
    fast = resolve_speed(fast=True)
    assert (fast.step_size, fast.tta, fast.crop_body) == (DEFAULT_STEP, False, True)
    mixed = resolve_speed(fast=True, step_size=0.6, tta=True, crop_body=False, export="NNUNET")
    assert (mixed.step_size, mixed.tta, mixed.crop_body, mixed.export) == (0.6, True, False, "nnunet")
    with pytest.raises(InputError, match=r"step size must be in \(0, 1\], got 1.5"):
        resolve_speed(step_size=1.5)
    with pytest.raises(InputError, match="export must be one of torch, nnunet"):
        resolve_speed(export="scipy")
