"""The 360° panorama viewer (studio/ui/sphere.py, assets/sphere-viewer.js) in headless Chromium, offline.

A tiny Blocks shows a synthetic panorama: a sky of four colours, one per quarter of longitude
(red, green, blue, yellow from yaw −180° to +180°), a darker ground, and a yellow sun 2^6 above
white at yaw +20°, elevation 25°. Seen at yaw 0 the view's left half is green sky, its right half
blue sky, and the sun is up and right of the centre: a mirrored or upside-down sphere fails.

The browser tests are skipped when /usr/bin/chromium or Playwright is missing, unless
STUDIO_REQUIRE_BROWSER=1 (CI), which turns a missing browser into a failure.
"""

from __future__ import annotations

import base64
import io
from urllib.parse import urlparse

import numpy as np
import pytest

from conftest import free_port
from studio.ui.sphere import ASSETS, LDR_NOTE, PLACEHOLDER, sphere_value, sphere_viewer

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import UI_TIMEOUT_MS, browser  # noqa: F401 (fixture)

HEIGHT, WIDTH = 128, 256
SUN_YAW, SUN_ELEVATION, SUN_RADIUS = 20.0, 25.0, 8.0  # degrees
SUN = (64.0, 48.0, 16.0)  # linear RGB: 2^6 above white in red, so white at EV 0 and yellow at EV −6
SKY = [(0.7, 0.05, 0.05), (0.05, 0.6, 0.05), (0.05, 0.1, 0.8), (0.6, 0.6, 0.05)]  # one per 90° of yaw
THREE_FILES = {"three.module.js", "three.core.js", "HDRLoader.js", "EXRLoader.js", "fflate.module.js"}


