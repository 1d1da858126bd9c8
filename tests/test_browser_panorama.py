"""The panorama tab used in headless Chromium as a newcomer would: read the plan, paint a panorama,
look around it in the 360° viewer and re-expose it; and Stop, which saves nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import GENERATION_TIMEOUT_MS, browser  # noqa: F401 (fixture)
from test_browser_control import page  # noqa: F401 (fixture: a 1280×1200 page)
from test_browser_sphere import canvas_pixels
from test_panorama_app import PLAN

pytestmark = pytest.mark.browser
VIEWER = "#panorama-viewer .sphere-frame"
CANVAS = "#panorama-viewer canvas"


def open_panorama(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_role("tab", name="360° Panorama").click()
    expect(page.locator("#panorama-generate")).to_be_visible()
    page.wait_for_timeout(1000)


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(value)
    box.press("Enter")


def set_text(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.blur()


def test_a_panorama_in_the_page_is_planned_painted_and_explored(app, page):
    from playwright.sync_api import expect

    url, outputs = app
    open_panorama(page, url)
    plan = page.locator("#panorama-plan")
    expect(plan).to_contain_text("16 views (90° FOV, 50% overlap): 8 at pitch +0°")
    expect(plan).to_contain_text("Covers 100.0% of the sphere")
    # The plan as JSON, edited by hand: the summary follows, and a gap is said at once
    page.locator("#panorama-views-panel").click()
    page.locator("#panorama-edit-plan").click()
    expect(page.locator("#panorama-views textarea")).to_have_value(re.compile(r'"yaw": 45, "pitch": 0, "fov": 90'))
    set_text(page, "panorama-views", '[{"yaw": 0, "pitch": 0, "fov": 90}]')
    expect(plan).to_contain_text("of the sphere unpainted")
    set_text(page, "panorama-views", PLAN)
    expect(plan).to_contain_text("6 views (your JSON)")

    set_text(page, "panorama-prompt", "sunset at a lookout point with autumn maple trees, 360 panorama")
    set_number(page, "panorama-width", "512")
    set_number(page, "panorama-steps", "2")
    page.locator("#panorama-generate").click()
    status = page.locator("#panorama-status")
    expect(status).to_contain_text(re.compile(r"Done: 1 image, seed \d+"), timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#panorama-gallery img").first).to_be_visible()
    links = page.locator("#panorama-downloads a[href]")
    expect(links).to_have_count(8)  # .hdr, .exr, four exposures, the cubemap and the video
    hrefs = links.evaluate_all("links => links.map(a => a.href)")
    for suffix in (".hdr", ".exr", "-ev0.png", "-ev-9.png", "-cubemap.png", "-pan.mp4"):
        assert any(h.endswith(suffix) for h in hrefs), (suffix, hrefs)
    expect(page.locator("#panorama-pan video")).to_have_count(1)

    # The viewer shows the HDR: not blank; dragging turns it; the exposure slider re-exposes it
    page.wait_for_function(f"() => document.querySelector('{VIEWER}')?.dataset.state === 'ready'")
    assert page.locator(VIEWER).get_attribute("data-mode") == "hdr"
    page.locator(VIEWER).scroll_into_view_if_needed()
    before = canvas_pixels(page, CANVAS)
    assert before.std() > 3
    canvas = page.locator("#panorama-viewer canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 - 200, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    assert float(page.locator(VIEWER).get_attribute("data-yaw")) != 0
    turned = canvas_pixels(page, CANVAS)
    assert np.abs(turned - before).mean() > 2
    page.locator(f"{VIEWER} .sphere-exposure input").evaluate(
        "input => { input.value = '-4'; input.dispatchEvent(new Event('input', {bubbles: true})); }")
    page.wait_for_function(f"() => document.querySelector('{VIEWER}').dataset.ev === '-4.0'")
    darker = canvas_pixels(page, CANVAS)
    assert darker.mean() < turned.mean() * 0.5
    page.screenshot(path=str(outputs.parent / "panorama-tab.png"), full_page=True)
    assert page.page_errors == []


def test_stop_ends_a_panorama_between_views_and_saves_nothing(app, page):
    from playwright.sync_api import expect

    url, outputs = app
    open_panorama(page, url)
    set_text(page, "panorama-prompt", "a beach")
    set_number(page, "panorama-width", "512")
    set_number(page, "panorama-steps", "150")
    before = set(outputs.rglob("*")) if outputs.exists() else set()
    page.locator("#panorama-generate").click()
    status = page.locator("#panorama-status")
    expect(status).to_contain_text(re.compile(r"View 1 of 16 \(yaw 0°, pitch 0°\) · step \d+ of 150"),
                                   timeout=GENERATION_TIMEOUT_MS)
    page.locator("#panorama-stop").click()
    expect(status).to_contain_text(re.compile(r"Stopped .*view 1 of 16.* nothing was saved", re.IGNORECASE),
                                   timeout=GENERATION_TIMEOUT_MS)
    after = set(outputs.rglob("*")) if outputs.exists() else set()
    assert after == before
