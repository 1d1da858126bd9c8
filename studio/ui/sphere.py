"""A 360° viewer of equirectangular panoramas (three.js, vendored in assets/three/); it re-exposes the HDR. No torch.

The viewer is a `gr.HTML` whose value is a JSON object of file URLs, `{"hdr", "exr", "ldr"}` (any
may be null), or "" for none. The browser shows the panorama on the inside of a sphere: drag to
look around, wheel to zoom, a slider for the exposure (EV) of the HDR, a full-screen button. When
neither the .hdr nor the .exr loads, it shows the LDR image and says so.

The viewer's code is an ES module, `assets/sphere-viewer.js`, that imports three.js by relative
URLs (the vendored loaders' `from 'three'` is rewritten to `'./three.module.js'`, see
assets/three/README.md), so no import map or bundler is needed: `js_on_load` runs `import(url)`
and hands the frame to the module's `mount`. As in the deep-zoom viewer (zoom.py), the template
never depends on the value, and files are served by Gradio's file route, so the app must launch
with the outputs folder and `assets/` in `allowed_paths` (app.py does).
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from studio.ui.zoom import file_url

ASSETS = Path(__file__).resolve().parents[2] / "assets"
VIEWER_MODULE = ASSETS / "sphere-viewer.js"
PLACEHOLDER = "The 360° view appears here after a panorama is made."
LDR_NOTE = "HDR unavailable — showing the LDR image"
HEIGHT_PX = 520


def sphere_value(hdr_path: Path | None, ldr_path: Path | None, exr_path: Path | None = None) -> str:
    """The viewer's value: the panorama's file URLs as JSON, or "" (no file) to show the placeholder."""
    paths = {"hdr": hdr_path, "exr": exr_path, "ldr": ldr_path}
    if all(path is None for path in paths.values()):
        return ""
    return json.dumps({kind: None if path is None else file_url(path) for kind, path in paths.items()})


# The module sets data-state ("empty", "loading", "ready", "error") and, on every render, data-mode
# ("hdr" or "ldr"), data-yaw, data-pitch, data-fov (degrees) and data-ev on the frame; the CSS
# below shows the placeholder, the bar and the LDR note from them.
HTML_TEMPLATE = f"""
<div class="sphere-frame" data-state="empty">
  <div class="sphere-stage"></div>
  <p class="sphere-placeholder">{PLACEHOLDER}</p>
  <div class="sphere-bar">
    <span class="sphere-status"></span>
    <span class="sphere-note">{LDR_NOTE}</span>
    <label class="sphere-exposure">Exposure
      <input type="range" min="-10" max="4" step="0.1" value="0" aria-label="Exposure (EV)">
      <output>EV +0.0</output>
    </label>
    <button type="button" class="sphere-fullscreen">Full screen</button>
  </div>
</div>
"""

CSS_TEMPLATE = f"""
.sphere-frame {{ position: relative; width: 100%; height: {HEIGHT_PX}px; background: #111; border-radius: 6px;
  overflow: hidden; user-select: none; }}
.sphere-frame:fullscreen {{ height: 100%; border-radius: 0; }}
.sphere-stage {{ position: absolute; inset: 0; touch-action: none; cursor: grab; }}
.sphere-stage:active {{ cursor: grabbing; }}
.sphere-stage canvas {{ display: block; width: 100%; height: 100%; }}
.sphere-placeholder {{ position: absolute; inset: 0; margin: 0; display: flex; align-items: center;
  justify-content: center; color: #aaa; pointer-events: none; }}
.sphere-frame:not([data-state="empty"]) .sphere-placeholder {{ display: none; }}
.sphere-bar {{ position: absolute; left: 8px; right: 8px; bottom: 8px; display: flex; flex-wrap: wrap; gap: 6px 16px;
  align-items: center; padding: 6px 10px; border-radius: 6px; background: rgba(0, 0, 0, 0.6); color: #eee;
  font-size: 13px; line-height: 1.4; }}
.sphere-frame[data-state="empty"] .sphere-bar {{ display: none; }}
.sphere-frame:not([data-state="ready"]) :is(.sphere-exposure, .sphere-fullscreen) {{ display: none; }}
.sphere-bar span, .sphere-bar output {{ color: #eee; font-size: 13px; }}
.sphere-status {{ flex: 1 1 auto; }}
.sphere-frame[data-state="error"] .sphere-bar .sphere-status {{ color: #ff8a80; }}
.sphere-bar .sphere-note {{ color: #ffd180; }}
.sphere-frame:not([data-mode="ldr"]) .sphere-note {{ display: none; }}
.sphere-exposure {{ display: flex; align-items: center; gap: 8px; margin: 0; color: inherit; }}
.sphere-exposure input {{ width: 180px; margin: 0; }}
.sphere-exposure output {{ min-width: 5.5em; font-variant-numeric: tabular-nums; }}
.sphere-exposure:has(input:disabled) {{ opacity: 0.5; }}
.sphere-fullscreen {{ padding: 2px 10px; border: 1px solid #888; border-radius: 4px; background: #333; color: #eee;
  font: inherit; cursor: pointer; }}
"""

# `element`, `props` and `watch` are given by gr.HTML. The module import can fail (a file missing,
# assets/ not in allowed_paths): say so in the frame rather than leave it blank.
JS_ON_LOAD = """
const frame = element.querySelector('.sphere-frame');
import(VIEWER_URL)
  .then((viewer) => viewer.mount(frame, props, watch))
  .catch((error) => {
    console.error('360° viewer:', error);
    frame.dataset.state = 'error';
    frame.querySelector('.sphere-status').textContent = `Could not load the 360° viewer: ${error.message}`;
  });
"""


def sphere_viewer(elem_id: str) -> gr.HTML:
    """The 360° viewer, 520 px high and full width; set its value with `sphere_value(hdr, ldr, exr)`."""
    return gr.HTML(
        value="",
        html_template=HTML_TEMPLATE,
        css_template=CSS_TEMPLATE,
        js_on_load=JS_ON_LOAD.replace("VIEWER_URL", json.dumps(file_url(VIEWER_MODULE))),
        elem_id=elem_id,
        min_height=HEIGHT_PX,
    )
