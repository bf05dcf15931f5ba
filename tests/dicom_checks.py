"""Checks of written DICOM objects: dciodvfy (dicom3tools) and RT structure set contours filled back
onto a grid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as Polygon

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """The errors and warnings dciodvfy reports for ``path``; the test skips where it is not installed
    (Debian/Ubuntu: ``apt-get install dicom3tools``; CI installs it)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools); the DICOM validation needs it")
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def fill_contours(rtstruct: Any, reference: sitk.Image) -> dict[str, np.ndarray]:
    """Each ROI's contours filled onto ``reference``'s grid (array order ``[z, y, x]``).

    Points are taken back to continuous indices with ``reference``'s geometry (as SimpleITK reads
    the series); each contour must lie on one slice; a voxel belongs to the ROI when its centre lies
    inside an odd number of the slice's contours (holes are inner contours).
    """
    size_x, size_y, size_z = reference.GetSize()
    origin = np.asarray(reference.GetOrigin())
    scaled = np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing())
    to_index = np.linalg.inv(scaled)
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    masks: dict[str, np.ndarray] = {}
    for roi in rtstruct.ROIContourSequence:
        mask = np.zeros((size_z, size_y, size_x), dtype=bool)
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            index = (points - origin) @ to_index.T
            k = round(float(index[0, 2]))
            assert np.allclose(index[:, 2], k, atol=1e-3), "a contour leaves its slice"
            # the voxel centres of the contour's bounding box, tested against the polygon
            x0, y0 = np.maximum(np.floor(index[:, :2].min(axis=0)).astype(int), 0)
            x1, y1 = np.minimum(np.ceil(index[:, :2].max(axis=0)).astype(int) + 1, (size_x, size_y))
            xs, ys = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), indexing="xy")
            inside = Polygon(index[:, :2]).contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
            mask[k, y0:y1, x0:x1] ^= inside.reshape(xs.shape)
        masks[names[int(roi.ReferencedROINumber)]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
