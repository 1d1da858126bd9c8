"""One exposed Studio (--user-data private): a preset a browser saves is listed for it, again after
a reload (its token lives in localStorage), and never for another visitor."""

from __future__ import annotations

import time

import pytest

# Importing test_browser applies its browser check (skip without Chromium, fail when required).
from test_browser import browser  # noqa: F401 (fixture)
from test_browser_tabs import dropdown_options, open_studio

pytestmark = pytest.mark.browser


def new_page(browser):
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.page_errors = []
    page.on("pageerror", lambda exc: page.page_errors.append(str(exc)))
    return page


def options_once_loaded(page, wanted: str, timeout_s: float = 20) -> list[str]:
    """The picker's options once `wanted` is among them (the page learns its owner just after it
    shows), or as they are after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        options = dropdown_options(page, "preset-picker")
        if wanted in options or time.monotonic() > deadline:
            return options
        time.sleep(0.5)


def test_a_saved_preset_is_its_browsers_own_across_reloads(browser, private_app):
    from playwright.sync_api import expect

    url, tmp = private_app
    folder = tmp / "presets"
    from gradio_client import Client

    alice = new_page(browser)
    try:
        open_studio(alice, url)
        alice.locator("#preset-tools").first.click()
        alice.locator("#preset-name textarea, #preset-name input").first.fill("Alice look")
        alice.locator("#save-preset").click()
        expect(alice.locator("#preset-status")).to_have_text("Saved preset Alice look (yours: other visitors do not see it).")  # no server path
        assert "Alice look" in dropdown_options(alice, "preset-picker")
        (saved,) = folder.glob("browser-*/Alice look.json")

        others = {p["name"] for p in Client(url, verbose=False).predict(api_name="/presets")}
        assert others and "Alice look" not in others  # another visitor

        alice.reload()  # a new session: the browser's token brings the same owner back
        open_studio(alice, url)
        options = options_once_loaded(alice, "Alice look")
        assert "Alice look" in options and others < set(options)
        assert list(folder.glob("browser-*/*.json")) == [saved]  # one owner folder, one file
        assert alice.page_errors == []
    finally:
        alice.context.close()
