"""The upscale tab used in headless Chromium as a newcomer would: upload, read the plan, set a
target size, upscale, browse the deep zoom; and Stop, which saves nothing."""

from __future__ import annotations

import re
import time

import pytest

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import GENERATION_TIMEOUT_MS, browser  # noqa: F401 (fixture)
from test_browser_control import page  # noqa: F401 (fixture: a 1280×1200 page)
from test_upscale_app import small_picture

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    return small_picture(tmp_path_factory.mktemp("upscale-page"))


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
