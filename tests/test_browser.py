"""End-to-end tests: drive the running app in headless Chromium (Debian's, via Playwright).

Skipped when /usr/bin/chromium or Playwright is missing, unless STUDIO_REQUIRE_BROWSER=1 (CI),
which turns a missing browser into a failure.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, browser_missing, start_app, stop_app

pytestmark = pytest.mark.browser

GENERATION_TIMEOUT_MS = 120_000  # the first generation builds and loads the tiny model
UI_TIMEOUT_MS = 30_000


# Checked at import so that a skip does not first start the session's app.
if (_missing := browser_missing()) is not None:
    if os.environ.get("STUDIO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"STUDIO_REQUIRE_BROWSER=1 but {_missing}", pytrace=False)
    pytest.skip(_missing, allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    # The page builds five tabs before it shows anything: on a busy two-core machine that can take
    # longer than Playwright's 5 s default, so assertions wait as long as other UI steps.
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.page_errors = []  # uncaught JavaScript exceptions, checked by the tests
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    yield pg
    context.close()


def output_pngs(outputs: Path) -> set[Path]:
    """Finished PNGs in the outputs folder (atomic writes leave .tmp-* files only while writing)."""
    return {p for p in outputs.rglob("*.png") if not p.name.startswith(".tmp-")} if outputs.exists() else set()


def test_generate_shows_image_seed_and_saves_png(app, page, tmp_path):
    from playwright.sync_api import expect
    from PIL import Image

    url, outputs = app
    before = output_pngs(outputs)

    page.goto(url)
    prompt = page.locator("#prompt textarea")
    expect(prompt).to_be_visible()
    width = int(page.get_by_label("number input for Width").input_value())
    height = int(page.get_by_label("number input for Height").input_value())
    assert (width, height) == (64, 64), "the tiny model's default size should be 64x64"
    seed_used = page.get_by_label("Seed used")
    seed_before = seed_used.input_value()

    prompt.fill("a lighthouse at dawn")
    page.locator("#generate").click()

    # The end of the job: before it the gallery may show a live preview of the denoising.
    expect(page.locator("#status")).to_contain_text("Done", timeout=GENERATION_TIMEOUT_MS)
    img = page.locator("#gallery img").first
    expect(img).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=UI_TIMEOUT_MS
    )
    natural = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [width, height], f"gallery image is {natural}, sliders say {width}x{height}"

    # "Seed used" is filled in by the same event; it shows 0 before any generation.
    expect(seed_used).not_to_have_value(seed_before, timeout=UI_TIMEOUT_MS)
    expect(seed_used).to_have_value(re.compile(r"^\d+$"))
    seed = int(seed_used.input_value())
    assert 0 <= seed < 2**32

    page.screenshot(path=str(tmp_path / "after-generation.png"), full_page=True)

    # Exactly one new PNG on disk (batch size 1), named <time>-<seed>-<tag>.png, carrying the settings.
    new = output_pngs(outputs) - before
    assert len(new) == 1, f"expected one new PNG in {outputs}, found {sorted(new)}"
    saved = new.pop()
    assert saved.name.split("-")[1] == str(seed), f"{saved.name} does not carry the seed shown ({seed})"
    src = img.get_attribute("src")
    assert src.rsplit("/", 1)[-1] == saved.name, f"gallery shows {src}, but {saved.name} was saved"
    with Image.open(saved) as im:
        assert im.size == (width, height)
        meta = json.loads(im.text["studio"])
    assert meta["request"]["prompt"] == "a lighthouse at dawn"
    assert meta["seed"] == seed == meta["request"]["seed"]
    assert meta["request"]["model"] == "tiny"

    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_default_model_unavailable_offline_shows_tiny_notice(page, tmp_path, tiny_cache):
    from playwright.sync_api import expect

    # No --model: the registry default (SDXL) is not cached and the Hub is offline (HF_HUB_OFFLINE=1).
    proc, url, _ = start_app(tmp_path, tiny_cache)
    try:
        page.goto(url)
        notice = page.locator("#model-notice")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("Notice:")
        expect(notice).to_contain_text("sdxl-base")
        expect(notice).to_contain_text("built-in 'tiny' model")
        # The UI really switched to the tiny model: its label in the dropdown, its 64x64 size.
        expect(page.get_by_label("Model", exact=True)).to_have_value(re.compile(r"^Tiny test model"))
        expect(page.get_by_label("number input for Width")).to_have_value("64")
        assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"
    finally:
        stop_app(proc)


def test_stop_ends_a_running_generation(app, page):
    from playwright.sync_api import expect

    url, _ = app
    page.goto(url)
    # A long job: 150 steps at 512 px takes the tiny model ~15 s on this CPU.
    for label, value in [("Width", "512"), ("Height", "512"), ("Steps", "150")]:
        box = page.get_by_label(f"number input for {label}")
        box.fill(value)
        box.press("Enter")
    page.locator("#prompt textarea").fill("a storm over the sea")
    page.locator("#generate").click()
    gallery, details, status = page.locator("#gallery"), page.locator("#details"), page.locator("#status")
    # The status line counts steps, and a preview of the image being denoised shows before the end.
    expect(status).to_contain_text(re.compile(r"Step \d+ of 150"), timeout=GENERATION_TIMEOUT_MS)
    expect(gallery.locator("img").first).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
    assert "Stopped" not in status.text_content() and "Done" not in status.text_content()
    page.locator("#stop").click()

    expect(status).to_contain_text(re.compile(r"Stopped after \d+ of 150 steps"), timeout=GENERATION_TIMEOUT_MS)
    expect(details).to_contain_text('"interrupted": true')
    steps_done = int(re.search(r"Stopped after (\d+) of 150", status.text_content()).group(1))
    assert 1 <= steps_done < 150, f"the job ran {steps_done} of 150 steps"
    assert f'"steps_done": {steps_done}' in details.text_content()
    expect(gallery.locator("img").first).to_be_visible()  # what was made so far is shown

    # The app is ready for the next job at once, which runs to the end.
    steps = page.get_by_label("number input for Steps")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#generate").click()
    expect(status).to_contain_text(re.compile(r"Done: 1 image, seed \d+, 2 steps"), timeout=GENERATION_TIMEOUT_MS)
    expect(details).to_contain_text('"interrupted": false')
    expect(details).to_contain_text('"steps_done": 2')
