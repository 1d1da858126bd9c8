"""Closing the browser tab ends its running job (issue 13, "Cancel"): the GPU is free for the next
request at once, and the abandoned job saves nothing.

Skipped when /usr/bin/chromium or Playwright is missing (see tests/test_browser.py).
"""

from __future__ import annotations

import re
import time

import pytest
from test_browser import GENERATION_TIMEOUT_MS, browser, output_pngs, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

STEPS = 150  # at 512 px: about 15 s of the tiny model on an idle two-core CPU


def step_shown(status) -> int:
    return int(re.search(rf"Step (\d+) of {STEPS}", status.text_content()).group(1))


def test_closing_the_tab_frees_the_gpu_and_saves_nothing(app, page):
    from gradio_client import Client
    from playwright.sync_api import expect

    url, outputs = app
    client = Client(url, verbose=False)  # connected first, so that the timing below is the job's alone
    before = output_pngs(outputs)
    page.goto(url)
    for label, value in [("Width", "512"), ("Height", "512"), ("Steps", str(STEPS))]:
        box = page.get_by_label(f"number input for {label}")
        box.fill(value)
        box.press("Enter")
    page.locator("#prompt textarea").fill("a storm over the sea")
    page.locator("#generate").click()
    status = page.locator("#status")
    expect(status).to_contain_text(re.compile(rf"Step \d+ of {STEPS}"), timeout=GENERATION_TIMEOUT_MS)

    # How long the job still had to run, from its pace over a second (the machine may be busy).
    first, t0 = step_shown(status), time.monotonic()
    page.wait_for_timeout(1500)
    last, t1 = step_shown(status), time.monotonic()
    remaining_s = (STEPS - last) * (t1 - t0) / max(1, last - first)
    assert last < STEPS * 0.7, f"the job was nearly done ({last} of {STEPS} steps) before the tab closed"
    page.close()

    start = time.monotonic()
    _, seed, details = client.predict(prompt="a lighthouse", width=64, height=64, num_inference_steps=2,
                                      seed=4242, api_name="/txt2img")
    took = time.monotonic() - start
    assert seed == 4242 and details["steps_done"] == 2 and not details["interrupted"]
    # Had the abandoned job kept the GPU, this request would have queued behind it for ~remaining_s.
    assert took < max(3.0, remaining_s / 2), f"the next request took {took:.1f} s; the closed tab's job had " \
                                             f"about {remaining_s:.1f} s left"
    # The only new file is the API's image: the abandoned job saved nothing.
    new = output_pngs(outputs) - before
    assert [p.name.split("-")[1] for p in new] == ["4242"], f"new files in {outputs}: {sorted(new)}"
