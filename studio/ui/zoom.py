"""A deep-zoom viewer (OpenSeadragon, vendored in assets/) for outputs too large to show whole. No torch here.

The viewer is a `gr.HTML` whose value is the URL of a `.dzi` (or "" for none). OpenSeadragon's
script comes from `head=`, which Gradio injects into the page and waits for before `js_on_load`
runs; `js_on_load` opens the viewer and re-opens it whenever the value changes. The template never
depends on the value: Gradio re-renders a changed template by patching the DOM, which would strip
the viewer's own elements.

Files are served by Gradio's file route, so the app must launch with the outputs folder and
`assets/` in `allowed_paths` (app.py does).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import gradio as gr

OPENSEADRAGON = Path(__file__).resolve().parents[2] / "assets" / "openseadragon"
PLACEHOLDER = "The deep-zoom view appears here after an upscale."
HEIGHT_PX = 520


def file_url(path: Path) -> str:
    """The URL under which Gradio serves a local file in an allowed path (Gradio 6: /gradio_api/file=<abs path>)."""
    return "/gradio_api/file=" + quote(Path(path).resolve().as_posix())


def viewer_value(dzi_path: Path | None) -> str:
    """The viewer's value for a .dzi file: its URL, or "" to show the placeholder."""
    return "" if dzi_path is None else file_url(dzi_path)


HTML_TEMPLATE = f"""
<div class="zoom-frame">
  <div class="zoom-osd"></div>
  <p class="zoom-placeholder">{PLACEHOLDER}</p>
</div>
"""

CSS_TEMPLATE = f"""
.zoom-frame {{ position: relative; width: 100%; height: {HEIGHT_PX}px; }}
.zoom-osd {{ width: 100%; height: 100%; background: #111; border-radius: 6px; }}
.zoom-placeholder {{ position: absolute; inset: 0; margin: 0; display: flex; align-items: center;
  justify-content: center; color: #aaa; pointer-events: none; }}
"""

# `element`, `props` and `watch` are given by gr.HTML; `OpenSeadragon` is loaded by `head`.
JS_ON_LOAD = """
const box = element.querySelector('.zoom-osd');
const placeholder = element.querySelector('.zoom-placeholder');
let viewer = null;
function open(url) {
  if (viewer) { viewer.destroy(); viewer = null; }
  placeholder.style.display = url ? 'none' : '';
  if (!url) return;
  viewer = OpenSeadragon({
    element: box, prefixUrl: PREFIX_URL, tileSources: url,
    showNavigator: true, showRotationControl: false, maxZoomPixelRatio: 4, visibilityRatio: 0.5,
  });
}
open(props.value);
watch('value', () => open(props.value));
"""


def zoom_viewer(elem_id: str) -> gr.HTML:
    """The deep-zoom viewer, 520 px high and full width; set its value with `viewer_value(dzi_path)`."""
    images = json.dumps(file_url(OPENSEADRAGON / "images") + "/")
    return gr.HTML(
        value="",
        html_template=HTML_TEMPLATE,
        css_template=CSS_TEMPLATE,
        js_on_load=JS_ON_LOAD.replace("PREFIX_URL", images),
        head=f'<script src="{file_url(OPENSEADRAGON / "openseadragon.min.js")}"></script>',
        elem_id=elem_id,
        min_height=HEIGHT_PX,
    )
