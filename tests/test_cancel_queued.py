"""Stop on the page (issue 13, "Cancel"): a Stop pressed while the tab's job still waits in the queue
means it never runs; a Stop pressed with nothing queued or running is forgotten; a job stopped
part-way shows what it reached but saves nothing; and on a ZeroGPU Space the Stop reaches the job
in `spaces`' worker process, through a file.

The txt2img tab is built in this process and its page handlers are called as Gradio calls them
(the Generate click's instant "queued" handler, then the queued job's generator; Stop's handler).
"""

from __future__ import annotations

import pickle

import gradio as gr
import pytest
from PIL import Image
from test_spaces import fake_spaces  # noqa: F401 (fixture)

from studio.ui import generate
from studio.ui.jobs import StopFlag, StopFlags


class Page:
    """One browser page's txt2img tab: its handlers, called with this page's session. `jobs` counts
    the jobs that reached the GPU."""

    def __init__(self, manager, outputs, session="page-1"):
        from studio.models.pool import DevicePool
        from studio.styles import load_styles
        from studio.ui.tab import AppContext
        from studio.ui.txt2img import build_tab

        devices, self.jobs = DevicePool([manager]), []
        run = devices.run
        devices.run = lambda *args: self.jobs.append(args[1]) or run(*args)
        with gr.Blocks() as demo:
            self.ctx = AppContext(manager, "tiny", outputs, StopFlags(), gr.State([]), load_styles(), devices=devices)
            self.tab = build_tab(self.ctx)
        handlers = {fn.fn.__name__: fn.fn for fn in demo.fns.values()}
        self.queued, self.on_page, self.stop_job = handlers["queued"], handlers["on_page"], handlers["stop_job"]
        self.request = gr.Request(session_hash=session)
        self.key = f"{session}/txt2img"

    def data(self, steps: int, seed: int) -> dict:
        """The page's values as its widgets send them, for a 64 px job on the tiny model."""
        values = {w: w.value for w in self.tab.page_inputs.values()}
        fields = self.tab.page_inputs
        values.update({fields["prompt"]: "a lighthouse at dawn", fields["model"]: "tiny", fields["width"]: 64,
                       fields["height"]: 64, fields["num_inference_steps"]: steps, fields["seed"]: seed})
        return {**values, self.ctx.history: []}

    def click_generate(self, steps: int, seed: int, stop_after_updates: int | None = None) -> list[tuple]:
        """Generate as the page does it: the instant handler, then (its turn in the queue come) the
        job's generator, followed to its end; with `stop_after_updates`, Stop is clicked after that
        many updates of the job. Returns the job's updates."""
        self.queued(self.request)
        updates = []
        for update in self.on_page(self.data(steps, seed), self.request):
            updates.append(update)
            if len(updates) == stop_after_updates:
                assert self.stop_job(self.request) == gr.skip()  # a running job: its own status says it
        return updates


@pytest.fixture(scope="module")
def models(registry, tiny_cache):
    """One manager for the module: the tiny model loads once."""
    from conftest import cpu_probe

    from studio.models.manager import ModelManager

    return ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)


@pytest.fixture(scope="module")
def page(models, tmp_path_factory):
    return Page(models, tmp_path_factory.mktemp("outputs"))


def status_of(update: tuple) -> str:
    return update[3]


def files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_stop_while_queued_means_the_job_never_runs_and_an_idle_stop_is_forgotten(page):
    outputs, before = page.ctx.outputs_dir, files(page.ctx.outputs_dir)
    # Generate, then Stop while the job waits in Gradio's queue: the Stop says at once it will not run ...
    page.queued(page.request)
    assert generate.NOT_RUN in page.stop_job(page.request)
    # ... and when its turn comes, the job ends at once: one status, no GPU work, no file.
    updates = list(page.on_page(page.data(steps=2, seed=11), page.request))
    assert len(updates) == 1 and generate.NOT_RUN in status_of(updates[0])
    assert all(value == gr.skip() for i, value in enumerate(updates[0]) if i != 3)  # the last results stay
    assert page.jobs == [] and files(outputs) == before  # nothing reached the GPU

    # A Stop with nothing queued or running changes nothing, and does not stop the next job.
    assert page.stop_job(page.request) == gr.skip()
    updates = page.click_generate(steps=2, seed=12)
    assert "Done: 1 image, seed 12, 2 steps" in status_of(updates[-1])
    saved = sorted(set(files(outputs)) - set(before))
    assert len(page.jobs) == 1 and len(saved) == 1 and saved[0].name.split("-")[1] == "12"
    assert updates[-1][4] == [(str(saved[0]), "txt2img")]  # and it is in the history