def synthetic_radiance() -> np.ndarray:
    """The test panorama as float32 linear RGB, HEIGHT × WIDTH × 3 (row 0 is the zenith, column 0 yaw −180°)."""
    elevation = np.radians(90 - (np.arange(HEIGHT) + 0.5) * 180 / HEIGHT)[:, None]
    yaw = np.radians(-180 + (np.arange(WIDTH) + 0.5) * 360 / WIDTH)[None, :]
    quarter = np.minimum((np.degrees(yaw) + 180) // 90, 3).astype(int)
    radiance = np.asarray(SKY, np.float32)[np.broadcast_to(quarter, (HEIGHT, WIDTH))]
    radiance[np.broadcast_to(elevation < 0, (HEIGHT, WIDTH))] *= 0.2  # the ground
    sun_yaw, sun_elevation = np.radians(SUN_YAW), np.radians(SUN_ELEVATION)
    cos_distance = (np.sin(elevation) * np.sin(sun_elevation)
                    + np.cos(elevation) * np.cos(sun_elevation) * np.cos(yaw - sun_yaw))
    radiance[cos_distance > np.cos(np.radians(SUN_RADIUS))] = SUN
    return radiance


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] → 8-bit sRGB (IEC 61966-2-1)."""
    x = np.clip(linear, 0, 1)
    return np.round(255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)).astype(np.uint8)


# --- The viewer in a real browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sphere_app(tmp_path_factory):
    """A tiny Blocks with the viewer and a button per value to show; yields its URL."""
    import cv2
    import gradio as gr
    import OpenEXR
    from PIL import Image

    folder = tmp_path_factory.mktemp("sphere")
    radiance = synthetic_radiance()
    assert cv2.imwrite(str(folder / "pano.hdr"), np.ascontiguousarray(radiance[..., ::-1]))
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {"RGB": radiance}).write(str(folder / "pano.exr"))
    Image.fromarray(srgb_encode(radiance)).save(folder / "pano.png")
    values = {
        "hdr": sphere_value(folder / "pano.hdr", folder / "pano.png"),
        "exr": sphere_value(None, folder / "pano.png", folder / "pano.exr"),
        "ldr-only": sphere_value(None, folder / "pano.png"),
        "missing-hdr": sphere_value(folder / "missing.hdr", folder / "pano.png"),
        "nothing-loads": sphere_value(folder / "missing.hdr", None),
        "clear": sphere_value(None, None),
    }
    with gr.Blocks() as demo:
        viewer = sphere_viewer("sphere")
        for name, value in values.items():
            gr.Button(name, elem_id=f"show-{name}").click(lambda value=value: value, None, viewer)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                allowed_paths=[str(folder), str(ASSETS)])
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture
def page(browser, sphere_app):
    """The app's page, offline: requests off the loopback are refused and recorded in page.offsite."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.offsite, pg.page_errors, pg.console_errors, pg.responses = [], [], [], []

    def offline(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            pg.offsite.append(route.request.url)
            route.abort()

    pg.route("**/*", offline)
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    pg.on("console", lambda msg: pg.console_errors.append(msg.text) if msg.type == "error" else None)
    pg.on("response", lambda r: pg.responses.append((r.url, r.status)))
    pg.goto(sphere_app)
    yield pg
    context.close()


def show(page, name: str, mode: str | None = None, state: str = "ready") -> None:
    """Press the button that shows value `name`; wait until the viewer reaches `state` and has drawn in `mode`.

    (Each open clears data-mode and each render sets it, so the wait cannot end on the previous panorama.)
    """
    page.locator(f"#show-{name}").click()
    page.wait_for_function("([state, mode]) => { const data = document.querySelector('#sphere .sphere-frame').dataset;"
                           " return data.state === state && (data.mode ?? null) === mode; }", arg=[state, mode])


def frame_data(page) -> dict:
    return page.locator("#sphere .sphere-frame").evaluate("frame => ({...frame.dataset})")


def canvas_pixels(page, canvas: str = "#sphere canvas") -> np.ndarray:
    """The canvas as an H × W × 3 uint8 array (the drawing buffer is preserved, so any time after a render)."""
    from PIL import Image

    url = page.locator(canvas).evaluate("canvas => canvas.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def sun_centre(pixels: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the clipped-white pixels as fractions of the width and height, or None when there are none."""
    ys, xs = np.nonzero((pixels >= 250).all(-1))
    return None if len(xs) < 20 else (xs.mean() / pixels.shape[1], ys.mean() / pixels.shape[0])


def set_exposure(page, ev: float) -> None:
    """Move the exposure slider as a user would (its `input` event) and wait for the re-render."""
    page.locator("#sphere .sphere-exposure input").evaluate(
        "(input, ev) => { input.value = String(ev); input.dispatchEvent(new Event('input', {bubbles: true})); }", ev)
    page.wait_for_function(f"() => document.querySelector('#sphere .sphere-frame').dataset.ev === '{ev:.1f}'")


def assert_oriented(pixels: np.ndarray) -> None:
    """At yaw 0: green sky on the left, blue on the right, ground below, the sun up and right."""
    h, w, _ = pixels.shape
    left, right = pixels[int(0.35 * h), int(0.25 * w)], pixels[int(0.35 * h), int(0.85 * w)]
    ground = pixels[int(0.8 * h), int(0.25 * w)]
    assert left[1] > left[0] + 60 and left[1] > left[2] + 60, f"left of the centre should be green sky, got {left}"
    assert right[2] > right[0] + 60 and right[2] > right[1] + 60, f"right of the centre should be blue sky, got {right}"
    assert ground.sum() < left.sum() - 100, f"the ground ({ground}) should be darker than the sky ({left})"
    sun = sun_centre(pixels)
    assert sun is not None and 0.5 < sun[0] < 0.75 and sun[1] < 0.4, f"the sun should be up and right, at {sun}"


@pytest.mark.browser
def test_hdr_panorama_looks_around_zooms_and_re_exposes_offline(page):
    from playwright.sync_api import expect

    viewer = page.locator("#sphere")
    expect(viewer.get_by_text(PLACEHOLDER)).to_be_visible()
    show(page, "hdr", "hdr")
    expect(viewer.get_by_text(PLACEHOLDER)).to_be_hidden()
    expect(viewer.locator(".sphere-status")).to_have_text("HDR · drag to look around · wheel to zoom")
    expect(viewer.locator(".sphere-note")).to_be_hidden()
    expect(viewer.locator(".sphere-exposure input")).to_be_enabled()
    assert frame_data(page) == {
        "state": "ready", "mode": "hdr", "yaw": "0.00", "pitch": "0.00", "fov": "75.00", "ev": "0.0"}
    start = canvas_pixels(page)
    assert start.std() > 30, "the viewer looks blank"
    assert_oriented(start)
    viewer.screenshot(path="/tmp/sphere.png")

    # Dragging left by 200 px looks right (yaw +, the panorama follows the pointer): the sun moves left of the centre.
    box = viewer.locator(".sphere-stage").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 200, y, steps=8)
    page.mouse.up()
    page.wait_for_function("() => Number(document.querySelector('#sphere .sphere-frame').dataset.yaw) > 20")
    turned = canvas_pixels(page)
    assert np.abs(turned - start).mean() > 5, "dragging did not change the view"
    assert float(frame_data(page)["yaw"]) == pytest.approx(200 * 75 / box["height"], abs=0.5)
    sun = sun_centre(turned)
    assert sun is not None and sun[0] < 0.5, f"after looking right the sun should be left of the centre, at {sun}"

    # The wheel zooms out, up to 100°.
    page.mouse.wheel(0, 2000)
    page.wait_for_function("() => document.querySelector('#sphere .sphere-frame').dataset.fov === '100.00'")
    page.mouse.wheel(0, -300)
    page.wait_for_function("() => Number(document.querySelector('#sphere .sphere-frame').dataset.fov) < 100")

    # EV −6 re-exposes the HDR: everything darkens, and the sun, white at EV 0, shows its yellow.
    before = canvas_pixels(page)
    set_exposure(page, -6)
    expect(viewer.locator(".sphere-exposure output")).to_have_text("EV −6.0")
    dark = canvas_pixels(page)
    assert dark.mean() < before.mean() / 2, (dark.mean(), before.mean())
    assert sun_centre(dark) is None, "at EV −6 nothing should clip to white"
    yellow = (dark[..., 0] >= 240) & (dark[..., 1] > 180) & (dark[..., 2] < 180)
    assert yellow.sum() > 50, "at EV −6 the sun should show as yellow"
    viewer.screenshot(path="/tmp/sphere-ev-6.png")

    # Full screen fills the window with the frame, and the canvas follows; a second press restores it.
    viewer.get_by_role("button", name="Full screen").click()
    page.wait_for_function("() => document.fullscreenElement?.matches('#sphere .sphere-frame')"
                           " && document.querySelector('#sphere canvas').height === window.innerHeight")
    viewer.get_by_role("button", name="Exit full screen").click()
    page.wait_for_function("() => !document.fullscreenElement"
                           " && document.querySelector('#sphere canvas').height === 520")

    # A new value replaces the renderer (one canvas), resets the view, and an empty one shows the placeholder.
    show(page, "ldr-only", "ldr")
    expect(viewer.locator("canvas")).to_have_count(1)
    assert frame_data(page)["yaw"] == "0.00"
    show(page, "clear", state="empty")
    expect(viewer.get_by_text(PLACEHOLDER)).to_be_visible()
    expect(viewer.locator("canvas")).to_have_count(0)

    assert page.offsite == [], f"the viewer must work offline, but the page asked for {page.offsite}"
    three = {urlparse(u).path.rsplit("/", 1)[-1]: s for u, s in page.responses if "/assets/three/" in u}
    assert three == dict.fromkeys(THREE_FILES, 200), three
    assert page.page_errors == [] and page.console_errors == [], (page.page_errors, page.console_errors)


@pytest.mark.browser
def test_exr_panorama_is_shown_as_hdr(page):
    show(page, "exr", "hdr")
    assert frame_data(page)["mode"] == "hdr"
    assert_oriented(canvas_pixels(page))  # EXRLoader flips rows itself: the sun must still be up
    set_exposure(page, -6)
    assert sun_centre(canvas_pixels(page)) is None
    assert page.page_errors == [] and page.console_errors == [], (page.page_errors, page.console_errors)


@pytest.mark.browser
@pytest.mark.parametrize("name", ["ldr-only", "missing-hdr"])
def test_without_hdr_the_ldr_is_shown_and_exposure_disabled(page, name):
    from playwright.sync_api import expect

    viewer = page.locator("#sphere")
    show(page, name, "ldr")
    assert frame_data(page)["mode"] == "ldr"
    expect(viewer.locator(".sphere-note")).to_be_visible()
    expect(viewer.locator(".sphere-note")).to_have_text(LDR_NOTE)
    expect(viewer.locator(".sphere-exposure input")).to_be_disabled()
    expect(viewer.locator(".sphere-status")).to_have_text("LDR · drag to look around · wheel to zoom")
    pixels = canvas_pixels(page)
    assert pixels.std() > 30, "the viewer looks blank"
    assert_oriented(pixels)
    if name == "ldr-only":
        viewer.screenshot(path="/tmp/sphere-ldr.png")
    assert page.page_errors == [] and page.offsite == [], (page.page_errors, page.offsite)


@pytest.mark.browser
def test_a_panorama_that_cannot_load_says_so(page):
    from playwright.sync_api import expect

    show(page, "nothing-loads", state="error")
    expect(page.locator("#sphere .sphere-status")).to_contain_text("Could not show the panorama: the hdr did not load")
    expect(page.locator("#sphere canvas")).to_have_count(0)
    assert page.page_errors == [], page.page_errors
