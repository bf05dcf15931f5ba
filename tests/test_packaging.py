"""The wheel ships the task table, so a non-editable ``pip install .`` works."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autoorgan.viewer import NIIVUE_SHA256

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_the_task_table_and_entry_point(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("autoorgan-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for table in ("tasks.json", "colors.json", "anatomy.json"):
            assert archive.read(f"autoorgan/configs/{table}") == (ROOT / "configs" / table).read_bytes()
        # the viewer's NiiVue build, the very file recorded, with its licence
        bundle = archive.read("autoorgan/viewer/static/niivue.umd.js")
        assert hashlib.sha256(bundle).hexdigest() == NIIVUE_SHA256
        assert "BSD 2-Clause License" in archive.read("autoorgan/viewer/static/NIIVUE_LICENSE.txt").decode()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "autoorgan = autoorgan.cli:main" in archive.read(entry_points).decode()
    assert "autoorgan/cli/app.py" in names and "autoorgan/engine/__init__.py" in names
    assert "autoorgan/py.typed" in names  # type information for users of the API
    assert not any(n.startswith("tests/") for n in names)
