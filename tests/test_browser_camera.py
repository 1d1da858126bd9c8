"""End-to-end tests of the Camera panel, draft mode and the live preview in headless Chromium.

Expected values come from the formulas, not from Studio's code: the field of view across the
long side is 2·atan(36 / (2f)); the horizon lies at row y_h = H/2 + f_px·tan(pitch) with
f_px = f·max(W, H) / 36.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from pathlib import Path

import pytest

# Importing test_browser applies its browser check at import: without Chromium or Playwright this
# module is skipped too, or fails under STUDIO_REQUIRE_BROWSER=1, exactly as that one does.
from test_browser import GENERATION_TIMEOUT_MS, browser, output_pngs, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

TINY_LABEL = "Tiny test model (random weights, images are noise)"
TINY_FAST_LABEL = "Tiny one-step test model (LoRA on tiny)"
CAMERA_BOXES = {"focal": "focal-length", "pitch": "pitch", "aperture": "aperture", "focus": "focus-distance"}
PREVIEW_TIMEOUT_S = 30


# --- formulas ------------------------------------------------------------------------------------

def fov_deg(focal_mm: float, sensor_mm: float) -> float:
    return math.degrees(2 * math.atan(sensor_mm / (2 * focal_mm)))


def fov_across(focal_mm: float, width: int, height: int) -> tuple[float, float]:
    """(horizontal, vertical) field of view; the long side spans 36 mm of sensor."""
    long_fov, short_fov = fov_deg(focal_mm, 36), fov_deg(focal_mm, 36 * min(width, height) / max(width, height))
    return (long_fov, short_fov) if width >= height else (short_fov, long_fov)


def horizon(focal_mm: float, pitch_deg: float, width: int, height: int) -> float:
    f_px = focal_mm * max(width, height) / 36
    return height / 2 + f_px * math.tan(math.radians(pitch_deg))


# --- helpers -------------------------------------------------------------------------------------

def camera_box(page, name: str):
    return page.locator(f"#{CAMERA_BOXES[name]}").locator("textarea, input").first


def clear_camera(page) -> None:
    """Empty the four camera boxes, as a user turns the controls off."""
    from playwright.sync_api import expect

    for name in CAMERA_BOXES:
        camera_box(page, name).fill("")
    for name in CAMERA_BOXES:
        expect(camera_box(page, name)).to_have_value("")
    expect(summary(page)).to_have_text("Camera off: plain text-to-image.")


def open_app(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#prompt textarea")).to_be_visible()
    expect(summary(page)).to_have_text("Camera off: plain text-to-image.")


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def summary(page):
    return page.locator("#camera-summary")


def summary_numbers(text: str) -> dict[str, float]:
    """The field of view and horizon row written in the summary line."""
    fov = re.search(r"field of view ([\d.]+)° × ([\d.]+)°", text)
    assert fov, f"no field of view in {text!r}"
    out = {"fov_w": float(fov.group(1)), "fov_h": float(fov.group(2))}
    row = re.search(r"horizon at row (-?\d+) of (\d+)", text)
    if row:
        out["row"], out["of"] = float(row.group(1)), int(row.group(2))
    return out


def expect_fov(page, focal: float, width: int, height: int) -> str:
    """Wait for the summary of `focal` mm and check its field of view; returns the line."""
    from playwright.sync_api import expect

    expect(summary(page)).to_contain_text(f"{focal:g} mm: field of view")
    text = summary(page).inner_text()
    want_w, want_h = fov_across(focal, width, height)
    got = summary_numbers(text)
    assert got["fov_w"] == pytest.approx(want_w, abs=0.051), text
    assert got["fov_h"] == pytest.approx(want_h, abs=0.051), text
    return text


def pick_preset(page, name: str) -> None:
    from playwright.sync_api import expect

    page.locator("#preset-picker input").click()
    page.get_by_role("option", name=name, exact=True).click()
    expect(page.locator("#preset-status")).to_contain_text(f"Applied preset {name}")


def details_json(page) -> dict:
    """The Generation details panel read back as JSON (collapsed nested lists read as null)."""
    text = "".join(page.locator("#details").inner_text().split("\n"))
    text = re.sub(r"Array\(\d+\)", "null", text[text.index("{"):])
    return json.loads(text)


def pixels(png_bytes: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png_bytes)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def render_draft(client, prompt: str):
    """What the live preview of `prompt` must show on the tiny model with the seed left at -1: the
    same request through the API (tiny-fast, 1 step, guidance 0, Euler trailing, 64×64, seed 0)."""
    gallery, _, meta = client.predict(prompt, "", 64, 64, 1, 0.0, 0, 1, "Euler trailing", "tiny-fast",
                                      api_name="/txt2img")
    assert meta["model"] == "tiny-fast" and meta["seed"] == 0
    return pixels(Path(gallery[0]["image"]).read_bytes())


def preview_src(page):
    return page.locator("#preview img").get_attribute("src")


def wait_for_preview(page, expected, after: str | None = None) -> str:
    """Wait until the preview shows exactly the pixels `expected` (a newer src than `after`);
    returns its src. Intermediate drafts may pass by (the live preview test checks that none is superseded)."""
    deadline = time.monotonic() + PREVIEW_TIMEOUT_S
    seen, last = after, "no preview image appeared"
    while True:
        remaining_ms = (deadline - time.monotonic()) * 1000
        try:
            page.wait_for_function(
                "prev => { const i = document.querySelector('#preview img');"
                " return !!(i && i.getAttribute('src') && i.getAttribute('src') !== prev); }",
                arg=seen, timeout=max(remaining_ms, 1))
        except Exception as exc:
            imgs = page.evaluate("() => Array.from(document.querySelectorAll('#preview img')).map(i => i.src)")
            caption = page.locator("#preview-caption").inner_text()
            raise AssertionError(f"the preview never showed the expected draft within {PREVIEW_TIMEOUT_S} s "
                                 f"(caption {caption!r}, images {imgs}); last: {last}") from exc
        seen = preview_src(page)
        got = pixels(page.request.get(seen).body())
        if got.shape == expected.shape and (got == expected).all():
            return seen
        last = f"{seen} differs (shape {got.shape}, max difference {abs(got - expected).max()})"


# --- tests ---------------------------------------------------------------------------------------

def test_a_fresh_page_has_the_camera_off_and_its_summary_follows_lens_tilt_and_size(app, page):
    from playwright.sync_api import expect

    url, _ = app
    open_app(page, url)  # the summary says the camera is off ...
    for name in CAMERA_BOXES:  # ... and every camera box is empty
        expect(camera_box(page, name), f"camera box {name!r}").to_have_value("", timeout=3_000)

    w, h = 256, 192
    set_number(page, "Width", w)
    set_number(page, "Height", h)
    camera_box(page, "focal").fill("24")
    camera_box(page, "pitch").fill("10")

    expect(summary(page)).to_contain_text("pitch +10° puts the horizon at row")
    text = expect_fov(page, 24, w, h)  # 73.7° × 58.7°
    got = summary_numbers(text)
    assert got["of"] == h, text
    assert got["row"] == pytest.approx(horizon(24, 10, w, h), abs=0.51), text  # row 126

    # Just past half the vertical field of view (29.4°) the horizon leaves the frame.
    assert horizon(24, 30, w, h) > h and horizon(24, -30, w, h) < 0
    camera_box(page, "pitch").fill("30")
    expect(summary(page)).to_contain_text("pitch +30° puts the horizon below the frame.")
    camera_box(page, "pitch").fill("-30")
    expect(summary(page)).to_contain_text("pitch -30° puts the horizon above the frame.")

    # A longer lens at the same size narrows the view; without pitch there is no horizon.
    camera_box(page, "pitch").fill("")
    camera_box(page, "focal").fill("85")
    expect(summary(page)).not_to_contain_text("horizon")
    expect_fov(page, 85, w, h)

    camera_box(page, "focal").fill("")
    expect(summary(page)).to_have_text("Camera off: plain text-to-image.")
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_generate_with_camera_blurs_and_keeps_the_sharp_image(app, page):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    url, outputs = app
    before = output_pngs(outputs)
    open_app(page, url)
    w, h = 96, 64
    set_number(page, "Width", w)
    set_number(page, "Height", h)
    set_number(page, "Steps", 2)
    page.locator("#seed input").fill("3")  # a fixed seed: the same image (and depth map) every run
    for name, value in [("focal", "85"), ("pitch", "5"), ("aperture", "1.4"), ("focus", "2")]:
        camera_box(page, name).fill(value)
    page.locator("#prompt textarea").fill("a lighthouse on a cliff")
    page.locator("#generate").click()

    expect(page.locator("#details")).to_contain_text('"interrupted"', timeout=GENERATION_TIMEOUT_MS)
    images = page.locator("#gallery img")
    expect(images).to_have_count(2)
    expect(images.nth(0)).to_have_attribute("alt", "f/1.4 lens blur")
    expect(images.nth(1)).to_have_attribute("alt", "sharp")

    row = horizon(85, 5, w, h)  # 51.83
    meta = details_json(page)
    assert meta["interrupted"] is False and meta["steps_done"] == 2 and meta["seed"] == 3
    assert (meta["camera_pitch"], meta["focal_length_mm"], meta["aperture_f_number"], meta["focus_distance_m"]) \
        == (5, 85, 1.4, 2)
    assert meta["camera"]["horizon_row"] == pytest.approx(row, abs=0.01)
    assert meta["depth_of_field"]["focus_distance_m"] == [2.0]
    assert "sharp focus throughout" in meta["styled_prompt"]  # lens mode: the model is asked for no bokeh

    # On disk: <name>.png (blurred) and <name>-sharp.png, the ones the gallery shows, same settings.
    new = output_pngs(outputs) - before
    blurred = [p for p in new if not p.stem.endswith("-sharp")]
    assert len(new) == 2 and len(blurred) == 1, f"expected a PNG and its -sharp.png, found {sorted(new)}"
    blurred = blurred[0]
    sharp = blurred.with_name(blurred.stem + "-sharp.png")
    assert sharp in new, f"no {sharp.name} beside {blurred.name}"
    shown = [src.rsplit("/", 1)[-1] for src in images.evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")]
    assert shown == [blurred.name, sharp.name]
    with Image.open(blurred) as im:
        assert im.size == (w, h)
        chunk = json.loads(im.text["studio"])
    assert chunk["details"]["camera"]["horizon_row"] == pytest.approx(row, abs=0.01)
    assert chunk["details"]["depth_of_field"]["focus_distance_m"] == [2.0]

    # The lens blur really blurs: same size, less pixel-to-pixel contrast than the sharp image.
    soft, crisp = pixels(blurred.read_bytes()), pixels(sharp.read_bytes())
    assert soft.shape == crisp.shape == (h, w, 3)

    def roughness(a):
        return np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()

    assert roughness(soft) < 0.75 * roughness(crisp), (roughness(soft), roughness(crisp))
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_presets_fill_and_clear_the_camera(app, page):
    from playwright.sync_api import expect

    url, _ = app
    open_app(page, url)
    page.locator("#dof-mode input[value='prompt']").check()

    # 85 mm at f/1.8, lens blur; no pitch, no focus distance. The preset's SDXL cannot load here,
    # so the tiny model stays, at its bucket nearest the preset's 896×1152 portrait: 64×88.
    pick_preset(page, "Photoreal portrait")
    for name, value in [("focal", "85"), ("aperture", "1.8"), ("pitch", ""), ("focus", "")]:
        expect(camera_box(page, name), f"camera box {name!r}").to_have_value(value)
    expect(page.locator("#dof-mode input[value='lens']")).to_be_checked()
    expect(page.get_by_label("number input for Height")).to_have_value("88")
    expect_fov(page, 85, 64, 88)  # the long side is the height
    expect(summary(page)).not_to_contain_text("horizon")

    # 24 mm tilted up 8°, landscape (1344×768, the tiny model's 112×64): the portrait's aperture is cleared.
    pick_preset(page, "Cinematic landscape")
    for name, value in [("focal", "24"), ("pitch", "8"), ("aperture", ""), ("focus", "")]:
        expect(camera_box(page, name), f"camera box {name!r}").to_have_value(value)
    expect(page.get_by_label("number input for Width")).to_have_value("112")
    text = expect_fov(page, 24, 112, 64)
    assert summary_numbers(text).get("row") == pytest.approx(horizon(24, 8, 112, 64), abs=0.51), text

    # A preset without a camera section turns every camera control off.
    pick_preset(page, "Low VRAM")
    for name in CAMERA_BOXES:
        expect(camera_box(page, name), f"camera box {name!r}").to_have_value("")
    expect(summary(page)).to_have_text("Camera off: plain text-to-image.")
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_draft_mode_toggles_between_model_and_draft(app, page):
    from playwright.sync_api import expect

    url, _ = app
    open_app(page, url)
    model = page.locator("#model input")
    steps, guidance = page.locator("#steps input[type=number]"), page.locator("#guidance input[type=number]")
    scheduler = page.locator("#scheduler input")
    expect(model).to_have_value(TINY_LABEL)
    set_number(page, "Steps", 7)
    expect(steps).to_have_value("7")

    page.locator("#draft-mode").click()
    expect(model).to_have_value(TINY_FAST_LABEL)
    expect(steps).to_have_value("1")
    expect(guidance).to_have_value("0")
    expect(scheduler).to_have_value("Euler trailing")

    page.locator("#draft-mode").click()
    expect(model).to_have_value(TINY_LABEL)
    expect(steps).to_have_value("2")
    expect(guidance).to_have_value("5")
    expect(scheduler).to_have_value("Euler")
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


FIRST, SUFFIX = "a red barn", " at night in deep winter"


@pytest.fixture(scope="module")
def drafts(app):
    """The pixels the preview must show for FIRST and FIRST + SUFFIX (rendered through the API)."""
    from gradio_client import Client

    client = Client(app[0], verbose=False)
    out = {p: render_draft(client, p) for p in (FIRST, FIRST + SUFFIX)}
    assert (out[FIRST] != out[FIRST + SUFFIX]).any(), "the two prompts must give different drafts"
    return out


def test_live_preview_draws_the_latest_prompt_and_no_superseded_draft(app, page, drafts):
    from playwright.sync_api import expect

    url, _ = app
    open_app(page, url)
    expect(page.locator("#preview")).to_be_hidden()
    page.locator("#live-preview input").check()
    expect(page.locator("#preview")).to_be_visible()

    prompt = page.locator("#prompt textarea")
    prompt.fill(FIRST)
    first = wait_for_preview(page, drafts[FIRST])
    caption = page.locator("#preview-caption")
    expect(caption).to_contain_text("Draft: tiny-fast, 1 step(s), 64×64, seed 0.")
    expect(caption).to_contain_text("Not saved")
    # Record every image the preview shows from now on.
    page.evaluate("""() => {
        window.previewSrcs = [];
        const box = document.querySelector('#preview');
        new MutationObserver(() => {
            const src = box.querySelector('img')?.getAttribute('src');
            if (src && src !== window.previewSrcs.at(-1)) window.previewSrcs.push(src);
        }).observe(box, {subtree: true, childList: true, attributes: true});
    }""")

    prompt.press("End")
    prompt.press_sequentially(SUFFIX, delay=30)  # faster than the debounce
    final = wait_for_preview(page, drafts[FIRST + SUFFIX], after=first)
    assert final != first
    shown = [s for s in page.evaluate("window.previewSrcs") if s != first]
    assert shown == [final], f"{len(shown)} drafts were shown for one burst of typing: {shown}"
    expect(caption).to_contain_text("Draft: tiny-fast, 1 step(s), 64×64, seed 0.")

    page.locator("#live-preview input").uncheck()
    expect(page.locator("#preview")).to_be_hidden()
    # Turned on with a prompt already written, the preview draws that prompt.
    prompt.fill(FIRST)
    page.locator("#live-preview input").check()
    expect(page.locator("#preview")).to_be_visible()
    wait_for_preview(page, drafts[FIRST], after=final)
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"
