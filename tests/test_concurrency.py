"""Two users at once on one Studio (one GPU slot), through the public API with two gradio_client
clients: the second waits in line with its place reported, gets only its own images, and a
cancelled job gives the GPU back at its next step."""

from __future__ import annotations

import re
import time

import pytest
from PIL import Image

TINY = dict(negative_prompt="", guidance_scale=5.0, batch_size=1, scheduler="Euler")


@pytest.fixture
def clients(app):
    from gradio_client import Client

    return Client(app[0], verbose=False), Client(app[0], verbose=False)


def long_job(client, side=256, seed=1):
    """A job that holds the GPU for a while: 150 steps take the tiny model ~4 s at 256 px, ~15 s at 512."""
    return client.submit(prompt="first user's lighthouse", num_inference_steps=150, width=side, height=side,
                         seed=seed, **TINY, api_name="/txt2img")


def wait_until_running(job, timeout=60):
    from gradio_client.utils import Status

    deadline = time.monotonic() + timeout
    while job.status().code != Status.PROCESSING:
        assert time.monotonic() < deadline, f"the job never started: {job.status()}"
        time.sleep(0.05)


def saved(outputs) -> set:
    return set(outputs.rglob("*.png"))


def test_second_user_waits_in_line_and_gets_only_their_own_images(app, clients):
    from gradio_client.utils import Status

    first, second = clients
    _, outputs = app
    before = saved(outputs)
    a = long_job(first)
    wait_until_running(a)
    b = second.submit(prompt="second user's barn", num_inference_steps=2, width=64, height=64, seed=2, **TINY,
                      api_name="/txt2img")
    # While the first runs, the second is in the queue and knows its place
    seen = []
    while not a.done():
        status = b.status()
        seen.append((status.code, status.rank))
        if status.code == Status.IN_QUEUE and status.rank is not None:
            break
        time.sleep(0.05)
    assert any(code == Status.IN_QUEUE and rank == 0 for code, rank in seen), seen  # first in line
    gallery_b, seed_b, details_b = b.result(timeout=120)
    gallery_a, seed_a, details_a = a.result(timeout=120)
    assert seed_a == 1 and seed_b == 2 and details_b["styled_prompt"] == "second user's barn"
    path_a, path_b = gallery_a[0]["image"], gallery_b[0]["image"]
    assert Image.open(path_b).text["parameters"].startswith("second user's barn\n")
    assert Image.open(path_a).text["parameters"].startswith("first user's lighthouse\n")
    # Saved names carry time, seed and a random tag: nothing of the prompt, nothing to guess
    names = [p.name for p in saved(outputs) - before]
    assert len(names) == 2 and all(re.fullmatch(r"\d{6}-[12]-[0-9a-f]{16}\.png", n) for n in names), names
    assert not any("barn" in n or "lighthouse" in n for n in names)


def test_a_cancelled_api_job_gives_the_gpu_back_at_its_next_step(app, clients):
    first, second = clients
    _, outputs = app
    before = saved(outputs)
    a = long_job(first, side=512)  # ~15 s if nobody stops it
    wait_until_running(a)
    time.sleep(0.5)
    a.cancel()
    start = time.monotonic()
    gallery, seed, details = second.predict(prompt="after the cancel", num_inference_steps=2, width=64, height=64,
                                            seed=3, **TINY, api_name="/txt2img")
    waited = time.monotonic() - start
    assert details["steps_done"] == 2 and waited < 8, f"the next job waited {waited:.1f} s"
    time.sleep(1)  # the cancelled job's thread has ended by now: it saved nothing
    new = saved(outputs) - before
    assert [Image.open(p).text["parameters"].split("\n")[0] for p in new] == ["after the cancel"]


def test_an_api_job_cancelled_while_queued_never_runs_and_the_next_one_does(app, clients):
    """Two cancels while the GPU is busy: one at once after submitting (before the client knows the
    job's id: Studio's LateCancel), one once it is known to be in line (Gradio takes it out of its queue)."""
    from gradio_client.utils import Status

    first, second = clients
    _, outputs = app
    before = saved(outputs)
    a = long_job(first, seed=31)
    wait_until_running(a)
    small = dict(num_inference_steps=2, width=64, height=64, **TINY, api_name="/txt2img")
    at_once = second.submit(prompt="cancelled at once", seed=32, **small)
    at_once.cancel()
    in_line = second.submit(prompt="cancelled in line", seed=33, **small)
    deadline = time.monotonic() + 30
    while (status := in_line.status()).code != Status.IN_QUEUE or status.rank is None:
        assert time.monotonic() < deadline and not a.done(), f"never seen in the queue: {status}"
        time.sleep(0.05)
    in_line.cancel()
    a.result(timeout=120)
    start = time.monotonic()
    _, seed, details = second.predict(prompt="after the cancels", seed=34, **small)
    waited = time.monotonic() - start
    assert seed == 34 and details["steps_done"] == 2 and waited < 8, f"the next job waited {waited:.1f} s"
    time.sleep(0.5)
    seeds = sorted(int(p.name.split("-")[1]) for p in saved(outputs) - before)
    assert seeds == [31, 34], f"saved: {seeds}"  # neither cancelled job made anything
