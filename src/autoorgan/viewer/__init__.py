"""``autoorgan view OUT``: an output folder in the browser, each case's CT and label map in NiiVue.

Browsers refuse to load image files into a page opened from ``file://``, so a small server
(:mod:`autoorgan.viewer.server`) serves the folder on 127.0.0.1 only, under a random token, and
answers for nothing but the output folder's files, the input image each case's sidecar and run
record name (:mod:`autoorgan.viewer.site`), the viewer page of each case
(:mod:`autoorgan.viewer.page`) and the NiiVue build shipped in ``static/``.

NiiVue (https://github.com/niivue/niivue, BSD-2-Clause) is vendored as its browser bundle
``dist/niivue.umd.js`` of the npm package ``@niivue/niivue``; :data:`NIIVUE_VERSION` and
:data:`NIIVUE_SHA256` record which file it is, ``static/NIIVUE_LICENSE.txt`` its licence and
those of the packages bundled into it.
"""

from __future__ import annotations

from pathlib import Path

#: The npm package version of the vendored NiiVue bundle.
NIIVUE_VERSION = "0.69.0"
#: SHA-256 of ``static/niivue.umd.js`` (``dist/niivue.umd.js`` of ``@niivue/niivue`` 0.69.0).
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
#: The folder of the shipped browser files.
STATIC = Path(__file__).resolve().parent / "static"
NIIVUE_BUNDLE = STATIC / "niivue.umd.js"
NIIVUE_LICENSE = STATIC / "NIIVUE_LICENSE.txt"
