"""The viewer page of one case: NiiVue with the CT, its label map, a legend and an opacity slider.

The page lives at ``OUT/.view/<case>`` on the viewer's server, so every file it loads is a
relative URL one folder up: ``../<label map>``, ``../.input/<case>/<input name>`` (the CT) and
``../.niivue/niivue.umd.js``. NiiVue shows three planes and a 3D render (its multiplanar layout
with the render tile), in radiological convention like the preview pictures; the label map is
drawn with a label colour table (NiiVue's ``setColormapLabel``: values, colours and names) built
from the structure colours every other output uses. Hovering shows the structure under the
pointer (and the page opens with the crosshair on the largest structure); the legend lists the
structures present with their volume, the slider sets the label map's opacity.

The case's data reaches the script as JSON in a ``<script type="application/json">`` block (with
``<``, ``>`` and ``&`` escaped), never as HTML or code.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

from autoorgan.registry.colors import color_hex
from autoorgan.report.preview import SLICE_WINDOW
from autoorgan.viewer.site import CaseView

#: URL path (relative to the served output folder) of the vendored NiiVue bundle.
NIIVUE_PATH = ".niivue/niivue.umd.js"
#: URL path prefix of a case's input image: ``.input/<case>/<input name>``.
INPUT_PREFIX = ".input/"
#: Label map opacity when the page opens (0..1).
DEFAULT_OPACITY = 0.5

_CSS = """
html, body { margin: 0; height: 100%; background: #111; color: #eee; font-family: system-ui, sans-serif; }
header { padding: 6px 12px; display: flex; gap: 1.2em; align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 1.1em; margin: 0; }
header a { color: #9cf; }
main { display: flex; height: calc(100% - 64px); }
#view { flex: 1; position: relative; min-width: 0; }
#gl { width: 100%; height: 100%; display: block; }
aside { width: 280px; padding: 8px 12px; overflow-y: auto; border-left: 1px solid #333; font-size: 14px; }
#legend { list-style: none; margin: 0; padding: 0; }
#legend li { display: flex; gap: 6px; align-items: center; padding: 1px 0; }
#legend li.absent { display: none; }
#legend li.hover { background: #444; }
#legend .swatch { width: 14px; height: 14px; flex: none; border-radius: 2px; }
#legend .ml { margin-left: auto; color: #aaa; font-variant-numeric: tabular-nums; }
#hover { min-height: 1.3em; padding: 4px 12px; font-size: 14px; color: #ffd24d; }
.note { color: #f0a050; }
label { display: block; margin: 6px 0; }
"""

_SCRIPT = """
(async () => {
  const data = JSON.parse(document.getElementById('case-data').textContent);
  const state = document.body;
  const hover = document.getElementById('hover');
  const items = new Map();
  for (const li of document.querySelectorAll('#legend li')) items.set(Number(li.dataset.value), li);
  try {
    const nv = new niivue.Niivue({
      backColor: [0, 0, 0, 1], show3Dcrosshair: true, isRadiologicalConvention: true,
      crosshairColor: [1, 0.25, 0.25, 0.8], crosshairWidth: 1, crosshairWidthUnit: 'mm',
      multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS, dragAndDropEnabled: false,
    });
    await nv.attachTo('gl');
    const volumes = [];
    if (data.ct) volumes.push({url: data.ct, colormap: 'gray', cal_min: data.window[0], cal_max: data.window[1]});
    volumes.push({url: data.labels, opacity: data.opacity});
    await nv.loadVolumes(volumes);
    const labelVolume = nv.volumes[nv.volumes.length - 1];
    const values = Object.keys(data.names).map(Number).sort((a, b) => a - b);
    const lut = {R: [0], G: [0], B: [0], A: [0], I: [0], labels: ['']};
    for (const v of values) {
      const [r, g, b] = data.colors[v] || [255, 255, 255];
      lut.R.push(r); lut.G.push(g); lut.B.push(b); lut.A.push(255); lut.I.push(v); lut.labels.push(data.names[v]);
    }
    labelVolume.setColormapLabel(lut);
    nv.setSliceType(nv.sliceTypeMultiplanar);
    nv.updateGLVolume();
    // the legend lists the structures present, with their volume
    const counts = new Map();
    const img = labelVolume.img;
    for (let i = 0; i < img.length; i++) { const v = img[i]; if (v) counts.set(v, (counts.get(v) || 0) + 1); }
    const pix = labelVolume.hdr.pixDims;
    const voxelMl = Math.abs(pix[1] * pix[2] * pix[3]) / 1000;
    for (const [value, li] of items) {
      const n = counts.get(value) || 0;
      li.classList.toggle('absent', n === 0);
      li.querySelector('.ml').textContent = n ? (n * voxelMl).toFixed(1) + ' ml' : '';
    }
    document.getElementById('present').textContent = String([...items.keys()].filter(v => counts.get(v)).length);
    // open on the largest structure: the crosshair on it, near its centre, its name in the hover line
    const largest = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
    if (largest) {
      const dims = labelVolume.hdr.dims;
      const sum = [0, 0, 0];
      for (let i = 0; i < img.length; i++) {
        if (img[i] !== largest[0]) continue;
        sum[0] += i % dims[1]; sum[1] += Math.floor(i / dims[1]) % dims[2]; sum[2] += Math.floor(i / (dims[1] * dims[2]));
      }
      const mean = sum.map(x => x / largest[1]);
      let best = Infinity, centre = [0, 0, 0];  // the structure's voxel nearest its centroid
      for (let i = 0; i < img.length; i++) {
        if (img[i] !== largest[0]) continue;
        const v = [i % dims[1], Math.floor(i / dims[1]) % dims[2], Math.floor(i / (dims[1] * dims[2]))];
        const d = (v[0] - mean[0]) ** 2 + (v[1] - mean[1]) ** 2 + (v[2] - mean[2]) ** 2;
        if (d < best) { best = d; centre = v; }
      }
      // file voxel → world mm (RAS) through the header's affine, then NiiVue's own frame
      const A = labelVolume.hdr.affine;
      const mm = [0, 1, 2].map(r => A[r][0] * centre[0] + A[r][1] * centre[1] + A[r][2] * centre[2] + A[r][3]);
      nv.scene.crosshairPos = nv.mm2frac(mm, nv.volumes.length - 1);
    }
    const slider = document.getElementById('opacity');
    slider.addEventListener('input', () => nv.setOpacity(nv.volumes.length - 1, slider.value / 100));
    nv.onLocationChange = (location) => {
      const found = location.values && location.values[location.values.length - 1];
      const value = found ? Math.round(found.value) : 0;
      for (const li of items.values()) li.classList.remove('hover');
      if (items.has(value)) items.get(value).classList.add('hover');
      const name = value ? (data.names[value] || 'label ' + value) : 'no structure';
      const ct = data.ct && location.values.length > 1 ? ' · ' + Math.round(location.values[0].value) + ' HU' : '';
      hover.textContent = name + ct + ' · ' + location.mm.slice(0, 3).map(x => x.toFixed(1)).join(', ') + ' mm (RAS)';
    };
    nv.drawScene();
    nv.createOnLocationChange();
    state.dataset.state = 'loaded';
  } catch (error) {
    state.dataset.state = 'error';
    hover.textContent = 'The viewer could not load this case: ' + error;
  }
})();
"""


def _json_script(value: Any) -> str:
    """``value`` as JSON that cannot close its ``<script>`` block."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _url(name: str) -> str:
    return quote(name, safe="")


def render_case_page(view: CaseView, *, has_index: bool) -> str:
    """The viewer page's HTML for ``view`` (pure)."""
    esc = html.escape
    level, width = SLICE_WINDOW
    data = {
        "labels": f"../{_url(view.label_map)}",
        "ct": f"../{INPUT_PREFIX}{_url(view.case_id)}/{_url(view.ct.name)}" if view.ct is not None else None,
        "window": [level - width / 2, level + width / 2],
        "opacity": DEFAULT_OPACITY,
        "names": {str(v): n for v, n in view.labels.items()},
        "colors": {str(v): list(c) for v, c in view.colors.items()},
    }
    legend = "".join(
        f'<li data-value="{value}"><span class="swatch" style="background:{color_hex(view.colors[value])}"></span>'
        f'<span class="name">{esc(name)}</span><span class="ml"></span></li>'
        for value, name in view.labels.items() if value in view.colors)
    links = [f'<a href="../{_url(view.label_map)}">label map</a>']
    links += [f'<a href="../{_url(name)}">{esc(text)}</a>' for text, name in view.files.items()]
    if has_index:
        links.insert(0, '<a href="../index.html">overview</a>')
    note = f'<p class="note">{esc(view.ct_note)}</p>' if view.ct_note else ""
    title = f"{view.case_id} · {view.task}"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        f'<script src="../{NIIVUE_PATH}"></script></head>',
        '<body data-state="loading">',
        f"<header><h1>{esc(title)}</h1>{' · '.join(links)}</header>",
        '<main><div id="view"><canvas id="gl"></canvas></div>',
        ('<aside><label>label opacity <input id="opacity" type="range" min="0" max="100" '
         f'value="{round(DEFAULT_OPACITY * 100)}"></label>'),
        note,
        '<p><span id="present">…</span> structure(s) found</p>',
        f'<ul id="legend">{legend}</ul></aside></main>',
        '<div id="hover">hover over the image to see the structure</div>',
        f'<script type="application/json" id="case-data">{_json_script(data)}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]) + "\n"


def render_case_list(case_ids: list[str], *, title: str) -> str:
    """A plain list of the folder's cases, shown at the root when the folder has no ``index.html``."""
    esc = html.escape
    items = "".join(f'<li><a href=".view/{_url(c)}">{esc(c)}</a></li>' for c in case_ids)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title></head>'
            f"<body><h1>{esc(title)}</h1><ul>{items or '<li>no case with a label map</li>'}</ul></body></html>\n")
