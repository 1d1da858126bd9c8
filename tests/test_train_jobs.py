"""Training runs on disk: TrainingJobs keeps each run's photos, captions, config and state in its
run folder, so a run cut short by the end of the process is found again as "interrupted" and
resumed from what was saved; samples are saved there too. A fake `run` stands in for the trainer."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from studio.results import StepEvent
from studio.training.config import TrainConfig
from studio.training.jobs import TrainingJobs
from studio.training.runs import save_images, write_json
from studio.training.lora_train import TrainResult


def photos(n: int = 3) -> list:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def config(name: str = "my-dog", **changes) -> TrainConfig:
    return TrainConfig(model="tiny", trigger_word="sks", name=name, max_train_steps=6, checkpoint_every=2, **changes)


class FakeTrainer:
    """Reports `steps` steps (writing complete checkpoints as the trainer would), renders samples
    at `sample_at`, then waits for `release` (if given) and ends stopped at the last step reported."""

    def __init__(self, steps: int = 6, sample_at: tuple[int, ...] = (), release: threading.Event | None = None):
        self.steps, self.sample_at, self.release = steps, sample_at, release
        self.calls: list[dict] = []
        self.reached = threading.Event()

    def __call__(self, config, images, captions, models, run_dir, on_step=None, on_sample=None):
        self.calls.append(dict(config=config, images=images, captions=captions, run_dir=run_dir))
        start = max((int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*[0-9]")), default=0)
        losses = [1.0 / k for k in range(1, self.steps + 1)]
        for step in range(start + 1, self.steps + 1):
            on_step(StepEvent(step, config.max_train_steps, message=f"loss {losses[step - 1]:.4f}"))
            if step % config.checkpoint_every == 0:
                (run_dir / f"checkpoint-{step}").mkdir()
                (run_dir / f"checkpoint-{step}" / "manifest.json").write_text("{}")
            if step in self.sample_at:
                on_sample(step, [Image.new("RGB", (32, 32), (step * 10, 0, i * 100)) for i in range(2)])
        self.reached.set()
        if self.release is not None:
            self.release.wait(10)
        return TrainResult("stopped", self.steps, losses, None)


def wait_until_finished(jobs: TrainingJobs, job_id: str, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while (record := jobs.status(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.01)
    return record


def pixels(images: list) -> list:
    return [np.asarray(image).tolist() for image in images]


def test_a_start_saves_our_own_pngs_the_captions_and_the_config(manager, tmp_path):
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())
    given, captions = photos(), ["a dog", None, "the dog asleep"]
    job_id = jobs.start(config(), given, captions)
    assert wait_until_finished(jobs, job_id)["state"] == "stopped"
    run_dir = tmp_path / "training" / "my-dog"
    saved = sorted((run_dir / "images").iterdir())
    assert [p.name for p in saved] == ["0000.png", "0001.png", "0002.png"]  # nothing else: no temp files left
    assert pixels([Image.open(p) for p in saved]) == pixels(given)
    record = json.loads((run_dir / "job.json").read_text())
    assert record["config"] == asdict(config()) and record["captions"] == captions and record["images"] == 3
    assert (record["name"], record["model"], record["state"], record["step"], record["total"]) == (
        "my-dog", "tiny", "stopped", 6, 6)
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []


def test_the_record_and_the_photos_are_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "job.json"
    write_json(path, {"state": "running"})
    with pytest.raises(ValueError):  # fails half-way through writing: NaN is not JSON
        write_json(path, {"state": "done", "losses": [float("nan")]})
    assert json.loads(path.read_text()) == {"state": "running"} and [p.name for p in tmp_path.iterdir()] == ["job.json"]

    class Broken:
        def convert(self, mode):
            raise OSError("disk full")

    save_images(tmp_path, photos())
    with pytest.raises(OSError, match="disk full"):
        save_images(tmp_path, [*photos(2), Broken()])
    assert pixels([Image.open(p) for p in sorted((tmp_path / "images").iterdir())]) == pixels(photos())


def test_a_run_cut_short_is_interrupted_at_its_checkpoint_and_resumes_with_what_was_saved(manager, tmp_path):
    release = threading.Event()
    first = FakeTrainer(steps=3, release=release)
    jobs = TrainingJobs(manager, tmp_path / "loras", run=first)
    given, captions = photos(), ["a dog", None, None]
    job_id = jobs.start(config(), given, captions)
    assert first.reached.wait(10)
    # The process "dies" here: what its disk holds is copied to a Studio that starts afresh
    shutil.copytree(tmp_path / "training", tmp_path / "after" / "training")
    release.set()
    wait_until_finished(jobs, job_id)
    crashed = tmp_path / "after" / "training" / "my-dog"
    assert json.loads((crashed / "job.json").read_text())["state"] == "running"
    (crashed / "checkpoint-4.tmp").mkdir()  # an incomplete checkpoint does not count

    second = FakeTrainer(steps=6, release=None)
    restarted = TrainingJobs(manager, tmp_path / "after" / "loras", run=second)
    [run] = restarted.runs()
    assert {k: run[k] for k in ("name", "model", "state", "step", "total", "job_id")} == dict(
        name="my-dog", model="tiny", state="interrupted", step=2, total=6, job_id=None)
    assert json.loads((crashed / "job.json").read_text())["state"] == "interrupted"  # said once, on disk

    new_job = restarted.resume("my-dog")
    assert restarted.status(new_job)["losses"][:2] == [1.0, 0.5]  # the plot starts from the checkpoint's losses
    record = wait_until_finished(restarted, new_job)
    [call] = second.calls
    assert pixels(call["images"]) == pixels(given)  # the same pixels, from our PNGs
    assert call["captions"] == captions and call["config"] == config()
    assert call["run_dir"] == crashed  # where the checkpoints are: the trainer continues from step 2
    assert (record["state"], record["step"]) == ("stopped", 6)
    assert restarted.runs()[0]["state"] == "stopped"


def test_only_interrupted_and_stopped_runs_resume(manager, tmp_path):
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())
    with pytest.raises(ValueError, match="no training run named 'nope'"):
        jobs.resume("nope")
    wait_until_finished(jobs, jobs.start(config(), photos()))
    record_path = tmp_path / "training" / "my-dog" / "job.json"
    write_json(record_path, {**json.loads(record_path.read_text()), "state": "done"})
    with pytest.raises(ValueError, match="run 'my-dog' is done; only an interrupted or stopped run can be resumed"):
        jobs.resume("my-dog")
    shutil.rmtree(tmp_path / "training" / "my-dog" / "images")
    write_json(record_path, {**json.loads(record_path.read_text()), "state": "stopped"})
    with pytest.raises(ValueError, match="run 'my-dog' should have 3 photos in .* has 0"):
        jobs.resume("my-dog")


def test_discard_removes_that_run_folder_only(manager, tmp_path):
    release = threading.Event()
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer(release=release))
    keep = jobs.start(config("keep"), photos())
    release.set()
    wait_until_finished(jobs, keep)
    release.clear()
    busy = jobs.start(config("busy"), photos())
    with pytest.raises(ValueError, match=f"run 'busy' is being trained by job {busy}; stop it first"):
        jobs.discard("busy")
    release.set()
    wait_until_finished(jobs, busy)
    (tmp_path / "training" / "not-a-run").mkdir()  # a folder without a record is not ours to delete
    with pytest.raises(ValueError, match="no training run named 'not-a-run'"):
        jobs.discard("not-a-run")
    jobs.discard("busy")
    assert sorted(p.name for p in (tmp_path / "training").iterdir()) == ["keep", "not-a-run"]
    assert [r["name"] for r in jobs.runs()] == ["keep"]


@pytest.mark.parametrize("name", ["..", "../loras", "a/b", ".hidden", "", "x" * 65])
def test_names_that_would_leave_the_runs_folder_are_refused(manager, tmp_path, name):
    (tmp_path / "loras").mkdir()
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())
    for action in (jobs.resume, jobs.discard):
        with pytest.raises(ValueError, match="LoRA name must be"):
            action(name)
    assert (tmp_path / "loras").is_dir()


def test_a_link_out_of_the_runs_folder_is_refused(manager, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "job.json").write_text("{}")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "sneaky").symlink_to(outside)
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())
    with pytest.raises(ValueError, match="resolves to .*precious, outside the runs folder"):
        jobs.discard("sneaky")
    assert (outside / "job.json").is_file()


def test_samples_are_saved_as_pngs_and_the_record_lists_the_latest(manager, tmp_path):
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer(sample_at=(3, 6)))
    record = wait_until_finished(jobs, jobs.start(config(), photos()))
    samples = tmp_path / "training" / "my-dog" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == [
        "step-000003-0.png", "step-000003-1.png", "step-000006-0.png", "step-000006-1.png"]
    assert record["samples"] == [str(samples / "step-000006-0.png"), str(samples / "step-000006-1.png")]
    assert record["sample_step"] == 6
    assert Image.open(record["samples"][1]).getpixel((0, 0)) == (60, 0, 100)
    saved = json.loads((tmp_path / "training" / "my-dog" / "job.json").read_text())
    assert saved["samples"] == ["samples/step-000006-0.png", "samples/step-000006-1.png"]


def test_a_damaged_record_does_not_stop_the_app(manager, tmp_path):
    (tmp_path / "training" / "broken").mkdir(parents=True)
    (tmp_path / "training" / "broken" / "job.json").write_text("{not json")
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())
    assert jobs.runs() == []
    with pytest.raises(ValueError, match="the record of run 'broken' cannot be read"):
        jobs.resume("broken")
