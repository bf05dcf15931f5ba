"""Load a page from disk in headless Chromium and report what a reader would see go wrong.

Two runs: the page itself, with Chromium's console log on stderr (any ``CONSOLE`` line is a
message the page produced), and a wrapper page that opens it in a frame and reports, for every
``<img>``, whether it loaded (``naturalWidth > 0``). Skips the test only when Chromium is not
installed (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]

_WRAPPER = """<!DOCTYPE html><html><body><pre id="result">not loaded</pre>
<iframe id="page" src="{src}" onload="
const d = this.contentDocument;
const images = Array.from(d.images).map(i => ({{src: i.getAttribute('src'), width: i.naturalWidth,
                                               ok: i.complete && i.naturalWidth > 0}}));
document.getElementById('result').textContent = JSON.stringify({{title: d.title, images: images,
  rows: d.querySelectorAll('tbody tr').length}});
"></iframe></body></html>
"""


@dataclass
class PageReport:
    title: str
    images: list[dict[str, object]]
    rows: int
    console: list[str]

    @property
    def broken_images(self) -> list[object]:
        return [i["src"] for i in self.images if not i["ok"]]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def _run(browser: str, url: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, *_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=False)


def load_page(page: Path) -> PageReport:
    """Open ``page`` (a file) in headless Chromium and report its images and console messages."""
    browser = chromium()
    page = page.resolve()
    with tempfile.TemporaryDirectory(prefix="autoorgan-chromium-") as tmp:
        direct = _run(browser, page.as_uri(), Path(tmp) / "profile1")
        assert direct.returncode == 0, direct.stderr[-2000:]
        console = [ln for ln in direct.stderr.splitlines() if ":CONSOLE" in ln]
        wrapper = Path(tmp) / "wrapper.html"
        wrapper.write_text(_WRAPPER.format(src=page.as_uri()), encoding="utf-8")
        framed = _run(browser, wrapper.as_uri(), Path(tmp) / "profile2")
        assert framed.returncode == 0, framed.stderr[-2000:]
    match = re.search(r'<pre id="result">(.*?)</pre>', framed.stdout, re.DOTALL)
    assert match is not None, framed.stdout[-2000:]
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert text != "not loaded", "the page did not load in the frame"
    data = json.loads(text)
    return PageReport(title=data["title"], images=data["images"], rows=data["rows"], console=console)


#: Chromium flags for a page that draws with WebGL: software rendering (SwiftShader), no GPU needed.
_WEBGL_FLAGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=20000"]


@dataclass
class BrowsedPage:
    dom: str
    #: The screenshot as an RGB array (rows, columns, 3), values 0..1.
    screenshot: object


def browse(url: str, size: tuple[int, int] = (1200, 800)) -> BrowsedPage:
    """Open ``url`` (served over HTTP) in headless Chromium with WebGL: the DOM once the page has
    settled, and a screenshot of the window taken then (one browser run)."""
    from matplotlib.image import imread

    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="autoorgan-chromium-") as tmp:
        shot = Path(tmp) / "shot.png"
        run = subprocess.run([browser, *_WEBGL_FLAGS, f"--window-size={size[0]},{size[1]}",
                              f"--user-data-dir={tmp}/profile", f"--screenshot={shot}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
        picture = imread(str(shot))[..., :3]
    return BrowsedPage(dom=run.stdout, screenshot=picture)
