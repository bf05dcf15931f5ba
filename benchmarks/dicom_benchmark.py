"""DICOM input and outputs: time to find, read and write the real JPEG 2000 series, versus plain GDCM.

    python benchmarks/dicom_benchmark.py [--data ../shared/data/real] [--repeat 3]

Times (best of ``--repeat``): series discovery (headers only), reading with autoorgan (sorting,
geometry checks, decoding) against SimpleITK's own GDCM series reader, the same from a ``.zip``,
and writing a DICOM SEG of a two-structure label map.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoorgan.batch.job import CaseContext
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.io.cases import find_cases
from autoorgan.io.dicom_seg import DicomSegStep
from autoorgan.io.reading import read_case
from autoorgan.registry.tasks import load_registry


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gdcm_read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    series = args.data / "totalsegmentator" / "example_ct_dicom"
    n = len(list(series.iterdir()))
    print(f"series: {n} slices of 512x512, JPEG 2000 lossless")
    print(f"find_cases (headers only):   {best(lambda: find_cases(series), args.repeat):.3f} s")
    case = find_cases(series)[0]
    print(f"read_case (autoorgan):       {best(lambda: read_case(case), args.repeat):.3f} s")
    print(f"SimpleITK GDCM series read:  {best(lambda: gdcm_read(series), args.repeat):.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "series.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(series.iterdir()):
                zf.write(path, f"DICOM/{path.name}")
        zip_case = find_cases(archive)[0]
        print(f"read_case from a .zip:       {best(lambda: read_case(zip_case), args.repeat):.3f} s")
        volume = read_case(case)
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        labels[100:250, 150:350, :] = 1
        labels[300:400, 150:350, 5:15] = 3
        task = load_registry().get_task("hip")
        ctx = CaseContext(case=case, volume=volume, task=task, outputs=CaseOutputs(Path(tmp), case.case_id),
                          labels=labels, sidecar={})
        print(f"DICOM SEG, 2 segments:       {best(lambda: DicomSegStep()(ctx), args.repeat):.3f} s")


if __name__ == "__main__":
    main()
