"""``autoorgan view``: what the server serves and refuses, and the viewer page in headless Chromium
on a real fixture-model output."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient
from autoorgan.registry.colors import color_hex, structure_color
from autoorgan.viewer import NIIVUE_BUNDLE, NIIVUE_LICENSE, NIIVUE_SHA256, NIIVUE_VERSION
from autoorgan.viewer.server import ViewerServer, start
from fixture_model import FIXTURE_STRUCTURES, FIXTURE_TASK, pelvis_phantom
from html_check import browse

runner = CliRunner()


def _image(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    """An output folder as predict leaves it (label map, sidecar, run record) and its input folder."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    ct = np.full((8, 10, 12), -1000, np.int16)
    _image(inp / "c 1.nii.gz", ct)
    labels = np.zeros((8, 10, 12), np.uint8)
    labels[2:6, 2:8, 2:10] = 1
    _image(out / "c 1.nii.gz", labels)
    (out / "c 1.json").write_text(json.dumps({"task": "hip", "labels": {"1": "hip_left"}, "label_map": "c 1.nii.gz",
                                              "input": "c 1.nii.gz"}))
    (out / "c 1.stats.json").write_text("{}")
    record = {"options": {"input": str(inp)}, "finished": "2026-01-01T00:00:00+00:00",
              "cases": [{"case": "c 1", "status": "done"}]}
    (out / "autoorgan_run-part0of1-x.json").write_text(json.dumps(record))
    (tmp_path / "secret.txt").write_text("secret")
    (inp / "other.nii.gz").write_bytes((inp / "c 1.nii.gz").read_bytes())
    return inp, out


def _get(server: ViewerServer, path: str, *, method: str = "GET", host: str | None = None) -> tuple[int, bytes]:
    """Send ``path`` exactly as written (no normalisation by a client library)."""
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host or address.netloc)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module's tests: an output folder with a hidden file and links that lead out."""
    inp, out = _folder(tmp_path_factory.mktemp("viewer"))
    (out / ".hidden").write_text("temporary")
    (out / "outside").symlink_to(out.parent / "secret.txt")
    (out / "outside_dir").symlink_to(out.parent, target_is_directory=True)
    server = start(out)
    yield server, inp, out
    server.stop()


def test_serves_the_output_folder_the_case_input_and_niivue(served) -> None:
    server, inp, out = served
    token = urlsplit(server.url).path  # "/<token>/"
    assert server.url.startswith("http://127.0.0.1:") and server.httpd.server_address[0] == "127.0.0.1"
    assert _get(server, token + "c%201.nii.gz") == (200, (out / "c 1.nii.gz").read_bytes())
    assert _get(server, token + ".input/c%201/c%201.nii.gz") == (200, (inp / "c 1.nii.gz").read_bytes())
    status, bundle = _get(server, token + ".niivue/niivue.umd.js")
    assert status == 200 and hashlib.sha256(bundle).hexdigest() == NIIVUE_SHA256
    status, page = _get(server, token + ".view/c%201")
    assert status == 200 and b"hip_left" in page and b"../.input/c%201/c%201.nii.gz" in page
    status, root = _get(server, token)  # no index.html: a list of the cases with a label map
    assert status == 200 and b'href=".view/c%201"' in root and b"stats" not in root
    assert _get(server, token + "c%201.nii.gz", method="HEAD")[0] == 200


@pytest.mark.parametrize("path", [
    "../secret.txt", "%2e%2e/secret.txt", "%2E%2E%2Fsecret.txt", "..%2fsecret.txt", "x/../../secret.txt",
    "..%5csecret.txt", "%00c%201.json", "/etc/passwd", "%2Fetc%2Fpasswd", ".view/..%2f..%2fsecret.txt",
    ".input/c%201/other.nii.gz", ".input/c%201/..%2fother.nii.gz", ".input/c%201/%2E%2E%2F%2E%2E%2Fsecret.txt",
    ".input/nobody/c%201.nii.gz", ".niivue/..%2f..%2f__init__.py", ".niivue/niivue.umd.js/x", ".hidden",
    "outside", "outside_dir/secret.txt", ".view/c%201/x", "does-not-exist",
])
def test_refuses_paths_outside_what_it_serves(served, path: str) -> None:
    server, _inp, _out = served
    token = urlsplit(server.url).path
    status, body = _get(server, token + path)
    assert status == 404 and b"secret" not in body and b"temporary" not in body


def test_refuses_without_the_token_another_host_or_method(served) -> None:
    server, _inp, _out = served
    token = urlsplit(server.url).path
    assert _get(server, "/c%201.nii.gz")[0] == 404
    assert _get(server, "/x" + token[2:] + "c%201.nii.gz")[0] == 404
    assert _get(server, token + "c%201.nii.gz", host="evil.example:80")[0] == 403  # DNS rebinding
    assert _get(server, token + "c%201.nii.gz", method="POST")[0] == 501
    assert _get(server, token + "c%201.nii.gz", method="PUT")[0] == 501


