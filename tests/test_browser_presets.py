"""End-to-end tests of the presets panel in headless Chromium: pick a preset, restore settings from
a PNG (Studio's own and AUTOMATIC1111's), share a link, and reject a bad preset file.

The app under test is started by this module with its own user presets folder holding a preset
for the tiny model: the shipped presets name real models that cannot generate offline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import start_app, stop_app

# Importing test_browser applies its browser check at import: without Chromium or Playwright this
# module is skipped too, or fails under STUDIO_REQUIRE_BROWSER=1, exactly as that one does.
from test_browser import GENERATION_TIMEOUT_MS, UI_TIMEOUT_MS, browser, output_pngs  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

TINY_LABEL = "Tiny test model (random weights, images are noise)"
TINY_SD15_LABEL = "Tiny SD1.5 test model (random weights)"

TINY_PRESET = {
    "schema_version": 1,
    "name": "Tiny test",
    "description": "The tiny model at 96x64, for browser tests.",
    "author": "tests",
    "model": "tiny",
    "style": {"name": "photo", "prompt": "a photo of {prompt}", "negative_prompt": "blurry"},
    "txt2img": {
        "prompt": None, "negative_prompt": None, "width": 96, "height": 64, "num_inference_steps": 3,
        "guidance_scale": 4.5, "scheduler": "DDIM", "seed": 1234, "batch_size": 1,
    },
}
# What the tiny preset puts in the widgets (values as the inputs show them).
TINY_VALUES = dict(model=TINY_LABEL, width="96", height="64", steps="3", guidance="4.5", scheduler="DDIM",
                   seed="1234", batch_size="1", style_prompt="a photo of {prompt}", style_negative="blurry")
# The tiny model's registry defaults: what a fresh page shows.
DEFAULT_VALUES = dict(prompt="", negative_prompt="", model=TINY_LABEL, width="64", height="64", steps="2",
                      guidance="5", scheduler="Euler", seed="-1", batch_size="1",
                      style_prompt="{prompt}", style_negative="")

# widget -> (elem_id, element inside it that holds the value)
WIDGETS = {
    "preset_picker": ("preset-picker", "input"),
    "prompt": ("prompt", "textarea"),
    "negative_prompt": ("negative-prompt", "textarea"),
    "model": ("model", "input"),
    "width": ("width", "input[type=number]"),
    "height": ("height", "input[type=number]"),
    "steps": ("steps", "input[type=number]"),
    "guidance": ("guidance", "input[type=number]"),
    "scheduler": ("scheduler", "input"),
    "seed": ("seed", "input[type=number]"),
    "batch_size": ("batch-size", "input[type=number]"),
    "style_prompt": ("style-prompt", "textarea"),
    "style_negative": ("style-negative", "textarea"),
}


@pytest.fixture(scope="module")
def presets_app(tmp_path_factory, tiny_cache):
    """Studio on the tiny model with a user presets folder holding "Tiny test": (url, outputs, folder)."""
    tmp = tmp_path_factory.mktemp("presets-app")
    folder = tmp / "my-presets"
    folder.mkdir()
    (folder / "Tiny test.json").write_text(json.dumps(TINY_PRESET, indent=2), encoding="utf-8")
    proc, url, outputs = start_app(tmp, tiny_cache, "--model", "tiny", "--user-presets", str(folder))
    try:
        yield url, outputs, folder
    finally:
        stop_app(proc)


@pytest.fixture
def new_page(browser):
    """A factory of pages, each in a fresh browser context (no shared state); all closed afterwards."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        contexts.append(context)
        pg = context.new_page()
        pg.set_default_timeout(UI_TIMEOUT_MS)
        pg.page_errors = []  # uncaught JavaScript exceptions, checked by the tests
        pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
        return pg

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    return new_page()


# --- helpers -------------------------------------------------------------------------------------

def widget(page, name: str):
    elem_id, inner = WIDGETS[name]
    return page.locator(f"#{elem_id} {inner}")


