"""The ControlNet and inpainting tabs used as a newcomer would, in headless Chromium: upload a
photo, preview its depth hint, generate with it; paint a mask in the editor and inpaint, and the
pixels away from the stroke stay exactly the photo's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import GENERATION_TIMEOUT_MS, UI_TIMEOUT_MS, browser, output_pngs  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1200})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.page_errors = []
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    yield pg
    context.close()


@pytest.fixture
def scene(tmp_path):
    """A small landscape: sky, ground, a red house and a sun."""
    image = Image.new("RGB", (320, 240), (90, 140, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 150, 320, 240), fill=(70, 120, 60))
    draw.ellipse((200, 40, 260, 100), fill=(250, 230, 120))
    draw.rectangle((60, 90, 120, 170), fill=(180, 60, 50))
    path = tmp_path / "scene.png"
    image.save(path)
    return path


def upload(page, selector: str, path) -> None:
    """Set a file input and wait until the browser has sent the file to the server."""
    with page.expect_response(lambda r: "/upload" in r.url and r.status == 200):
        page.locator(selector).first.set_input_files(str(path))


def upload_to_editor(page, elem_id: str, path) -> None:
    """Open a picture in an image editor. The editor draws it on its canvas first and sends it
    with the next event, so give it a moment to take the picture in."""
    from playwright.sync_api import expect

    page.locator(f"#{elem_id} input[type=file]").first.set_input_files(str(path))
    expect(page.locator(f"#{elem_id} canvas").first).to_be_visible()
    page.wait_for_timeout(2000)


def open_tab(page, url: str, name: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#prompt textarea")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_role("tab", name=name, exact=True).click()
    # Gradio's image editor ignores a picture opened in its first moments on screen (it shows it,
    # but its value stays empty); a person never opens one that fast.
    page.wait_for_timeout(1000)


def details(page, elem_id: str) -> dict:
    return json.loads(page.locator(f"#{elem_id} .json-holder, #{elem_id}").first.text_content() or "{}")


def test_preview_a_depth_hint_then_generate_with_it(app, page, scene):
    from playwright.sync_api import expect

    url, outputs = app
    open_tab(page, url, "ControlNet")
    upload(page, "#controlnet-image input[type=file]", scene)
    expect(page.locator("#controlnet-image img")).to_be_visible()
    page.locator("#controlnet-preview").click()
    expect(page.locator("#controlnet-status .status")).to_contain_text("Hint ready (depth, 64×64)",
                                                                      timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#controlnet-hint canvas").first).to_be_visible()
    before = output_pngs(outputs)
    page.locator("#controlnet-prompt textarea").fill("a house by a lake")
    page.locator("#controlnet-generate").click()
    expect(page.locator("#controlnet-status .status")).to_contain_text("Done", timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#controlnet-gallery img").first).to_be_visible()
    made = output_pngs(outputs) - before
    assert len(made) == 1
    chunk = json.loads(Image.open(made.pop()).text["studio"])
    assert chunk["task"] == "controlnet"
    unit = chunk["details"]["control"][0]
    # The previewed hint went back with the request: used as given, not made again
    assert (unit["controlnet"], unit["hint_given"], unit["hint_size"]) == ("tiny-controlnet-depth", True, [64, 64])
    assert not page.page_errors


def test_an_empty_mask_is_a_message_then_paint_a_mask_and_inpaint_only_there(app, page, scene):
    from playwright.sync_api import expect

    url, outputs = app
    open_tab(page, url, "Inpaint")
    upload_to_editor(page, "inpaint-editor", scene)
    # Nothing painted yet: a message, not a generation
    before = output_pngs(outputs)
    page.locator("#inpaint-generate").click()
    expect(page.locator("#inpaint-status .status")).to_contain_text("Mask (mask) is empty",
                                                                    timeout=GENERATION_TIMEOUT_MS)
    assert output_pngs(outputs) == before

    canvas = page.locator("#inpaint-editor canvas").first
    box = canvas.bounding_box()
    # A short stroke near the middle of the picture (the brush is the editor's default tool)
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.4
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(x + 5 * step, y + 2 * step)
    page.mouse.up()
    before = output_pngs(outputs)
    page.locator("#inpaint-prompt textarea").fill("a tree")
    page.locator("#inpaint-generate").click()
    expect(page.locator("#inpaint-status .status")).to_contain_text("Done", timeout=GENERATION_TIMEOUT_MS)
    made = output_pngs(outputs) - before
    assert len(made) == 1
    out = np.asarray(Image.open(made.pop()).convert("RGB"), dtype=np.int16)
    source = np.asarray(Image.open(scene).convert("RGB"), dtype=np.int16)
    assert out.shape == source.shape
    changed = np.any(out != source, axis=-1)
    assert changed.any(), "the painted area was repainted"
    rows, cols = np.nonzero(changed)
    # Only around the stroke: the corners and the house on the left are the photo's, bit for bit
    assert changed.mean() < 0.25
    assert not changed[:40, :40].any() and not changed[-40:, -40:].any() and not changed[100:160, 60:100].any()
    assert 60 < cols.mean() < 260 and 30 < rows.mean() < 200


def test_a_controlnet_png_restores_its_units_in_the_controlnet_tab(app, page, scene):
    from gradio_client import Client, handle_file
    from playwright.sync_api import expect

    url, outputs = app
    gallery, _, _ = Client(url, verbose=False).predict(
        control_image=handle_file(str(scene)), control_type="canny", controlnet_conditioning_scale=0.7,
        control_guidance_end=0.8, canny_low_threshold=40, prompt="a red house", api_name="/controlnet")
    png = gallery[0]["image"]
    page.goto(url)
    expect(page.locator("#prompt textarea")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_text("Save a preset").first.click()
    page.locator("#png-settings input[type=file]").set_input_files(png)
    expect(page.locator("#preset-status")).to_contain_text("Loaded the settings of an image made by Studio")
    expect(page.get_by_role("tab", name="ControlNet", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#controlnet-prompt textarea")).to_have_value("a red house")
    expect(page.locator("#controlnet-type input")).to_have_value("canny")
    expect(page.locator("#controlnet-weight input[type=number]")).to_have_value("0.7")
    expect(page.locator("#controlnet-end input[type=number]")).to_have_value("0.8")
    expect(page.locator("#controlnet-canny-low input[type=number]")).to_be_visible()
    expect(page.locator("#controlnet-canny-low input[type=number]")).to_have_value("40")
    assert not page.page_errors


def test_a_previewed_hint_does_not_outlive_its_control_type(app, page, scene):
    from playwright.sync_api import expect

    url, outputs = app
    open_tab(page, url, "ControlNet")
    upload(page, "#controlnet-image input[type=file]", scene)
    page.locator("#controlnet-preview").click()
    expect(page.locator("#controlnet-status .status")).to_contain_text("Hint ready (depth",
                                                                      timeout=GENERATION_TIMEOUT_MS)
    page.locator("#controlnet-type input").click()
    page.get_by_role("option", name="canny").click()
    expect(page.locator("#controlnet-canny-low input[type=number]")).to_be_visible()
    before = output_pngs(outputs)
    page.locator("#controlnet-generate").click()
    expect(page.locator("#controlnet-status .status")).to_contain_text("Done", timeout=GENERATION_TIMEOUT_MS)
    unit = json.loads(Image.open((output_pngs(outputs) - before).pop()).text["studio"])["details"]["control"][0]
    assert (unit["control_type"], unit["controlnet"], unit["hint_given"]) == ("canny", "tiny-controlnet-canny", False)
