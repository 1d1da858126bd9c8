"""LoRA training through the running app's API: /train_lora starts a background run on the tiny
model, /train_status follows it, /stop_training ends it, /loras lists the library."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from conftest import start_app, stop_app
from test_app_api import ARGS

TINY_RUN = dict(trigger_word="sks", max_train_steps=4, rank=4, learning_rate=1e-3, model="tiny")


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_cache):
    """A Studio of its own (its LoRA library starts empty): (client, tmp folder)."""
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("train-app")
    proc, url, _ = start_app(tmp, tiny_cache, "--model", "tiny", "--lora-dir", str(tmp / "loras"))
    try:
        yield Client(url, verbose=False), tmp
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    """Three 64 px photos, as uploads."""
    from gradio_client import handle_file

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(handle_file(str(path)))
    return paths


def train(client, photos, **overrides) -> str:
    return client.predict(images=photos, **{**TINY_RUN, **overrides}, api_name="/train_lora")


def wait_for(client, job_id: str, states: tuple[str, ...], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.predict(job_id=job_id, api_name="/train_status")
        if record["state"] in states:
            return record
        assert record["state"] in ("queued", "running"), record
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not {states} within {timeout_s} s: {record}")


def test_a_tiny_run_trains_and_lands_in_the_library(studio, photos):
    client, tmp = studio
    job_id = train(client, photos, name="tiny-subject")
    assert isinstance(job_id, str) and len(job_id) >= 8
    record = wait_for(client, job_id, ("done",))
    assert (record["step"], record["total"], record["lora"], record["error"]) == (4, 4, "tiny-subject", None)
    assert len(record["losses"]) == 4 and all(np.isfinite(record["losses"]))
    assert (tmp / "loras" / "tiny-subject.safetensors").is_file()
    assert (tmp / "training" / "tiny-subject").is_dir()  # the run folder, beside the library
    loras = {r["name"]: r for r in client.predict(api_name="/loras")}
    assert loras["tiny-subject"]["trigger_word"] == "sks"
    assert loras["tiny-subject"]["base_model"] == "tiny" and loras["tiny-subject"]["rank"] == "4"
    # and a prompt can use it at once
    gallery, _, metadata = client.predict(**{**ARGS, "prompt": "<lora:tiny-subject:0.8> sks"}, api_name="/txt2img")
    assert len(gallery) == 1 and metadata["prompt"] == "sks" and metadata["loras"] == "tiny-subject:0.8"


@pytest.mark.parametrize("overrides, count, message", [
    ({}, 2, "images must be count in [3, 30], got 2"),
    ({"rank": 0}, 3, "rank must be an integer in [1, 128], got 0"),
    ({"trigger_word": ""}, 3, "trigger_word must be 1 to 64 characters"),
    ({"name": "../escape"}, 3, "name must be a plain file name, got '../escape'"),
    ({"name": "a b"}, 3, "LoRA name must be"),
    ({"model": "controlnet-depth-sdxl"}, 3, "controlnet-depth-sdxl is not in the list of choices"),
])
def test_bad_settings_are_clear_errors_and_start_no_job(studio, photos, overrides, count, message):
    from gradio_client.exceptions import AppError

    client, tmp = studio
    with pytest.raises(AppError) as caught:
        train(client, photos[:count], **{"name": "bad-run", **overrides})
    assert message in str(caught.value)
    assert not (tmp / "training" / "bad-run").exists() and not (tmp / "training" / "escape").exists()


def test_a_file_that_is_not_an_image_is_refused(studio, photos, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, tmp = studio
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    with pytest.raises(AppError) as caught:
        train(client, [*photos, handle_file(str(fake))], name="bad-file")
    assert "notes.png" in str(caught.value)
    assert not (tmp / "training" / "bad-file").exists()


def test_an_unknown_job_is_a_clear_error(studio):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no training job 'nope'"):
        studio[0].predict(job_id="nope", api_name="/train_status")


def test_stop_ends_a_long_run_as_stopped_with_a_checkpoint(studio, photos):
    client, tmp = studio
    job_id = train(client, photos, name="long-run", max_train_steps=20000)
    record = wait_for(client, job_id, ("running",))
    client.predict(job_id=job_id, api_name="/stop_training")
    record = wait_for(client, job_id, ("stopped",))
    assert 1 <= record["step"] < 20000 and record["lora"] is None
    assert len(record["losses"]) == record["step"]
    assert list((tmp / "training" / "long-run").glob("checkpoint-*"))
    assert "long-run" not in [r["name"] for r in client.predict(api_name="/loras")]


def test_a_generation_waits_for_a_run_then_succeeds(studio, photos):
    client, _ = studio
    job_id = train(client, photos, name="holds-gpu", max_train_steps=60)
    before = wait_for(client, job_id, ("running",))
    assert before["step"] < before["total"]  # the run holds the GPU as the generation is asked for
    gallery, _, metadata = client.predict(**ARGS, api_name="/txt2img")  # queued behind the run's exclusive lease
    assert len(gallery) == 1 and metadata["model"] == "tiny"
    assert client.predict(job_id=job_id, api_name="/train_status")["state"] == "done"


# -- TrainingJobs and the page's helpers, without the app ------------------------------------------

def blank_photos(n: int = 3) -> list:
    return [Image.new("RGB", (64, 64)) for _ in range(n)]


def wait_until_finished(jobs, job_id: str, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while (record := jobs.status(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.01)
    return record


def test_a_failing_run_is_a_failed_job_with_its_message(manager, tmp_path):
    from studio.training.config import TrainConfig
    from studio.training.jobs import TrainingJobs

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    jobs = TrainingJobs(manager, tmp_path / "loras", run=broken)
    job_id = jobs.start(TrainConfig(model="tiny", trigger_word="sks"), blank_photos())
    record = wait_until_finished(jobs, job_id)
    assert (record["state"], record["error"], record["lora"]) == ("failed", "out of memory", None)


def test_one_name_trains_once_at_a_time_and_captions_are_one_per_photo(manager, tmp_path):
    import threading

    from studio.results import StepEvent
    from studio.training.config import TrainConfig
    from studio.training.jobs import TrainingJobs
    from studio.training.lora_train import TrainResult

    release = threading.Event()

    def slow(config, images, captions, models, run_dir, on_step=None):
        on_step(StepEvent(1, config.max_train_steps, message="loss 0.5000"))
        release.wait(10)
        return TrainResult("stopped", 1, [0.5], None)

    jobs = TrainingJobs(manager, tmp_path / "loras", run=slow)
    config = TrainConfig(model="tiny", trigger_word="sks", name="same")
    with pytest.raises(ValueError, match=r"captions must be one per image \(3\), got 2"):
        jobs.start(config, blank_photos(), ["a", "b"])
    first = jobs.start(config, blank_photos())
    with pytest.raises(ValueError, match=f"name 'same' is being trained by job {first}"):
        jobs.start(config, blank_photos())
    release.set()
    record = wait_until_finished(jobs, first)
    assert (record["state"], record["step"], record["losses"]) == ("stopped", 1, [0.5])
    assert jobs.start(config, blank_photos())  # the name is free again


def test_captions_are_matched_by_order_and_padded_with_the_prompt():
    from studio.ui.train import parse_captions

    assert parse_captions("", 3) is None
    assert parse_captions("a dog\n\nthe dog asleep\n\n", 4) == ["a dog", None, "the dog asleep", None]
    with pytest.raises(ValueError, match=r"at most one line per photo \(3\), got 4 lines"):
        parse_captions("a\nb\nc\nd", 3)
