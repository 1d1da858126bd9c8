"""LoRA training through the running app's API: /train_lora starts a background run on the tiny
model, /train_status follows it (with its sample images), /stop_training ends it, /training_runs
lists the runs on disk, /resume_training continues a stopped one, /loras lists the library."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    ({"model": "controlnet-depth-sdxl"}, 3, "model must be a full base model, got 'controlnet-depth-sdxl'"),
    ({"max_train_steps": "many"}, 3, "max_train_steps must be an integer in [1, 20000], got 'many'"),
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


def test_the_advanced_keywords_train_with_samples_and_the_run_is_listed(studio, photos):
    client, tmp = studio
    job_id = train(client, photos, name="advanced", max_train_steps=4, sample_every=2, num_samples=1,
                   sample_prompt="{trigger} on the moon", class_prompt="a photo of a dog", num_class_images=2,
                   prior_loss_weight=0.5, train_text_encoder=True, text_encoder_lr=1e-4, optimizer="prodigy",
                   learning_rate=1.0, gradient_accumulation=2, batch_size=1, min_snr_gamma="", random_flip=False)
    record = wait_for(client, job_id, ("done",), timeout_s=240)
    samples = tmp / "training" / "advanced" / "samples"
    assert record["samples"] == [str(samples / "step-000004-0.png")] and record["sample_step"] == 4
    assert record["sample_prompt"] == "sks on the moon" and (samples / "step-000002-0.png").is_file()
    runs = {r["name"]: r for r in client.predict(api_name="/training_runs")}
    assert {k: runs["advanced"][k] for k in ("model", "state", "step", "total")} == dict(
        model="tiny", state="done", step=4, total=4)
    saved = json.loads((tmp / "training" / "advanced" / "job.json").read_text())["config"]
    assert (saved["optimizer"], saved["class_prompt"], saved["min_snr_gamma"], saved["gradient_accumulation"]) == (
        "prodigy", "a photo of a dog", None, 2)


@pytest.mark.parametrize("overrides, message", [
    ({"sample_every": 0}, "sample_every must be an integer in [1, 20000], got 0"),
    ({"gradient_accumulation": 0}, "gradient_accumulation must be an integer in [1, 64], got 0"),
    ({"min_snr_gamma": "-1"}, "min_snr_gamma must be a positive number or None, got -1.0"),
    ({"optimizer": "sgd"}, "optimizer must be one of 'adamw', 'prodigy', got 'sgd'"),
    ({"class_prompt": "a photo of a dog", "num_class_images": 0}, "num_class_images"),
    ({"train_text_encoder": True, "text_encoder_lr": -1}, "text_encoder_lr"),
])
def test_bad_advanced_settings_are_clear_errors_and_start_no_job(studio, photos, overrides, message):
    from gradio_client.exceptions import AppError

    client, tmp = studio
    with pytest.raises(AppError) as caught:
        train(client, photos, name="bad-advanced", **overrides)
    assert message in str(caught.value)
    assert not (tmp / "training" / "bad-advanced").exists()


def test_a_stopped_run_resumes_through_the_api(studio, photos):
    from gradio_client.exceptions import AppError

    client, tmp = studio
    job_id = train(client, photos, name="resumed", max_train_steps=20000)
    wait_for(client, job_id, ("running",))
    client.predict(job_id=job_id, api_name="/stop_training")
    stopped = wait_for(client, job_id, ("stopped",))
    run = {r["name"]: r for r in client.predict(api_name="/training_runs")}["resumed"]
    assert (run["state"], run["step"], run["job_id"]) == ("stopped", stopped["step"], None)
    again = client.predict(name="resumed", api_name="/resume_training")
    record = wait_for(client, again, ("running",))
    assert record["step"] > stopped["step"] and len(record["losses"]) == record["step"]  # it went on from there
    client.predict(job_id=again, api_name="/stop_training")
    wait_for(client, again, ("stopped",))
    with pytest.raises(AppError, match="LoRA name must be"):
        client.predict(name="../loras", api_name="/discard_training_run")
    client.predict(name="resumed", api_name="/discard_training_run")
    assert not (tmp / "training" / "resumed").exists() and (tmp / "loras").is_dir()
    assert "resumed" not in [r["name"] for r in client.predict(api_name="/training_runs")]


def test_a_run_killed_with_studio_is_offered_again_and_resumes_from_its_checkpoint(tmp_path, tiny_cache, photos):
    from gradio_client import Client

    args = ("--model", "tiny", "--lora-dir", str(tmp_path / "loras"))
    proc, url, _ = start_app(tmp_path, tiny_cache, *args)
    try:
        client = Client(url, verbose=False)
        job_id = train(client, photos, name="killed", max_train_steps=20000, checkpoint_every=5)
        deadline = time.monotonic() + 120
        while client.predict(job_id=job_id, api_name="/train_status")["step"] <= 5:  # past the first checkpoint
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no chance to write anything more
        proc.wait()
    proc, url, _ = start_app(tmp_path, tiny_cache, *args)
    try:
        client = Client(url, verbose=False)
        run = {r["name"]: r for r in client.predict(api_name="/training_runs")}["killed"]
        assert (run["state"], run["total"], run["job_id"]) == ("interrupted", 20000, None)
        assert run["step"] >= 5 and run["step"] % 5 == 0  # its newest complete checkpoint
        job_id = client.predict(name="killed", api_name="/resume_training")
        record = wait_for(client, job_id, ("running",))
        assert record["step"] > run["step"]
        assert len(record["losses"]) == record["step"]  # the curve goes on from the checkpoint's losses
        client.predict(job_id=job_id, api_name="/stop_training")
        wait_for(client, job_id, ("stopped",))
    finally:
        stop_app(proc)


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

    def slow(config, images, captions, models, run_dir, on_step=None, on_sample=None):
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
    from studio.ui.train_settings import parse_captions

    assert parse_captions("", 3) is None
    assert parse_captions("a dog\n\nthe dog asleep\n\n", 4) == ["a dog", None, "the dog asleep", None]
    with pytest.raises(ValueError, match=r"at most one line per photo \(3\), got 4 lines"):
        parse_captions("a\nb\nc\nd", 3)


def page_values(**changes) -> dict:
    """The Train tab's values as the page sends them untouched, with `changes`."""
    from studio.ui.train_settings import DEFAULTS

    names = ["trigger_word", "instance_prompt", "max_train_steps", "rank", "learning_rate", "seed", "model", "name",
             "batch_size", "random_flip", "sample_every", "checkpoint_every", "train_text_encoder",
             "gradient_accumulation", "sample_prompt", "num_samples", "class_prompt", "num_class_images",
             "prior_loss_weight", "text_encoder_lr", "optimizer"]
    values = {name: getattr(DEFAULTS, name) for name in names}
    return {**values, "images": [], "captions": "", "min_snr_gamma": "5", "model": "tiny", "trigger_word": "sks",
            **changes}