def test_a_job_stopped_part_way_is_shown_but_not_saved(page):
    outputs, before = page.ctx.outputs_dir, files(page.ctx.outputs_dir)
    updates = page.click_generate(steps=8, seed=21, stop_after_updates=1)  # Stop at the first progress update
    gallery, seed, details, status, history = updates[-1][:5]
    assert "Stopped after" in status and "of 8 steps; not saved" in status
    assert details["interrupted"] and 1 <= details["steps_done"] < 8 and seed == "21"
    # The image it reached stays in the gallery (the user can download it); nothing on disk, no history entry.
    assert len(gallery) == 1 and isinstance(gallery[0], Image.Image) and gallery[0].size == (64, 64)
    assert history == gr.skip() and files(outputs) == before
    # The tab's next job runs to its end and saves.
    assert "Done" in status_of(page.click_generate(steps=2, seed=22)[-1]) and len(files(outputs)) == len(before) + 1


def test_stop_flags_expect_a_queued_job_and_forget_idle_stops():
    flags = StopFlags()
    assert flags.stop("a") is None  # nothing queued or running: nothing to stop
    flags.expect("a")  # Generate clicked
    assert flags.stop("a") is not None  # Stop while queued ...
    first = flags.start("a")
    assert first.is_set() and first.started  # ... the job finds it when its turn comes
    flags.finish("a", first)
    flags.expect("a")
    flags.stop("a")
    flags.expect("a")  # Generate clicked again: the earlier Stop was for the click before
    assert not flags.start("a").is_set()
    running = flags.start("b")
    flags.expect("b")  # a click while b's job runs keeps the running job's flag
    assert flags.stop("b") is running and running.is_set()
    assert running.path is None  # off ZeroGPU a flag is only in memory


def test_off_zero_gpu_a_flag_does_not_cross_a_pickle_on_zero_gpu_its_file_does(monkeypatch):
    """Why ZeroGPU needs the file: the worker gets a pickled copy, which an in-memory set never reaches."""
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    flag = StopFlag()
    copy = pickle.loads(pickle.dumps(flag))
    flag.set()
    assert not copy.is_set()
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    flags = StopFlags()
    flag = flags.start("a")
    copy = pickle.loads(pickle.dumps(flag))
    assert flag.path.parent.stat().st_mode & 0o077 == 0  # a private folder
    assert len(flag.path.name) == 32 and "a" != flag.path.name  # a random token, not the session's key
    assert not copy.is_set()
    flags.stop("a")
    assert copy.is_set() and copy is not flag
    flags.finish("a", flag)
    assert not flag.path.exists()  # no flag file outlives its job
    fresh = flags.start("a")
    assert fresh.path != flag.path and not pickle.loads(pickle.dumps(fresh)).is_set()


def test_on_zero_gpu_stop_reaches_the_job_in_the_worker(fake_spaces, models, tmp_path, monkeypatch):  # noqa: F811
    """The fake `spaces` runs the job in this process but pickles its arguments, as the real one
    sends them to its forked worker: the job's flag is a copy that only the file connects to Stop."""
    seen = []
    real_stream_job = generate.stream_job

    def watched(run, request, models, flag, **kwargs):
        seen.append(flag)
        return real_stream_job(run, request, models, flag, **kwargs)

    monkeypatch.setattr(generate, "stream_job", watched)
    outputs = tmp_path / "outputs"
    page = Page(models, outputs)
    pressed, real_stop = [], page.ctx.stops.stop
    monkeypatch.setattr(page.ctx.stops, "stop", lambda key: pressed.append(real_stop(key)) or pressed[-1])
    stopped = page.click_generate(steps=8, seed=31, stop_after_updates=1)
    assert "Stopped after" in status_of(stopped[-1]) and stopped[-1][2]["steps_done"] < 8
    assert fake_spaces() == [30]  # the job went through spaces.GPU
    worker_flag, main_flag = seen[0], pressed[0]
    assert worker_flag is not main_flag and worker_flag.path == main_flag.path  # a copy: only the file links them
    assert not main_flag.path.exists()  # the flag file went with its job
    assert files(outputs) == []
    assert "Done" in status_of(page.click_generate(steps=2, seed=32)[-1])  # a fresh job is not stopped
    assert len(files(outputs)) == 1
