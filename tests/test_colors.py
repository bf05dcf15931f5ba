"""Structure colours: every shipped structure has one, neighbours are told apart, task files may
give their own, and a structure without one gets a stable colour from its name."""

from __future__ import annotations

import json
from itertools import combinations, pairwise
from pathlib import Path

import pytest

from autoorgan.errors import TaskError
from autoorgan.registry.colors import (
    color_distance,
    derived_color,
    label_colors,
    parse_color,
    rgb_to_cielab,
    shipped_colors,
    structure_color,
)
from autoorgan.registry.selection import whole_body_task
from autoorgan.registry.tasks import load_registry, normalize_name
from autoorgan.registry.whole_body import whole_body_table

ROOT = Path(__file__).resolve().parents[1]
VERTEBRAE = [f"vertebrae_{p}{i}" for p, n in (("C", 7), ("T", 12), ("L", 5)) for i in range(1, n + 1)]
#: Least CIE76 ΔE between two structures of one task (clearly different side by side) and between
#: neighbours of a numbered series (different hues).
MIN_TASK_DISTANCE = 9.0
MIN_NEIGHBOUR_DISTANCE = 30.0


def _all_structures() -> set[str]:
    names = {name for task in load_registry().values() for name in task.labels.values()}
    return names | set(whole_body_table().labels.values())


def test_every_shipped_structure_has_its_own_colour_and_the_table_names_no_stranger() -> None:
    table = shipped_colors()
    structures = _all_structures()
    assert "demo_pelvis" in load_registry()  # the demo task's labels are among them
    assert structures <= set(table), sorted(structures - set(table))
    assert set(table) <= structures, sorted(set(table) - structures)
    assert len(set(table.values())) == len(table)  # no two structures share a colour
    raw = json.loads((ROOT / "configs" / "colors.json").read_text())
    assert len({normalize_name(n) for n in raw["colors"]}) == len(table)  # no name twice in another spelling


def test_structures_of_one_task_are_clearly_different() -> None:
    for task in load_registry().values():
        colours = label_colors(task.labels)
        for (a, ca), (b, cb) in combinations(colours.items(), 2):
            distance = color_distance(ca, cb)
            assert distance >= MIN_TASK_DISTANCE, (task.name, task.labels[a], task.labels[b], round(distance, 1))


@pytest.mark.parametrize("series", [VERTEBRAE, [f"rib_left_{i}" for i in range(1, 13)],
                                    [f"rib_right_{i}" for i in range(1, 13)]],
                         ids=["vertebrae", "ribs_left", "ribs_right"])
def test_neighbours_of_numbered_series_differ_clearly(series: list[str]) -> None:
    for a, b in pairwise(series):
        assert color_distance(structure_color(a), structure_color(b)) >= MIN_NEIGHBOUR_DISTANCE, (a, b)


def test_left_and_right_rib_of_one_number_differ() -> None:
    for i in range(1, 13):
        assert color_distance(structure_color(f"rib_left_{i}"), structure_color(f"rib_right_{i}")) >= 20


def test_usual_colours_where_a_convention_exists() -> None:
    # 3D Slicer's GenericAnatomyColors where neighbours stay apart: spleen purple, trachea light blue
    assert structure_color("spleen") == (157, 108, 162)
    assert structure_color("trachea") == (182, 228, 255)
    r, g, b = structure_color("liver")
    assert r > g > b and r < 200  # brown
    for red in ("heart", "aorta"):
        r, g, b = structure_color(red)
        assert r > 200 and g < 110 and b < 110
    for lobe in ("lung_upper_lobe_left", "lung_lower_lobe_right"):
        r, g, b = structure_color(lobe)
        assert r > g and b > g  # pink


def test_bone_colours_show_over_bone() -> None:
    # an overlay on a white (bone) CT pixel must still look coloured: enough chroma
    bones = [n for t in ("skeleton", "vertebrae", "ribs", "upper_limb", "hip", "lower_limb")
             for n in load_registry()[t].labels.values()]
    for name in bones:
        rgb = structure_color(name)
        assert max(rgb) - min(rgb) >= 100, (name, rgb)


