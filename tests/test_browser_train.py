"""The Train LoRA tab in headless Chromium, as a newcomer would use it: a run left unfinished by
the last Studio is offered to resume (and discarded); three photos, a trigger word, a few steps
with samples, Train; the loss, the samples and the new LoRA in the library; then the LoRA picked
in Text to image and used."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from conftest import start_app, stop_app

# Importing test_browser applies its browser check (skip, or fail under STUDIO_REQUIRE_BROWSER=1).
from test_browser import GENERATION_TIMEOUT_MS, browser  # noqa: F401 (fixture)
from test_browser_control import page  # noqa: F401 (fixture: a 1280×1200 page)

pytestmark = pytest.mark.browser


def unfinished_run(runs_dir) -> None:
    """What a Studio closed mid-run leaves: a record saying "running", the photos, a checkpoint."""
    from studio.training.config import TrainConfig
    from studio.training.runs import save_images, write_json

    run_dir = runs_dir / "old-run"
    run_dir.mkdir(parents=True)
    save_images(run_dir, [Image.new("RGB", (64, 64), (40 * i, 90, 120)) for i in range(3)])
    config = TrainConfig(model="tiny", trigger_word="zwx", name="old-run", max_train_steps=800)
    write_json(run_dir / "job.json", dict(
        name="old-run", model="tiny", state="running", step=301, total=800, losses=[0.1] * 301, error=None,
        lora=None, sample_step=None, sample_prompt=None, config=asdict(config), captions=None, images=3,
        samples=[], updated="2025-01-01T00:00:00+00:00"))
    (run_dir / "checkpoint-300").mkdir()
    (run_dir / "checkpoint-300" / "manifest.json").write_text("{}")


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_cache):
    """A Studio of its own, started after a run was cut short: (url, tmp folder)."""
    tmp = tmp_path_factory.mktemp("train-page")
    unfinished_run(tmp / "training")
    proc, url, _ = start_app(tmp, tiny_cache, "--model", "tiny", "--lora-dir", str(tmp / "loras"))
    try:
        yield url, tmp
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("train-photos")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        image = np.full((64, 64, 3), (200, 150, 90), dtype=np.uint8)
        image[16 + 4 * i:48, 20:44] = rng.integers(0, 80, 3)  # a dark "subject" on a warm background
        paths.append(folder / f"dog{i}.png")
        Image.fromarray(image).save(paths[-1])
    return [str(p) for p in paths]


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def test_train_a_lora_then_pick_it_in_text_to_image(studio, page, pictures, tmp_path):
    from playwright.sync_api import expect

    url, tmp = studio
    page.goto(url)
    expect(page.locator("#prompt textarea")).to_be_visible()
    page.get_by_role("tab", name="Train LoRA").click()

    # 1. The run the last Studio left is offered
    notice = page.locator("#train-runs-text")
    expect(notice).to_contain_text("The run 'old-run' stopped at step 300 of 800 when Studio closed.")
    expect(page.locator("#train-resume")).to_be_visible()

    # 2. Three photos, a trigger word, six steps with samples every three
    with page.expect_response(lambda r: "/upload" in r.url and r.status == 200):
        page.locator("#train-images input[type=file]").first.set_input_files(pictures)
    fill(page, "train-trigger", "sks")
    fill(page, "train-name", "my-dog")
    fill(page, "train-steps", "6")
    page.locator("#train-advanced").get_by_text("Advanced").click()
    fill(page, "train-sample-every", "3")
    page.locator("#train-start").click()

    # 3. Done: the loss, the latest samples and the LoRA in the library
    status = page.locator("#train-status")
    expect(status).to_contain_text("Done: LoRA 'my-dog' is in the library (6 steps).", timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#train-loss canvas, #train-loss svg").first).to_be_visible()
    expect(page.locator("#train-samples-caption")).to_contain_text("Samples at step 6, prompt: a photo of sks")
    expect(page.locator("#train-samples img")).to_have_count(2)
    expect(page.locator("#train-loras")).to_contain_text("my-dog")
    page.locator("#train-advanced").get_by_text("Advanced").click()  # closed again: the screenshot shows the results
    page.screenshot(path=str(tmp_path / "train-tab.png"), full_page=True)
    shutil.copy(tmp_path / "train-tab.png", "/tmp/train-tab.png")

    # 4. The old run discarded: its folder goes, the notice too
    page.locator("#train-discard").click()
    expect(status).to_contain_text("Discarded the run 'old-run'.")
    expect(notice).to_be_hidden()
    assert not (tmp / "training" / "old-run").exists() and (tmp / "training" / "my-dog").is_dir()

    # 5. Text to image: the picker lists the new LoRA; picking it fills the LoRAs box; generate
    page.get_by_role("tab", name="Text to image").click()
    page.locator("#lora-pick input").click()
    page.get_by_role("option", name="my-dog — sks — tiny").click()
    expect(page.locator("#loras textarea, #loras input").first).to_have_value("my-dog:1.0")
    expect(page.locator("#lora-hint")).to_contain_text("Add 'sks' to the prompt")
    page.locator("#prompt textarea").fill("a photo of sks dog on the moon")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text(re.compile(r"Done"), timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#details")).to_contain_text("my-dog:1.0")
    assert page.page_errors == []
