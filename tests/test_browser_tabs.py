"""The two tabs used as a newcomer would, in headless Chromium: send an image from text-to-image
to image-to-image, every aspect bucket of every model, errors that keep the last results, the
style picker, the session history, and what the page says about models that cannot load here."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import GENERATION_TIMEOUT_MS, UI_TIMEOUT_MS, browser, output_pngs  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def studio(app):
    """Studio on the tiny model, offline: (url, outputs folder). The session's app: started with the
    same arguments a module app would have, it saves a start and a model load (CI time)."""
    return app


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.page_errors = []
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    yield pg
    context.close()


def open_studio(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#prompt textarea")).to_be_visible()


def choose(page, elem_id: str, option: str | re.Pattern) -> None:
    """Pick `option` in a dropdown as a user does (fires its .input event)."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def dropdown_options(page, elem_id: str) -> list[str]:
    """The options a dropdown offers (opened, read, and closed by a click elsewhere)."""
    page.locator(f"#{elem_id} input").click()
    options = [o.replace("✓", "").strip() for o in page.get_by_role("option").all_inner_texts()]
    page.locator("h1").first.click()  # Escape would leave it focused, and a click would not reopen it
    return options


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def generate(page, prefix: str = "", expect_text: str | re.Pattern = re.compile(r"\bDone: ")) -> None:
    from playwright.sync_api import expect

    status = page.locator(f"#{prefix}status .status")  # the message itself, not Gradio's timer beside it
    before = status.text_content()
    page.locator(f"#{prefix}generate").click()
    expect(status).not_to_have_text(before, timeout=GENERATION_TIMEOUT_MS)  # this run's, not the last one's
    expect(status).to_contain_text(expect_text, timeout=GENERATION_TIMEOUT_MS)


def shown_image(page, gallery_id: str) -> Image.Image:
    """The first image a gallery shows, as the browser received it."""
    src = page.locator(f"#{gallery_id} img").first.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body()))