def open_app(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(widget(page, "prompt")).to_be_visible()
    open_accordion(page, "Style")  # the style textboxes are only rendered once their accordion opens


def open_accordion(page, title: str) -> None:
    from playwright.sync_api import expect

    title_span = page.locator("span", has_text=re.compile(rf"^{re.escape(title)}"))
    button = page.locator("button.label-wrap").filter(has=title_span)
    content = button.locator("xpath=following-sibling::div[@data-testid='accordion-content']")
    if not content.is_visible():
        button.click()
    expect(content).to_be_visible()


def open_tools(page) -> None:
    open_accordion(page, "Save a preset")


def choose(page, name: str, option: str) -> None:
    """Pick `option` in the dropdown widget `name` as a user does (fires its .input event)."""
    widget(page, name).click()
    page.get_by_role("option", name=option, exact=True).click()


def set_number(page, name: str, value) -> None:
    box = widget(page, name)
    box.fill(str(value))
    box.press("Enter")


def expect_widgets(page, values: dict[str, str]) -> None:
    from playwright.sync_api import expect

    for name, value in values.items():
        expect(widget(page, name), f"widget {name!r}").to_have_value(value)


def status(page):
    return page.locator("#preset-status [data-testid='markdown']")


# --- tests ---------------------------------------------------------------------------------------

def test_picking_presets_fills_widgets_and_keeps_the_prompt(presets_app, page):
    from playwright.sync_api import expect

    url, _, _ = presets_app
    open_app(page, url)
    expect_widgets(page, DEFAULT_VALUES)
    widget(page, "prompt").fill("a red fox in the snow")
    widget(page, "negative_prompt").fill("people")

    # A shipped preset for a model that is not on this machine: it says so, keeps the model this
    # machine has and fills the rest (512 px is within the tiny model's range).
    choose(page, "preset_picker", "Low VRAM")
    expect(status(page)).to_contain_text("Applied preset Low VRAM")
    expect(status(page)).to_contain_text("Stable Diffusion 1.5 at 512 px")
    expect(status(page)).to_contain_text("it needs model 'sd15', which is not available now")
    expect(status(page)).to_contain_text("so the current model 'tiny' is kept")
    expect_widgets(page, dict(
        model=TINY_LABEL, width="512", height="512", steps="25", guidance="7.5", scheduler="DPM++ 2M Karras",
        seed="-1", batch_size="1", style_prompt="{prompt}, high quality, detailed",
        style_negative="lowres, blurry, bad anatomy, watermark",
        # the preset's prompts are null: the user's own stay
        prompt="a red fox in the snow", negative_prompt="people",
    ))

    # The user's preset, picked after it: every value switches again, the prompts still stay.
    choose(page, "preset_picker", "Tiny test")
    expect(status(page)).to_contain_text("Applied preset Tiny test")
    expect(status(page)).not_to_contain_text("Low VRAM")
    expect_widgets(page, {**TINY_VALUES, "prompt": "a red fox in the snow", "negative_prompt": "people"})
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_studio_png_restores_the_settings_it_was_made_with(presets_app, page):
    from playwright.sync_api import expect

    url, outputs, _ = presets_app
    before = output_pngs(outputs)
    open_app(page, url)
    choose(page, "preset_picker", "Tiny test")
    expect_widgets(page, TINY_VALUES)
    widget(page, "prompt").fill("a tiny castle")
    widget(page, "negative_prompt").fill("rain")
    set_number(page, "seed", -1)  # a random seed: the PNG must restore the one actually used
    expect(widget(page, "seed")).to_have_value("-1")

    page.locator("#generate").click()
    expect(page.locator("#gallery img").first).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
    details = page.locator("#details")
    expect(details).to_contain_text('"interrupted": false', timeout=UI_TIMEOUT_MS)
    match = re.search(r'"seed":\s*(\d+)', details.text_content())
    assert match, details.text_content()
    seed = match.group(1)
    expect(page.get_by_label("Seed used")).to_have_value(seed)
    new = output_pngs(outputs) - before
    assert len(new) == 1, f"expected one new PNG in {outputs}, found {sorted(new)}"
    png = new.pop()
    assert f"-{seed}-" in png.name

    made_with = {**TINY_VALUES, "seed": seed, "prompt": "a tiny castle", "negative_prompt": "rain"}

    # Change (nearly) everything; the model first, as picking one resets the size, steps and sampler.
    choose(page, "model", TINY_SD15_LABEL)
    expect(widget(page, "steps")).to_have_value("2")  # the other model's defaults came in
    choose(page, "scheduler", "Euler a")
    for name, value in [("width", 128), ("height", 256), ("steps", 9), ("guidance", 2), ("seed", 5),
                        ("batch_size", 3)]:
        set_number(page, name, value)
    widget(page, "prompt").fill("something else")
    widget(page, "negative_prompt").fill("")
    widget(page, "style_prompt").fill("{prompt}, oil painting")
    widget(page, "style_negative").fill("")
    changed = dict(model=TINY_SD15_LABEL, scheduler="Euler a", width="128", height="256", steps="9",
                   guidance="2", seed="5", batch_size="3", prompt="something else", negative_prompt="",
                   style_prompt="{prompt}, oil painting", style_negative="")
    expect_widgets(page, changed)
    assert all(changed[k] != made_with[k] for k in changed), "every widget must differ before the restore"

    open_tools(page)
    page.locator("#png-settings input[type=file]").set_input_files(str(png))
    expect(status(page)).to_contain_text("Loaded the settings of an image made by Studio.")
    expect(status(page)).not_to_contain_text("Note:")
    expect_widgets(page, made_with)
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_automatic1111_png_fills_settings_and_keeps_the_model(presets_app, page, tmp_path):
    from PIL import Image, PngImagePlugin
    from playwright.sync_api import expect

    url, _, _ = presets_app
    png = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nNegative prompt: fog\nSteps: 7, Sampler: DPM++ 2M, Schedule type: Karras, "
                                "CFG scale: 3.5, Seed: 99, Size: 128x96, Model hash: abc, Model: dreamshaper_8")
    Image.new("RGB", (128, 96), "gray").save(png, pnginfo=info)

    open_app(page, url)
    expect_widgets(page, DEFAULT_VALUES)
    open_tools(page)
    page.locator("#png-settings input[type=file]").set_input_files(str(png))
    expect(status(page)).to_contain_text("Loaded the settings of an image made by AUTOMATIC1111")
    expect(status(page)).to_contain_text("'dreamshaper_8' is not in Studio's registry")
    expect(status(page)).to_contain_text("the current model is kept")
    expect_widgets(page, dict(
        prompt="a castle", negative_prompt="fog", steps="7", guidance="3.5", seed="99", width="128", height="96",
        scheduler="DPM++ 2M Karras", model=TINY_LABEL,
        # infotext carries no style: the current (default) one stays
        batch_size="1", style_prompt="{prompt}", style_negative="",
    ))
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"


