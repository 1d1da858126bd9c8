"""A second user's job waits with its place in line shown (issue 13, "Queue and concurrency").

While two API jobs hold and wait for the one GPU, the page's Generate shows our "Queued" message
and Gradio's own "queue: 2/2" beside it; the place moves up as the line moves, and gives way to
the job's own result once it runs. Gradio draws that text in a box that hid it until
assets/studio.css let it show, so the test checks painted pixels, not only the page's text.

Skipped when /usr/bin/chromium or Playwright is missing (see tests/test_browser.py).
"""

from __future__ import annotations

import io
import re
import time

import pytest
from test_browser import GENERATION_TIMEOUT_MS, browser, page  # noqa: F401 (fixtures)

from studio.ui.generate import QUEUED

pytestmark = pytest.mark.browser

# A job that holds the GPU until the test cancels it: four images of 150 steps at 512 px (the tiny
# model's most) take about a minute on a two-core CPU, long enough even on a much faster machine.
HOLD = {"prompt": "holding the GPU", "width": 512, "height": 512, "num_inference_steps": 150, "batch_size": 4,
        "api_name": "/txt2img"}


def wait_for(job, in_line: bool, timeout=GENERATION_TIMEOUT_MS / 1000):
    """Until `job` is running (its steps may have begun), or waits in the queue with a known place."""
    from gradio_client.utils import Status

    deadline = time.monotonic() + timeout
    while True:
        status = job.status()
        if in_line and status.code == Status.IN_QUEUE and status.rank is not None:
            return
        if not in_line and status.code in (Status.PROCESSING, Status.PROGRESS):
            return
        where = "in line" if in_line else "running"
        assert time.monotonic() < deadline and not job.done(), f"never seen {where}: {status}"
        time.sleep(0.05)


def pixels(locator) -> list[tuple[int, int, int]]:
    from PIL import Image

    return list(Image.open(io.BytesIO(locator.screenshot())).convert("RGB").getdata())


def dark(rgb: tuple[int, int, int]) -> bool:  # Gradio's text colour, not the page's white or amber
    return sum(rgb) < 3 * 110


def amber(rgb: tuple[int, int, int]) -> bool:  # the waiting message at full strength, not faded to 20%
    return rgb[0] - rgb[2] > 120


def test_a_queued_job_shows_its_place_in_line_until_it_runs(app, page, tmp_path):
    from gradio_client import Client
    from playwright.sync_api import expect

    url, _ = app
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    page.goto(url)
    steps = page.get_by_label("number input for Steps")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#prompt textarea").fill("a lighthouse, third in line")
    status = page.locator("#status")
    place = status.get_by_text(re.compile(r"^queue: \d+/\d+"))

    jobs = [first.submit(seed=1, **HOLD)]
    try:
        wait_for(jobs[0], in_line=False)  # then the second, so that the two cannot swap places
        jobs.append(second.submit(seed=2, **HOLD))
        wait_for(jobs[1], in_line=True)
        holding, waiting = jobs
        page.locator("#generate").click()

        # Second in a line of two, said in words and in pixels: Gradio's text painted beside ours.
        expect(status.locator(".status.waiting")).to_have_text(QUEUED)
        expect(place).to_be_visible()
        expect(place).to_contain_text("queue: 2/2")
        page.screenshot(path=tmp_path / "queue-position.png")
        assert sum(map(dark, pixels(place))) > 20, "the queue position is in the page but not painted"
        assert sum(map(amber, pixels(status.locator(".status")))) > 100, "the waiting message is faded"

        holding.cancel()  # the line moves: first in line
        expect(place).to_contain_text("queue: 1/1")
        waiting.cancel()  # the GPU is free: the page's job runs, and its place gives way to its result
        expect(status).to_contain_text(re.compile(r"Done: 1 image, seed \d+, 2 steps"),
                                       timeout=GENERATION_TIMEOUT_MS)
        expect(status).not_to_contain_text("queue:")
        expect(status).not_to_contain_text("processing")
    finally:  # an assertion failed: the jobs still give the GPU back to the next test
        for job in jobs:
            job.cancel()