def test_send_to_image_to_image_and_run_it(studio, page, tmp_path):
    from playwright.sync_api import expect

    url, outputs = studio
    open_studio(page, url)
    page.locator("#prompt textarea").fill("a lighthouse at dawn")
    set_number(page, "width", 96)
    generate(page)
    made = shown_image(page, "gallery")
    assert made.size == (96, 64)

    page.locator("#send-txt2img-to-img2img").click()
    # The image-to-image tab opens with the picture in its input and proposes its aspect.
    expect(page.locator("#img2img-image img")).to_be_visible()
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("96")
    expect(page.locator("#img2img-height input[type=number]")).to_have_value("64")
    page.locator("#img2img-prompt textarea").fill("the same lighthouse at night")
    set_number(page, "img2img-strength", 0.5)
    set_number(page, "img2img-steps", 4)
    before = output_pngs(outputs)
    generate(page, "img2img-")
    expect(page.locator("#img2img-status")).to_contain_text("2 steps")  # int(4 · 0.5) of the schedule
    result = shown_image(page, "img2img-gallery")
    assert result.size == (96, 64)
    details = page.locator("#img2img-details").text_content()
    assert '"task": "img2img"' in details and '"strength": 0.5' in details
    (saved,) = output_pngs(outputs) - before
    with Image.open(saved) as im:
        chunk = json.loads(im.text["studio"])
    assert chunk["task"] == "img2img" and chunk["request"]["prompt"] == "the same lighthouse at night"

    # Its PNG restores its settings in the tab that made it, from wherever the user is.
    page.get_by_role("tab", name="Text to image").click()
    page.locator("#preset-tools").first.click()
    page.locator("#png-settings input[type=file]").set_input_files(str(saved))
    expect(page.locator("#preset-status")).to_contain_text("Loaded the settings of an image made by Studio")
    expect(page.get_by_role("tab", name="Image to image")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img-prompt textarea")).to_have_value("the same lighthouse at night")
    expect(page.locator("#img2img-strength input[type=number]")).to_have_value("0.5")
    assert page.page_errors == []


TINY_MODELS = {"tiny": "Tiny test model", "tiny-fast": "Tiny one-step", "tiny-sd15": "Tiny SD1.5"}


def test_every_aspect_bucket_sets_the_size_and_the_extremes_generate(studio, page):
    # Each bucket of each tiny model generating at its size: test_txt2img_pipeline (no page needed)
    from playwright.sync_api import expect

    url, _ = studio
    open_studio(page, url)
    page.locator("#prompt textarea").fill("a field")
    for k, (name, label) in enumerate(TINY_MODELS.items()):
        choose(page, "model", re.compile(rf"^{re.escape(label)}"))
        options = dropdown_options(page, "aspect")
        buckets = [o for o in options if "·" in o]
        assert len(buckets) == 9, options
        # The first model's every bucket sets the size; the others' two extremes (the same code, and
        # CI time). The first model's extremes are generated from the page.
        for option in buckets if k == 0 else [buckets[0], buckets[-1]]:
            ratio, size = (part.strip() for part in option.split("·"))
            w, h = (int(v) for v in size.split("×"))
            choose(page, "aspect", option)
            expect(page.locator("#width input[type=number]")).to_have_value(str(w))
            expect(page.locator("#height input[type=number]")).to_have_value(str(h))
            if k > 0 or option not in (buckets[0], buckets[-1]):
                continue
            generate(page)
            expect(page.locator("#details")).to_contain_text(f'"width": {w}')
            assert "Error" not in page.locator("#status").inner_text(), (name, option)
            assert shown_image(page, "gallery").size == (w, h), (name, option)
    # A size typed by hand is no bucket: the aspect says Custom (and a bucket size shows its bucket).
    set_number(page, "width", 72)
    expect(page.locator("#aspect input")).to_have_value("Custom")
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    expect(page.locator("#aspect input")).to_have_value("1:1 · 64×64")
    assert page.page_errors == []


def test_a_bad_input_keeps_the_last_results_and_says_so_once(studio, page):
    from playwright.sync_api import expect

    url, _ = studio
    open_studio(page, url)
    page.locator("#prompt textarea").fill("a harbour")
    generate(page)
    first_src = page.locator("#gallery img").first.get_attribute("src")
    seed = page.locator("#seed-used textarea, #seed-used input").first.input_value()
    page.locator("#camera #pitch textarea, #pitch input").first.fill("95")  # beyond ±60°
    page.locator("#generate").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Pitch (camera_pitch) must be empty or a finite number in [-60, 60], got 95.0")
    expect(status.locator(".error")).to_be_visible()
    # The previous results stay, with no error badge over them, and one message only.
    assert page.locator("#gallery img").first.get_attribute("src") == first_src
    assert page.locator("#seed-used textarea, #seed-used input").first.input_value() == seed
    assert page.locator("#gallery .error, #details .error").count() == 0
    assert page.locator(".toast-body").count() == 0


def test_reuse_seed_style_picker_and_history(studio, page):
    from playwright.sync_api import expect

    url, _ = studio
    open_studio(page, url)
    page.locator("#prompt textarea").fill("a quiet pond")
    page.locator("#style button.label-wrap, #style").first.click()
    choose(page, "style-name", "Watercolor")
    style_prompt = page.locator("#style-prompt textarea")
    expect(style_prompt).to_have_value(re.compile(r"\{prompt\}"))
    assert style_prompt.input_value() != "{prompt}"
    generate(page)
    seed = page.locator("#seed-used textarea, #seed-used input").first.input_value()
    expect(page.locator("#details")).to_contain_text('"style_name": "Watercolor"')
    page.locator("#reuse-seed").click()
    expect(page.locator("#seed input")).to_have_value(seed)

    # Change settings, then restore the first image's from the history.
    style_prompt.fill("")
    style_prompt.press_sequentially("oil painting of {prompt}")  # typed: the picker no longer names a library style
    expect(page.locator("#style-name input")).not_to_have_value("Watercolor")
    page.locator("#prompt textarea").fill("something else")
    page.locator("#history button.label-wrap, #history").first.click()
    page.locator("#history-gallery img").first.click()
    page.locator("#history-restore").click()
    expect(page.locator("#prompt textarea")).to_have_value("a quiet pond")
    expect(page.locator("#seed input")).to_have_value(seed)
    expect(page.locator("#style-name input")).to_have_value("Watercolor")


def test_models_that_cannot_load_are_marked_and_presets_keep_the_model(studio, page):
    from playwright.sync_api import expect

    url, _ = studio
    open_studio(page, url)
    options = dropdown_options(page, "model")
    marked = {o for o in options if "not available now" in o}
    assert any(o.startswith("SDXL 1.0 base") for o in marked), options
    assert not any(o.startswith("Tiny") for o in marked), options  # built in: always available
    # A preset for SDXL-Turbo: it says so, keeps the tiny model and fits the size to it.
    page.locator("#preset-picker input").click()
    page.get_by_role("option", name="Fast draft").click()
    status = page.locator("#preset-status")
    expect(status).to_contain_text("needs model 'sdxl-turbo', which is not available now")
    expect(page.locator("#model input")).to_have_value(re.compile(r"^Tiny test model"))
    expect(page.locator("#steps input[type=number]")).to_have_value("1")  # the rest of the preset applies
    expect(page.locator("#preset-picker input")).to_have_value("Fast draft")
    width = int(page.locator("#width input[type=number]").input_value())
    assert 64 <= width <= 512
    generate(page)
    # Edited by hand, the settings are no longer the preset's: the picker lets go of its name.
    set_number(page, "steps", 3)
    expect(page.locator("#preset-picker input")).to_have_value("")