def test_share_link_reproduces_the_settings_and_a_bad_one_changes_nothing(presets_app, new_page):
    from playwright.sync_api import expect

    url, _, _ = presets_app
    page = new_page()
    open_app(page, url)
    choose(page, "preset_picker", "Tiny test")
    expect_widgets(page, TINY_VALUES)
    widget(page, "prompt").fill("a shared harbour, at night")
    widget(page, "negative_prompt").fill("boats")
    set_number(page, "steps", 11)
    set_number(page, "batch_size", 2)
    shared = {**TINY_VALUES, "prompt": "a shared harbour, at night", "negative_prompt": "boats", "steps": "11",
              "batch_size": "2"}
    expect_widgets(page, shared)

    page.locator("#share-preset").click()
    link_box = page.locator("#share-link textarea")  # the accordion holding it opens by itself
    expect(link_box).to_have_value(re.compile(r"\?preset=[A-Za-z0-9_-]+$"))
    link = link_box.input_value()
    assert link.startswith(url + "?preset="), f"{link!r} does not point at the app at {url}"

    other = new_page()  # a fresh context: nothing carried over but the link
    open_app(other, link)
    expect(status(other)).to_contain_text("Applied the shared preset Shared settings.")
    expect_widgets(other, shared)

    bad = new_page()
    open_app(bad, url + "?preset=!!!")
    expect(status(bad)).to_contain_text("The link's preset was not applied")
    expect(status(bad)).to_contain_text("not a valid token")
    expect_widgets(bad, DEFAULT_VALUES)
    for pg in (page, other, bad):
        assert pg.page_errors == [], f"JavaScript errors on the page: {pg.page_errors}"


def import_bad_preset(page, url: str, tmp_path: Path):
    """Open the app, edit two widgets, import a preset whose steps are the string "20"; return the
    widget values from before the import."""
    bad = {**TINY_PRESET, "name": "Bad steps",
           "txt2img": {**TINY_PRESET["txt2img"], "num_inference_steps": "20", "width": 128}}
    path = tmp_path / "bad-steps.json"
    path.write_text(json.dumps(bad), encoding="utf-8")

    open_app(page, url)
    widget(page, "prompt").fill("my own prompt")
    set_number(page, "steps", 4)
    before = {**DEFAULT_VALUES, "prompt": "my own prompt", "steps": "4"}
    expect_widgets(page, before)
    with page.expect_file_chooser() as chooser:
        page.locator("#import-preset").click()
    chooser.value.set_files(str(path))
    return before


def test_bad_preset_import_is_rejected_shows_the_reason_and_changes_nothing(presets_app, page, tmp_path):
    from playwright.sync_api import expect

    url, _, folder = presets_app
    before = import_bad_preset(page, url, tmp_path)
    # The reason is shown (in a toast or the status line), soon after the import ...
    reason = (page.get_by_test_id("toast-text").filter(has_text="Preset not imported")
              .or_(status(page).filter(has_text="Preset not imported")))
    expect(reason.first).to_contain_text("num_inference_steps", timeout=5_000)
    # ... the page shows that the import failed (an error badge on the panel's outputs, a toast, or
    # the status line) ...
    failed = (page.locator("#steps [data-testid='status-tracker'] .error")
              .or_(page.get_by_test_id("toast-text").filter(has_text="Preset not imported"))
              .or_(status(page).filter(has_text="Preset not imported")))
    expect(failed.first).to_be_visible()
    # ... and nothing changed: not the widgets, not the status line, the user's folder or the picker.
    expect_widgets(page, before)
    expect(status(page)).not_to_contain_text("Bad steps")
    assert not (folder / "Bad steps.json").exists(), "a rejected preset must not be saved"
    clear = page.locator("#preset-picker .clear-status button")  # the error badge covers the picker
    if clear.is_visible():
        clear.click()
    widget(page, "preset_picker").click()
    expect(page.get_by_role("option", name="Tiny test", exact=True)).to_be_visible()
    expect(page.get_by_role("option", name="Bad steps", exact=True)).to_have_count(0)
    assert page.page_errors == [], f"JavaScript errors on the page: {page.page_errors}"
