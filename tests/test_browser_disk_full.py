"""In the page: when the outputs folder cannot be written, the status line says so and the images
stay in the gallery (to download from there)."""

from __future__ import annotations

import shutil
from datetime import datetime

import pytest

from test_browser import GENERATION_TIMEOUT_MS, browser, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_an_unwritable_outputs_folder_keeps_the_images_on_the_page(app, page):
    from playwright.sync_api import expect

    url, outputs = app
    day = outputs / f"{datetime.now():%Y-%m-%d}"
    day.mkdir(parents=True, exist_ok=True)
    aside = outputs.parent / "outputs-aside-browser"
    shutil.move(day, aside)
    day.write_text("a file where the day's folder should be")
    try:
        page.goto(url)
        page.locator("#prompt textarea").fill("a lighthouse")
        page.locator("#generate").click()
        status = page.locator("#status")
        expect(status.locator(".status.error")).to_contain_text(
            "The images could not be saved in", timeout=GENERATION_TIMEOUT_MS)
        expect(status).to_contain_text("They are shown here only: download the ones you want from the gallery")
        image = page.locator("#gallery img").first
        expect(image).to_be_visible()
        size = page.evaluate("img => [img.naturalWidth, img.naturalHeight]", image.element_handle())
        assert size[0] > 0 and size[1] > 0
        assert day.read_text() == "a file where the day's folder should be"
    finally:
        day.unlink()
        shutil.move(aside, day)