def test_a_crafted_sidecar_or_record_cannot_name_another_file(served) -> None:
    server, _inp, out = served
    token = urlsplit(server.url).path
    sidecar = json.loads((out / "c 1.json").read_text())
    for crafted in ("../secret.txt", "other.nii.gz", "/etc/passwd", "secret.txt"):
        (out / "c 1.json").write_text(json.dumps({**sidecar, "input": crafted}))
        status, page = _get(server, token + ".view/c%201")
        assert status == 200 and b"The CT is not shown" in page
        name = quote(Path(crafted).name)
        assert _get(server, f"{token}.input/c%201/{name}")[0] == 404
    (out / "c 1.json").write_text(json.dumps({**sidecar, "label_map": "../secret.txt"}))
    assert _get(server, token + ".view/c%201")[0] == 404
    (out / "c 1.json").write_text(json.dumps(sidecar))
    assert _get(server, token + ".view/c%201")[0] == 200


def test_the_view_command_refuses_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["view", str(tmp_path / "missing"), "--no-browser"])
    assert result.exit_code != 0 and "is not a folder" in result.output and "Traceback" not in result.output


def test_niivue_is_vendored_with_its_licence_and_version() -> None:
    assert hashlib.sha256(NIIVUE_BUNDLE.read_bytes()).hexdigest() == NIIVUE_SHA256
    licence = NIIVUE_LICENSE.read_text()
    assert f"NiiVue {NIIVUE_VERSION}" in licence and "BSD 2-Clause License" in licence
    assert "gl-matrix" in licence and "fflate" in licence and "nifti-reader-js" in licence


@pytest.mark.e2e
@pytest.mark.slow  # a prediction and a browser: in the full suite (CI), not the quick tier
def test_viewer_page_shows_a_real_prediction_in_headless_chromium(trained_models: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    sitk.WriteImage(reorient(pelvis_phantom(510).ct, "PIR"), str(inp / "pelvis 1.nii.gz"))  # not stored RAS
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(inp), "-o", str(out), "--models-dir",
                                 str(trained_models), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    # the overview links the case to its viewer page
    index = (out / "index.html").read_text()
    assert 'href=".view/pelvis%201"' in index
    server = start(out)
    try:
        links = {unquote(h) for h in re.findall(r'href="([^"]+)"', index)}
        token = urlsplit(server.url).path
        assert all(_get(server, token + quote(link))[0] == 200 for link in links)  # every link resolves
        page = browse(server.case_url("pelvis 1"))
    finally:
        server.stop()
    assert 'data-state="loaded"' in page.dom, page.dom[-3000:]
    # the page opens with the crosshair on the largest structure (its voxel nearest its centroid),
    # named in the hover line with the CT value and the position in RAS mm
    hover = re.search(r'<div id="hover">([^<]*) · (-?\d+) HU · ([^<]*) mm \(RAS\)</div>', page.dom)
    assert hover is not None, page.dom[-2000:]
    label_map = sitk.ReadImage(str(out / "pelvis 1.nii.gz"))
    labels = sitk.GetArrayFromImage(label_map)
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    voxels = np.argwhere(labels == largest)[:, ::-1]  # x, y, z
    nearest = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
    lps = label_map.TransformIndexToPhysicalPoint([int(v) for v in nearest])
    assert hover.group(1) == FIXTURE_STRUCTURES[largest - 1]
    shown = [float(v) for v in hover.group(3).split(", ")]
    assert shown == pytest.approx([-lps[0], -lps[1], lps[2]], abs=0.06)
    # the legend lists the structures found, each with its colour and volume
    items = {m.group("name"): m for m in re.finditer(
        r'<li data-value="\d+"(?: class="(?P<cls>[^"]*)")?><span class="swatch" style="background:(?P<color>#\w+)">'
        r'</span><span class="name">(?P<name>[^<]*)</span><span class="ml">(?P<ml>[^<]*)</span></li>', page.dom)}
    for name in FIXTURE_STRUCTURES:
        assert "absent" not in (items[name].group("cls") or "")
        assert items[name].group("color") == color_hex(structure_color(name))
        assert re.fullmatch(r"\d+\.\d ml", items[name].group("ml")) and float(items[name].group("ml")[:-3]) > 1
    # the canvas is drawn: many colours, and the label overlay's colours among them
    shot = np.asarray(page.screenshot)
    canvas = shot[60:700, :900]
    assert len(np.unique((canvas * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
    saturation = canvas.max(axis=2) - canvas.min(axis=2)
    assert (saturation > 0.25).mean() > 0.002
