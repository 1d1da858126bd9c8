"""Stop, proved for the four long jobs together (issue 13): text to image, upscale, panorama and
LoRA training, on the tiny model.

Each test runs the job once to the end (the reference, which also loads what the job needs), then
again with a Stop that lands between two of its events, as a Stop click does, and checks that:
(a) the job ends within one more step, patch, view or training step;
(b) the GPU is free at once: the next lease does not wait;
(c) the next job of that kind runs normally: the same seed gives the reference's pixels (losses);
(d) memory is back at its baseline: no tensor other than the loaded models' weights, and no image,
    outlives the stopped job;
(e) nothing is saved: no file in the outputs folder, an empty scratch folder.
Generations run as the page runs them (ui/jobs.stream_job in a thread, then the tab's saver only
when a whole result comes back; tests/test_cancel_queued.py drives the page's own handler); training runs through TrainingJobs, as the Train tab does.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_panorama_pipeline import SMALL_PLAN
from test_training import photos, tiny_config
from test_upscale_pipeline import picture

from studio.outputs import save_canvas, save_result_images
from studio.panorama.files import save_panorama
from studio.pipelines.panorama import PanoramaRequest
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.pipelines.upscale import UpscaleRequest
from studio.results import StepEvent, Stopped
from studio.tasks import TASKS
from studio.ui.jobs import stream_job

SAVERS = {"txt2img": save_result_images, "upscale": save_canvas, "panorama": save_panorama}  # each tab's saver


# -- measuring ------------------------------------------------------------------------------------

def held_objects() -> list:
    """Every live tensor and PIL image (after a collection)."""
    import torch

    gc.collect()
    # type(), not isinstance: isinstance would ask lazy modules lying in the heap for __class__
    return [obj for obj in gc.get_objects() if issubclass(type(obj), (torch.Tensor, Image.Image))]


def baseline() -> dict[int, weakref.ref]:
    """What is alive now, by identity: the tensors and images a later `new_bytes` leaves out."""
    return {id(obj): weakref.ref(obj) for obj in held_objects()}


def new_bytes(manager, before: dict[int, weakref.ref]) -> int:
    """Bytes of the tensors and PIL images alive now that were not alive at `before`, except the
    weights of the models the manager has loaded (what is loaded may rightly change: training frees
    every model). A job that leaves anything reachable (latents, a decoded image, a Result kept in a
    list, a training pipeline) adds to it; objects of other tests, alive or freed meanwhile, do not."""
    import torch

    weights = set()
    for loaded in manager._loaded.values():  # no public view of the modules: the manager's own table
        for owner in (loaded.model, *loaded.pipes.values()):
            parts = [owner] if isinstance(owner, torch.nn.Module) else list(owner.components.values())
            for module in (p for p in parts if isinstance(p, torch.nn.Module)):
                weights.update(id(t) for t in (*module.parameters(), *module.buffers()))
    storages, total = set(), 0
    for obj in held_objects():
        if id(obj) in weights or (id(obj) in before and before[id(obj)]() is obj):
            continue
        if isinstance(obj, Image.Image):
            total += obj.width * obj.height * len(obj.getbands())
        elif (key := (obj.device, obj.untyped_storage().data_ptr())) not in storages:  # views count once
            storages.add(key)
            total += obj.untyped_storage().nbytes()
    return total


def assert_gpu_free(manager) -> None:
    """(b): a lease taken now is granted without waiting (the gate reports only to a waiting job)."""
    def waited(message: str) -> None:
        raise AssertionError(f"the next job had to wait for the GPU: {message}")

    with manager.lease(None, purpose="the next job", on_wait=waited):
        pass


def files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def join_threads(prefix: str) -> None:
    """Wait for the job threads to end: a thread that has handed over its result may still be returning."""
    for thread in threading.enumerate():
        if thread.name.startswith(prefix):
            thread.join(30)
            assert not thread.is_alive(), f"{thread.name} still runs 30 s after its job ended"


# -- running a job as the page does ---------------------------------------------------------------

@dataclass
class PageRun:
    paths: list[Path] | None  # what the tab's saver wrote; None when the job was stopped
    stopped: str | None  # the Stopped message
    reached: tuple[int, int, bool] | None  # a result's (steps done, steps planned, interrupted)
    after: list[tuple[int, str | None]]  # (step, detail) of the events after the Stop was asked


def page_job(request, manager, outputs: Path, counts=lambda event: True, stop_after: int | None = None) -> PageRun:
    """Run `request` as a tab's Generate does (studio/ui/generate.py on_page): in stream_job's thread,
    then the tab's saver only if a whole result came back (a stopped one is shown, never saved). With `stop_after`, the Stop flag is set right
    after the `stop_after`-th event that `counts`, so the job meets it at its next event."""
    flag, events, asked = threading.Event(), [], []
    task = TASKS[request.TASK]

    def run(job, models, on_step):
        def watched(event: StepEvent) -> bool:
            stop = on_step(event)
            if event.message is None:  # not a "waiting for the GPU" message
                events.append(event)
                if not asked and stop_after is not None and sum(map(counts, events)) == stop_after:
                    flag.set()
                    asked.append(len(events))
            return stop

        return task.run(job, models, watched)

    result, stopped = None, None
    try:
        for kind, payload in stream_job(run, request, manager, flag):
            if kind == "done":
                result = payload
    except Stopped as exc:
        stopped = str(exc)
    join_threads(f"job-{request.TASK}")
    paths = SAVERS[request.TASK](result, outputs) if result is not None and not result.interrupted else None
    after = [(e.step, e.detail) for e in events[asked[0]:]] if asked else []
    reached = None if result is None else (result.steps_done, result.total_steps, result.interrupted)
    return PageRun(paths, stopped, reached, after)  # not the events: their previews hold the latents


# -- the four jobs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(registry, tiny_cache):
    """conftest's `manager`, once for the module: the tiny model loads once for the three generation
    tests (training, last, frees it)."""
    from conftest import cpu_probe

    from studio.models.manager import ModelManager

    return ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)

def test_stop_text_to_image(models, tmp_path):
    import torch

    request = Txt2ImgRequest(prompt="a lighthouse at dawn", model="tiny", width=64, height=64, num_inference_steps=8,
                             seed=7)
    reference = page_job(request, models, tmp_path / "reference")
    before = baseline()

    outputs = tmp_path / "outputs"
    stopped = page_job(request, models, outputs, stop_after=3)
    assert [step for step, _ in stopped.after] == [4]  # (a) asked after step 3: step 4 was the last
    assert_gpu_free(models)  # (b)
    assert new_bytes(models, before) == 0  # (d)
    kept = [Image.new("RGB", (64, 64)), torch.zeros(16)]  # ... which would see what a job leaves behind
    assert new_bytes(models, before) == 64 * 64 * 3 + 16 * 4
    del kept
    # (e) A stopped generation returns the image it reached (the page shows it) and saves nothing.
    assert stopped.reached == (4, 8, True)
    assert stopped.paths is None and files(outputs) == []

    again = page_job(request, models, tmp_path / "again")  # (c)
    assert np.array_equal(pixels(again.paths[0]), pixels(reference.paths[0]))


def test_stop_upscale(models, tmp_path):
    models.scratch_dir = scratch = tmp_path / "scratch"
    request = UpscaleRequest(image=picture(), model="tiny", num_inference_steps=3, slider=2, seed=5, scale=2.0)
    is_patch = lambda event: "patch" in (event.detail or "")  # noqa: E731
    reference = page_job(request, models, tmp_path / "reference")
    before = baseline()

    outputs = tmp_path / "outputs"
    stopped = page_job(request, models, outputs, is_patch, stop_after=8)  # 18 patch calls: 3 steps × 6 patches
    assert stopped.paths is None and "nothing was saved" in stopped.stopped
    assert [detail for _, detail in stopped.after] == ["Stage 1 of 1 (128×96) · step 2 of 3 · patch 3 of 6"]  # (a)
    assert_gpu_free(models)  # (b)
    assert new_bytes(models, before) == 0  # (d)
    assert files(outputs) == [] and files(scratch) == []  # (e)

    again = page_job(request, models, tmp_path / "again")  # (c): [shown, full image, .dzi]
    assert np.array_equal(pixels(again.paths[1]), pixels(reference.paths[1]))
    assert files(scratch) == []  # a finished upscale's scratch array goes once it is written


def test_stop_panorama(models, tmp_path):
    models.scratch_dir = scratch = tmp_path / "scratch"
    request = PanoramaRequest(prompt="a lake at dawn, 360 panorama", model="tiny", num_inference_steps=2, seed=3,
                              width=512, views=SMALL_PLAN, exposures="0", video=False)
    is_step = lambda event: event.step > 0 and not (event.detail or "").endswith("painted")  # noqa: E731
    reference = page_job(request, models, tmp_path / "reference")
    before = baseline()

    outputs = tmp_path / "outputs"
    stopped = page_job(request, models, outputs, is_step, stop_after=3)  # view 2's first step (2 steps a view)
    assert stopped.paths is None and stopped.stopped == "Stopped after view 2 of 6; nothing was saved."
    assert stopped.after and all(detail.startswith("View 2 of 6") for _, detail in stopped.after)  # (a)
    assert_gpu_free(models)  # (b)
    assert new_bytes(models, before) == 0  # (d)
    assert files(outputs) == [] and files(scratch) == []  # (e)

    again = page_job(request, models, tmp_path / "again")  # (c): [LDR PNG, .hdr, .exr, ...]
    assert np.array_equal(pixels(again.paths[0]), pixels(reference.paths[0]))


def test_stop_training(models, tmp_path):
    import torch
    from safetensors.torch import load_file

    from studio.training.jobs import TrainingJobs
    from studio.training.lora_train import train

    seen: dict[str, list[int]] = {}  # run name -> training steps reported
    stop_at: dict[str, int] = {}  # run name -> the step after which Stop is pressed

    def stepping(config, images, captions, models, run_dir, on_step, on_sample):
        """lora_train.train, pressing Stop (TrainingJobs.stop, as the Train tab does) after step stop_at[name]."""
        def watched(event: StepEvent) -> bool:
            stop = on_step(event)
            if event.step > 0:
                seen.setdefault(config.name, []).append(event.step)
                if event.step == stop_at.get(config.name):
                    jobs.stop(next(r["job_id"] for r in jobs.runs() if r["name"] == config.name))
            return stop

        return train(config, images, captions, models, run_dir, on_step=watched, on_sample=on_sample)

    def finish(name: str) -> dict:
        job = jobs.start(tiny_config(name=name, checkpoint_every=6, num_samples=1, sample_steps=1), photos())
        deadline = time.monotonic() + 300
        while (status := jobs.status(job))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"training {name} did not end within 300 s: {status}"
            time.sleep(0.05)
        join_threads(f"train-{name}")
        return status

    jobs = TrainingJobs(models, tmp_path / "loras", tmp_path / "training", run=stepping)
    reference = finish("reference")
    assert reference["state"] == "done" and len(reference["losses"]) == 6
    before = baseline()

    stop_at["stopped"] = 2
    stopped = finish("stopped")
    assert stopped["state"] == "stopped" and seen["stopped"] == [1, 2, 3]  # (a) asked after step 2: one more
    assert stopped["losses"] == reference["losses"][:3]
    assert_gpu_free(models)  # (b)
    assert new_bytes(models, before) == 0  # (d)
    # (e) no LoRA: not in the library, not in the run folder (only the checkpoint a resume continues from)
    assert [e.name for e in jobs.library.list()] == ["reference"]
    assert not list((tmp_path / "training" / "stopped").glob("*.safetensors"))

    again = finish("again")  # (c)
    assert again["state"] == "done" and again["losses"] == reference["losses"]
    trained, first = load_file(jobs.library.path("again")), load_file(jobs.library.path("reference"))
    assert trained.keys() == first.keys() and all(torch.equal(trained[k], first[k]) for k in first)
