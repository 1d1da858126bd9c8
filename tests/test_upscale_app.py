"""The upscale tab in the running app: `/upscale` through gradio_client, and the tab used in
headless Chromium as a newcomer would (upload, read the plan, upscale, browse the deep zoom, stop)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import GENERATION_TIMEOUT_MS, UI_TIMEOUT_MS, browser  # noqa: F401 (fixture)

FAST = dict(num_inference_steps=2, slider=1, seed=3, model="tiny")


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("upscale") / "small.png"
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def test_upscale_api_returns_the_full_image_and_details(client, app, picture):
    from gradio_client import handle_file

    path, details = client.predict(image=handle_file(str(picture)), scale=2, **FAST, api_name="/upscale")
    with Image.open(path) as image:
        assert image.size == (128, 96) and image.format == "PNG"
        assert '"task": "upscale"' in image.text["studio"]
    assert details["upscale"]["output_size"] == [128, 96] and details["upscale"]["stages"] == [[128, 96]]
    assert details["scale"] == 2 and details["slider"] == 1 and details["seed"] == 3
    saved = [p for p in app[1].rglob("*.dzi")]
    assert saved and all((p.parent / f"{p.stem}_files").is_dir() for p in saved)


def test_upscale_api_parameters_default_all_but_the_image(client):
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/upscale"]
    params = {p["parameter_name"]: p for p in endpoint["parameters"]}
    for name in ("image", "scale", "prompt", "negative_prompt", "num_inference_steps", "slider", "seed", "model",
                 "phase_fusion", "laplacian_fusion", "tile_controlnet"):
        assert name in params, name
    assert [n for n, p in params.items() if not p["parameter_has_default"]] == ["image"]


@pytest.mark.parametrize("changes, message", [
    (dict(scale=0.5), "Scale (scale) must be a finite number in [1, 64], got 0.5"),
    (dict(slider=5), "Slider (slider) must be in [0, 2] (the steps run), got 5"),
])
def test_upscale_api_refuses_bad_input(client, picture, changes, message):
    from gradio_client import handle_file

    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(image=handle_file(str(picture)), **{**FAST, "scale": 2, **changes}, api_name="/upscale")


def test_upscale_api_refuses_a_target_beyond_the_pixel_limit(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "square.png"
    Image.new("RGB", (300, 300), (120, 90, 60)).save(path)
    # 300 × 64 = 19200 px a side: 369 megapixels, past the default 16384² (268 megapixels)
    with pytest.raises(Exception, match="makes 300×300 into 19200×19200 .* at most 268 megapixels are allowed"):
        client.predict(image=handle_file(str(path)), **{**FAST, "scale": 64}, api_name="/upscale")


def test_upscale_api_refuses_a_file_that_is_not_an_image(client, tmp_path):
    from gradio_client import handle_file

    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    with pytest.raises(Exception, match="not an image|cannot be read|cannot identify"):
        client.predict(image=handle_file(str(fake)), **FAST, api_name="/upscale")


# --- in the browser -----------------------------------------------------------------------------

@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1200})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.page_errors = []
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    yield pg
    context.close()


def open_upscale(page, url: str, picture) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_role("tab", name="Upscale").click()
    expect(page.locator("#upscale-generate")).to_be_visible()
    page.wait_for_timeout(1000)
    with page.expect_response(lambda r: "/upload" in r.url and r.status == 200):
        page.locator("#upscale-image input[type=file]").first.set_input_files(str(picture))


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(value)
    box.press("Enter")


@pytest.mark.browser
def test_upscale_in_the_page_shows_the_plan_the_result_and_a_deep_zoom(app, page, picture):
    from playwright.sync_api import expect

    url, outputs = app
    tiles = []
    page.on("response", lambda r: tiles.append(r.status) if "_files/" in r.url else None)
    open_upscale(page, url, picture)
    plan = page.locator("#upscale-plan")
    expect(plan).to_contain_text("64×48 → 128×96 → 256×192 in 2 stages (×2, ×2)")
    # A target long side sets the scale; the plan follows.
    long_side = page.locator("#upscale-long-side textarea, #upscale-long-side input").first
    long_side.fill("128")
    long_side.press("Enter")
    expect(plan).to_contain_text("64×48 → 128×96 in 1 stage (×2)")
    set_number(page, "upscale-num-inference-steps", "2")
    set_number(page, "upscale-slider", "1")
    expect(plan).to_contain_text("guided steps per stage: 1 of 2")

    page.locator("#upscale-generate").click()
    status = page.locator("#upscale-status")
    expect(status).to_contain_text(re.compile(r"Done: 1 image, seed \d+, 2 steps"), timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#upscale-gallery img").first).to_be_visible()
    expect(page.locator("#upscale-download")).to_contain_text(".png")
    expect(page.locator("#upscale-zoom .openseadragon-canvas").first).to_be_visible()
    deadline = time.time() + 20
    while not tiles and time.time() < deadline:
        page.wait_for_timeout(250)
    assert tiles and set(tiles) == {200}, tiles  # the deep zoom fetched its tiles
    page.screenshot(path=str(outputs.parent / "upscale-tab.png"), full_page=True)
    assert page.page_errors == []


@pytest.mark.browser
def test_stop_ends_an_upscale_and_saves_nothing(app, page, picture):
    from playwright.sync_api import expect

    url, outputs = app
    open_upscale(page, url, picture)
    set_number(page, "upscale-num-inference-steps", "150")
    before = set(outputs.rglob("*")) if outputs.exists() else set()
    page.locator("#upscale-generate").click()
    status = page.locator("#upscale-status")
    expect(status).to_contain_text(re.compile(r"Stage 1 of 2 \(128×96\) · step \d+ of 150 · patch \d+ of 6"),
                                   timeout=GENERATION_TIMEOUT_MS)
    page.locator("#upscale-stop").click()
    expect(status).to_contain_text(re.compile(r"Stopped: Stage 1 of 2 .* nothing was saved"),
                                   timeout=GENERATION_TIMEOUT_MS)
    after = set(outputs.rglob("*")) if outputs.exists() else set()
    assert after == before