def test_the_page_values_make_the_config(tmp_path):
    import tempfile

    from gradio.utils import get_upload_folder

    from studio.training.config import TrainConfig
    from studio.ui.train_settings import make_job

    folder = Path(get_upload_folder())  # the page's photos are uploads, and only uploads are read
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as uploads:
        paths = []
        for i, image in enumerate(blank_photos()):
            paths.append(str(Path(uploads) / f"{i}.png"))
            image.save(paths[-1])
        config, photos, captions = make_job(page_values(images=paths, captions="a dog\n", max_train_steps=6.0,
                                                        min_snr_gamma=" ", name="mine"))
        with pytest.raises(ValueError, match="images must be a file uploaded to this app"):
            (tmp_path / "0.png").write_bytes(Path(paths[0]).read_bytes())
            make_job(page_values(images=[str(tmp_path / "0.png"), *paths[1:]]))
    assert config == TrainConfig(model="tiny", trigger_word="sks", name="mine", max_train_steps=6, min_snr_gamma=None)
    assert isinstance(config.max_train_steps, int) and len(photos) == 3 and captions == ["a dog", None, None]
    # What an API caller may send raw: numbers as text are read as numbers
    config, _, _ = make_job(page_values(images=None, max_train_steps="6", learning_rate="2e-4", name="mine"))
    assert config.max_train_steps == 6 and config.learning_rate == 2e-4


def test_the_runs_notice_says_where_a_run_stopped_and_why():
    from studio.ui.train import describe, run_notice

    run = dict(name="my-dog", state="interrupted", step=300, total=800)
    assert run_notice(run, 1) == ("The run 'my-dog' stopped at step 300 of 800 when Studio closed. Resume continues "
                                  "it from its last checkpoint; Discard deletes its folder.")
    assert run_notice({**run, "state": "stopped"}, 3).startswith("The run 'my-dog' was stopped at step 300 of 800.")
    assert run_notice(run, 3).endswith("2 more unfinished: pick one below.")
    queued = dict(state="queued", step=0, total=800, message="generating class image 3 of 100")
    assert describe(queued) == ("Generating class image 3 of 100", "waiting")


def test_the_library_table_shows_short_dates():
    from studio.ui.train import short_date

    assert short_date("2026-11-30T12:15:06+00:00") == "2026-11-30 12:15"
    assert short_date("last spring") == "last spring" and short_date(None) is None


def test_an_idle_pages_tick_answers_every_output(manager, tmp_path):
    """The Train tab's 2 s timer with no job to follow skips each of its outputs (a shorter answer
    is a Gradio error, logged on every tick of every idle page)."""
    import gradio as gr

    from studio.ui import build_app

    demo = build_app(manager, "tiny", tmp_path / "outputs", tmp_path / "presets", lora_dir=tmp_path / "loras")
    (tick,) = [fn for fn in demo.fns.values() if fn.fn.__name__ == "on_tick"]
    answer = tick.fn(gr.Request(session_hash="idle"), "", "", "")
    assert len(answer) == len(tick.outputs) == 11 and all(value == gr.skip() for value in answer)
