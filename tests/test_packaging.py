"""The wheel ships the task table, so a non-editable ``pip install .`` works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_the_task_table_and_entry_point(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("autoorgan-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert archive.read("autoorgan/configs/tasks.json") == (ROOT / "configs" / "tasks.json").read_bytes()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "autoorgan = autoorgan.cli:main" in archive.read(entry_points).decode()
    assert "autoorgan/cli/app.py" in names and "autoorgan/engine/__init__.py" in names
    assert "autoorgan/py.typed" in names  # type information for users of the API
    assert not any(n.startswith("tests/") for n in names)
