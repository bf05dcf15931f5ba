"""Report outputs: agreement with TotalSegmentator's published statistics, and their cost.

    python benchmarks/report_benchmark.py [--data ../shared/data/real] [--big]

Compares per-structure volume and mean intensity with ``example_seg_fast/statistics.json``
(TotalSegmentator reports mm³; we report ml), then times the statistics and the preview on the
real CT. ``--big`` also times a synthetic 512×512×600 map with 117 structures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from autoorgan.io.image import Geometry, read_volume
from autoorgan.report.preview import render_preview
from autoorgan.report.statistics import structure_statistics


def compare(data: Path) -> None:
    folder = data / "totalsegmentator"
    names = {int(k): v for k, v in json.loads((folder / "class_map_total.json").read_text())["total"].items()}
    published = json.loads((folder / "example_seg_fast" / "statistics.json").read_text())
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    seg = read_volume(folder / "example_seg_fast.nii.gz")
    start = time.perf_counter()
    stats = structure_statistics(seg.array, ct.array, ct.geometry, names)
    seconds = time.perf_counter() - start
    volume_diff, mean_diff, n = 0.0, 0.0, 0
    for s in stats:
        ref = published[s.structure]
        if ref["volume"] > 0:
            n += 1
            volume_diff = max(volume_diff, abs(s.volume_ml * 1000 - ref["volume"]) / ref["volume"])
            mean_diff = max(mean_diff, abs(s.intensity_mean - ref["intensity"]))
    print(f"TotalSegmentator example_seg_fast: {n} present structures; max volume difference "
          f"{100 * volume_diff:.2e} %, max mean-intensity difference {mean_diff:.2e} HU")
    print(f"statistics of {ct.array.shape} with {len(names)} structures: {seconds:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        render_preview(ct.array, seg.array, ct.geometry, names, Path(tmp) / "p.png", title="example_ct_sm")
        print(f"preview of {ct.array.shape}: {time.perf_counter() - start:.2f} s")


def big() -> None:
    size = (512, 512, 600)
    rng = np.random.default_rng(0)
    labels = np.zeros(size, dtype=np.uint8)
    for value in range(1, 118):  # 117 blocks of random size and place
        lo = rng.integers(0, np.array(size) - 60)
        labels[tuple(slice(a, a + int(rng.integers(10, 60))) for a in lo)] = value
    ct = rng.integers(-1000, 1500, size, dtype=np.int16)
    grid = Geometry(size, (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    names = {v: f"s{v}" for v in range(1, 118)}
    start = time.perf_counter()
    structure_statistics(labels, ct, grid, names)
    print(f"statistics of {size}, {int((labels > 0).sum())} labelled voxels: {time.perf_counter() - start:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        render_preview(ct, labels, grid, names, Path(tmp) / "p.png")
        print(f"preview of {size}: {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    parser.add_argument("--big", action="store_true")
    args = parser.parse_args()
    compare(args.data)
    if args.big:
        big()


if __name__ == "__main__":
    main()