def test_names_are_matched_forgivingly_and_unknown_names_get_a_stable_colour() -> None:
    assert structure_color("Kidney Left") == structure_color("kidney-left") == structure_color("kidney_left")
    # derived from the name alone (SHA-256): the same in every process and version
    assert derived_color("my_tumour") == structure_color("My Tumour") == (75, 231, 112)
    others = [structure_color(f"structure_{i}") for i in range(40)]
    assert len(set(others)) == 40
    assert min(color_distance(a, b) for a, b in pairwise(others)) > 3


def test_label_colors_by_value_and_a_tasks_own_colours_first() -> None:
    labels = {3: "sacrum", 1: "hip_left", 7: "my_thing"}
    colours = label_colors(labels)
    assert list(colours) == [1, 3, 7]
    assert colours[1] == structure_color("hip_left") and colours[7] == derived_color("my_thing")
    assert label_colors(labels, {"Sacrum": (1, 2, 3)})[3] == (1, 2, 3)


def test_cielab_of_known_colours() -> None:
    assert rgb_to_cielab((255, 255, 255)) == pytest.approx((100.0, 0.0, 0.0), abs=0.05)
    assert rgb_to_cielab((0, 0, 0)) == pytest.approx((0.0, 0.0, 0.0), abs=0.05)
    assert rgb_to_cielab((255, 0, 0)) == pytest.approx((53.24, 80.09, 67.20), abs=0.1)


def test_task_file_colours(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text('[tasks.my_liver]\ndataset_id = 501\n[tasks.my_liver.labels]\n1 = "liver"\n2 = "Liver Tumor"\n'
                    '[tasks.my_liver.colors]\nliver_tumor = "#E6E632"\n\n'
                    '[tasks.hip.colors]\nsacrum = [10, 20, 30]\n')
    registry = load_registry(path)
    task = registry["my_liver"]
    assert dict(task.colors) == {"Liver Tumor": (230, 230, 50)}
    assert label_colors(task.labels, task.colors) == {1: structure_color("liver"), 2: (230, 230, 50)}
    assert task.with_overrides(fold=1).colors == task.colors  # kept through one-run overrides
    hip = registry["hip"]
    assert label_colors(hip.labels, hip.colors)[3] == (10, 20, 30)
    merged = whole_body_task([registry["skeleton"], hip])  # a multi-task run keeps the tasks' colours
    assert label_colors(merged.labels, merged.colors)[whole_body_table().value_of("sacrum")] == (10, 20, 30)


@pytest.mark.parametrize(("colors", "message"), [
    ('liver = "#12345"', "colour of 'liver' in task 'my_liver' must be \"#rrggbb\" or \\[r, g, b\\]"),
    ('liver = "red"', "must be \"#rrggbb\""),
    ("liver = [1, 2]", "must be \"#rrggbb\""),
    ("liver = [0, 0, 256]", "components must be 0..255"),
    ("liver = [0, true, 2]", "must be \"#rrggbb\""),
    ('kidney = "#000000"', "colour of 'kidney' in task 'my_liver': not one of its structures"),
])
def test_bad_task_file_colours_are_one_line(tmp_path: Path, colors: str, message: str) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(f'[tasks.my_liver]\ndataset_id = 501\n[tasks.my_liver.labels]\n1 = "liver"\n'
                    f"[tasks.my_liver.colors]\n{colors}\n")
    with pytest.raises(TaskError, match=message) as caught:
        load_registry(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_colors_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": {"x": {"dataset_id": 5, "labels": {"1": "a"}, "colors": ["#000000"]}}}))
    with pytest.raises(TaskError, match="'colors' of task 'x' must be a table"):
        load_registry(path)


def test_parse_color() -> None:
    assert parse_color(" #0a0B0c ") == (10, 11, 12)
    assert parse_color((1, 2, 3)) == (1, 2, 3)
    with pytest.raises(ValueError):
        parse_color(1.5)
