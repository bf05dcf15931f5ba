"""Anatomical repair benchmark: controlled corruptions of reference maps, restored and collateral voxels.

    python benchmarks/repair_benchmark.py [--data ../shared/data/real] [--speed]

References: synthetic phantoms (ribs 9–12 next to vertebrae T9–L2, with their CT), the real
TotalSegmentator references converted into the ribs and vertebrae label spaces and the TPTBox
lumbar crop (L2–L4, posterior elements from its subregion map). Each reference
is corrupted (sides swapped, numbering shifted, a rib broken into mislabelled pieces, islands,
junction voxels erased, a vertebra fragment mislabelled; numbering errors of the series: a rib
or vertebra numbered as its neighbour, a rib's front or head end numbered as its neighbour, a
vertebra's posterior elements numbered as the next level, neighbours swapped), repaired, and scored: *restored* = %
of corrupted voxels given their reference label back; *collateral* = % of labelled voxels
changed on the uncorrupted map. Everything is repeated in LPS, PIR and a flipped (LAS) storage.
``--speed`` also times one 512×512×600 ribs map, its vertebrae map, the ribs map with stray
labels in opposite corners and the ribs map with 2000 specks spread over the volume (every step
then spans the whole volume).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from repair_cases import ReferenceCase, phantom_case, totalsegmentator_case, tptbox_case
from repair_corruptions import evaluate, repair_case_map, unscored_corruptions

from autoorgan.io.image import Geometry

ORIENTATIONS = ("as stored", "LPS", "PIR", "LAS")


def speed_case() -> ReferenceCase:
    """A 512×512×600 ribs/vertebrae map with CT: a body-sized phantom (500 × 500 × 1200 mm, ribs
    spanning the chest) drawn coarsely and upsampled 4× to 0.98 × 0.98 × 2 mm."""
    small = phantom_case(7, spacing=(3.906, 3.906, 8.0), size_mm=(500.0, 500.0, 1200.0))

    def up(a: np.ndarray) -> np.ndarray:
        big = a.repeat(4, 0).repeat(4, 1).repeat(4, 2)
        out = np.zeros((512, 512, 600), dtype=a.dtype)
        sx, sy, sz = (min(s, t) for s, t in zip(big.shape, out.shape, strict=True))
        out[:sx, :sy, :sz] = big[:sx, :sy, :sz]
        return out

    g = small.geometry
    geometry = Geometry(size=(512, 512, 600), spacing=tuple(s / 4 for s in g.spacing),  # type: ignore[arg-type]
                        origin=g.origin, direction=g.direction)
    return ReferenceCase("speed 512x512x600", geometry, up(small.ribs), up(small.vertebrae),
                         ct=up(small.ct) if small.ct is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    parser.add_argument("--speed", action="store_true", help="also time a 512×512×600 map")
    parser.add_argument("--phantoms", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("repair_benchmark")
    cases = [phantom_case(seed) for seed in range(args.phantoms)]
    folder = args.data / "totalsegmentator"
    if folder.is_dir():
        cases.append(totalsegmentator_case(folder, "example_seg_fast_force_split.nii.gz", ct="example_ct.nii.gz"))
        cases.append(totalsegmentator_case(folder, "example_seg_dicom.nii.gz"))
    else:
        log.warning("no real references at %s; phantoms only", folder)
    if (args.data / "tptbox_vertebra").is_dir():
        cases.append(tptbox_case(args.data / "tptbox_vertebra"))
    rows = [row for case in cases for row in evaluate(case, ORIENTATIONS, series=True)]
    log.info("%-44s %-9s %-10s %-20s %9s %9s %9s %7s", "case", "orient", "task", "corruption", "corrupted",
             "restored%", "collat.%", "sec")
    for r in rows:
        log.info("%-44s %-9s %-10s %-20s %9d %9.1f %9.3f %7.2f", r.case, r.orientation, r.task, r.corruption,
                 r.scores.corrupted, r.scores.restored_pct, r.scores.collateral_pct, r.seconds)
    for case in cases:
        for name, why in unscored_corruptions(case, series=True).items():
            log.info("%s: '%s' not scored: %s", case.name, name, why)
    corrupted = [r for r in rows if r.scores.corrupted]
    clean = [r for r in rows if r.corruption.startswith("none")]
    total_bad = sum(r.scores.corrupted for r in corrupted)
    total_restored = sum(r.scores.restored for r in corrupted)
    if corrupted:
        worst = min(corrupted, key=lambda r: r.scores.restored_pct)
        log.info("overall restored: %.2f%% of %d corrupted voxels; worst corruption %.1f%% (%s, %s)",
                 100 * total_restored / max(total_bad, 1), total_bad, worst.scores.restored_pct, worst.corruption,
                 worst.case)
    log.info("per corruption class (all references and orientations): restored %, worst collateral %")
    for name in dict.fromkeys(r.corruption for r in rows):
        mine = [r for r in rows if r.corruption == name]
        bad = sum(r.scores.corrupted for r in mine)
        log.info("  %-55s %8.2f %8.3f  (%d voxels)", name, 100 * sum(r.scores.restored for r in mine) / max(bad, 1),
                 max(r.scores.collateral_pct for r in mine), bad)
    if clean:
        worst = max(clean, key=lambda r: r.scores.collateral_pct)
        log.info("collateral on clean maps: worst %.3f%% (%s, %s)", worst.scores.collateral_pct, worst.case, worst.task)
    if args.speed:
        time_speed_cases(log)


def time_speed_cases(log: logging.Logger) -> None:
    """Wall and CPU seconds of the repair of 512×512×600 maps (CPU seconds of this process:
    other jobs on the machine stretch the wall time, not the CPU time)."""
    case = speed_case()
    ribs = case.ribs.copy()

    def timed(what: str, task: str, labels: np.ndarray) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        result = repair_case_map(case, task, labels)
        log.info("%s: %.2f s wall, %.2f s CPU (%s)", what, time.perf_counter() - wall, time.process_time() - cpu,
                 ", ".join(f"{s['step']} {s['seconds']:.2f}s" for s in result.steps))

    timed("512x512x600 ribs map with vertebrae and CT", "ribs", ribs)
    timed("512x512x600 vertebrae map with CT", "vertebrae", case.vertebrae)
    # Two stray labels at opposite corners (the only pieces of their labels, so kept): every
    # step then spans the whole volume.
    corners = ribs.copy()
    corners[0, 0, 0], corners[-1, -1, -1] = 1, 2
    timed("ribs map with stray labels in opposite corners (whole volume)", "ribs", corners)
    # A noisy prediction: 2000 one-voxel specks of random rib labels all over the volume.
    rng = np.random.default_rng(0)
    noisy = ribs.copy()
    noisy[tuple(rng.integers(0, n, 2000) for n in noisy.shape)] = rng.integers(1, 25, 2000)
    timed("ribs map with 2000 specks all over the volume", "ribs", noisy)

if __name__ == "__main__":
    main()
