"""Generate and Stop for any tab: one page event and one API endpoint per task.

The page's event is a generator: the job runs in a thread of its own (ui/jobs.stream_job) while
the page shows its progress, cheap previews of the latents and "waiting" messages in the tab's
status line. A bad input or an unavailable model is one message in that line, and the last
results stay on screen. The API endpoint (/txt2img, /img2img, ...) takes the request's fields by
name and raises a clear error instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.deploy import gpu_entry, request_seconds
from studio.late_cancel import cancelled_events
from studio.models.manager import ModelUnavailable
from studio.models.pool import OutOfMemory
from studio.outputs import save_result_images
from studio.results import Stopped
from studio.ui.jobs import stream_job
from studio.ui.tab import AppContext, Tab, status_html
from studio.ui.widgets import api_function, api_order

# The user's to fix: a message, not a traceback. So are a Stop pressed while the job still waited
# for the GPU (it made nothing) and running out of GPU memory even after the low-memory retry.
INPUT_ERRORS = (ValueError, ModelUnavailable, OutOfMemory)


QUEUED = "Queued: the GPU is busy with another job; yours starts when it is free."
NOT_RUN = "Stopped while it waited in the queue: it did not run; nothing was made."


def stopped_text(result: Any, on_page: bool = True) -> str:
    """What to say about a job stopped part-way: what it reached, and that nothing was saved."""
    where = " The image stays here: download it from the gallery to keep it." if on_page else ""
    return (f"Stopped after {result.steps_done} of {result.total_steps} steps; not saved.{where}")


def was_cancelled(request: gr.Request | None) -> Callable[[], bool]:
    """Whether the API caller has cancelled this queue event: its id, among those LateCancel
    recorded. The event id is Gradio's context variable, set for the running handler (as Gradio's
    own gr.Progress and gr.Info read it)."""
    from gradio.context import LocalContext

    event_id, app = LocalContext.event_id.get(None), getattr(request, "app", None)
    if event_id is None or app is None:  # called outside a queue event
        return lambda: False
    events = cancelled_events(app)
    return lambda: event_id in events


def not_saved(exc: OSError, outputs_dir: Path, on_page: bool = True) -> str:
    """What to say when the outputs folder refused the files (disk full, read-only, gone)."""
    where = ("They are shown here only: download the ones you want from the gallery, then" if on_page
             else "Nothing was saved:")
    return (f"The images could not be saved in {outputs_dir}: {exc.strerror or exc}. {where} free some space "
            "or choose another --outputs folder.")


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def job_key(request: gr.Request | None, task: Any) -> str:
    """Whose job a Stop ends: this page's job in this tab only."""
    return f"{session_of(request)}/{task.name}"


def gallery_items(paths: list, result: Any) -> list:
    """Saved images for the gallery; after a lens blur, the blurred ones first, then the sharp;
    kept ControlNet hints last."""
    n, hints = len(result.images), len(result.hints)
    paths = paths[:n * (2 if result.originals else 1)] + paths[len(paths) - hints:]  # not a result's other files
    images, captions = paths[:len(paths) - hints], [f"hint {i + 1}" for i in range(hints)]
    if result.originals:
        f_number = getattr(result.request, "aperture_f_number", None)
        captions = [f"f/{f_number:g} lens blur" if i < n else "sharp" for i in range(len(images))] + captions
    else:
        captions = [None] * len(images) + captions
    return [str(p) if c is None else (str(p), c) for p, c in zip(paths, captions)]


@dataclass
class ResultHooks:
    """How a tab whose results are more than images (a huge upscale) saves and shows them."""

    save: Callable[[Any, Path], list]  # (result, outputs folder) -> saved paths, the gallery's first
    page_outputs: list  # widgets set after a run, besides gallery, seed, details, status and history
    page_values: Callable[[list, Any], list]  # (paths, result) -> their values
    api_outputs: list  # what the API returns
    api_values: Callable[[list, Any], tuple]  # (paths, result) -> its values
    api_doc: str | None = None  # what the API returns, in words (default: images, seed and details)


def default_hooks(gallery: Any, api_seed: Any, details: Any) -> ResultHooks:
    """An image task's results: the images in the gallery; the API returns them, the seed and details."""
    return ResultHooks(save_result_images, [], lambda paths, result: [],
                       [gallery, api_seed, details],
                       lambda paths, result: (gallery_items(paths, result), result.seed, result.summary()))


def wire_generate(tab: Tab, ctx: AppContext, generate: gr.Button, stop: gr.Button, out: dict[str, Any],
                  hooks: ResultHooks | None = None) -> None:
    manager, task, devices = ctx.manager, tab.task, ctx.devices
    api_seed = gr.Number(visible=False, precision=0)  # the API returns the seed as a number
    hooks = hooks or default_hooks(out["gallery"], api_seed, out["details"])
    extra_skip = [gr.skip()] * len(hooks.page_outputs)
    gallery, used_seed, details, status = out["gallery"], out["used_seed"], out["details"], out["status"]
    skip = gr.skip()

    def run_job(request: Any, on_step: Any) -> Any:  # on the least busy GPU, from start to end
        return devices.run(task.run, request, on_step)

    def prepare(values: dict[str, Any]) -> Any:
        try:
            request = tab.make_request(values)
        except TypeError as exc:  # a value of the wrong kind for its field
            raise ValueError(str(exc)) from None
        request.validate(manager.registry)
        return request

    def run_page(data: dict, flag: Any):
        """The page's job (on ZeroGPU, in `spaces`' worker: `flag` then stops it through its file)."""
        try:
            job = prepare(tab.read_page({name: data[w] for name, w in tab.page_inputs.items()}))
        except INPUT_ERRORS as exc:
            yield skip, skip, skip, status_html(str(exc), "error"), skip, *extra_skip
            return
        result = None
        try:
            for kind, payload in stream_job(lambda job, _, on_step: run_job(job, on_step), job, None, flag):
                if kind == "wait":
                    yield skip, skip, skip, status_html(payload, "waiting"), skip, *extra_skip
                elif kind == "step":
                    event, images = payload
                    text = (event.detail or f"Step {event.step} of {event.total}") + (
                        " · stopping…" if flag.is_set() else "")
                    yield (images or skip, skip, skip, status_html(text, "running", event.step, event.total), skip,
                           *extra_skip)
                else:
                    result = payload
        except INPUT_ERRORS as exc:
            yield skip, skip, skip, status_html(str(exc), "error"), skip, *extra_skip
            return
        except Stopped as exc:
            yield skip, skip, skip, status_html(str(exc), "stopped"), skip, *extra_skip
            return
        if result.interrupted:  # stopped part-way: shown, so nothing is lost, but not saved nor in the history
            yield (list(result.images), str(result.seed), result.summary(), status_html(stopped_text(result), "stopped"),
                   skip, *extra_skip)
            return
        try:
            paths = hooks.save(result, ctx.outputs_dir)
        except OSError as exc:  # the images stay on the page; nothing half-written stays on disk
            yield (list(result.images), str(result.seed), result.summary(),
                   status_html(not_saved(exc, ctx.outputs_dir), "error"), skip, *extra_skip)
            return
        history = [*(data[ctx.history] or []), *((str(p), task.name) for p in paths[:len(result.images)])]
        yield (gallery_items(paths, result), str(result.seed), result.summary(), status_html(result.status(), "done"),
               history, *hooks.page_values(paths, result))

    # On a ZeroGPU Space each run borrows a GPU for the seconds its request needs (studio.deploy).
    def page_request(data: dict, *_: Any) -> Any:
        return prepare(tab.read_page({name: data[w] for name, w in tab.page_inputs.items()}))

    page_job = gpu_entry(run_page, request_seconds(page_request))

    def on_page(data: dict, request: gr.Request):
        # One dict of inputs (not *values): Gradio injects `request` only into named parameters.
        # The flag is taken here, in the server's process, where Stop sets it (not in ZeroGPU's worker).
        session = job_key(request, task)
        flag = ctx.stops.start(session)
        try:
            if flag.is_set():  # Stop was pressed while the job waited in the queue
                yield skip, skip, skip, status_html(NOT_RUN, "stopped"), skip, *extra_skip
                return
            yield from page_job(data, flag)
        finally:
            ctx.stops.finish(session, flag)

    async def on_api(values: dict[str, Any], progress: gr.Progress, request: gr.Request):
        # A coroutine, so that a caller's cancel (gradio_client's `job.cancel()`) reaches the job:
        # Gradio cancels the awaiting task, and the job's thread stops at its next step. A cancel
        # sent before the caller knew the job's id reaches it through LateCancel instead.
        session, cancelled = job_key(request, task), was_cancelled(request)
        if cancelled():
            raise gr.Error(NOT_RUN, print_exception=False)
        try:
            job = prepare(values)
        except INPUT_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        flag = ctx.stops.start(session)

        def on_step(event: Any) -> bool:
            if event.message is not None:
                progress(0.0, desc=event.message)
            else:
                progress((event.step, event.total), desc=event.detail or "Denoising", unit="steps")
            return flag.is_set() or cancelled()

        try:
            result = await asyncio.to_thread(run_job, job, on_step)
        except (*INPUT_ERRORS, Stopped) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except asyncio.CancelledError:
            flag.set()
            raise
        finally:
            ctx.stops.finish(session, flag)
        if result.interrupted:
            raise gr.Error(stopped_text(result, on_page=False), print_exception=False)
        try:
            paths = await asyncio.to_thread(hooks.save, result, ctx.outputs_dir)
        except OSError as exc:
            raise gr.Error(not_saved(exc, ctx.outputs_dir, on_page=False), print_exception=False) from None
        return hooks.api_values(paths, result)

    # One queue for every GPU job, as many at once as there are GPUs (each job pinned to one).
    # preprocess=False: raw values reach validation, whose errors name the field, the range and
    # the value, also for API callers that bypass the sliders.
    gpu = dict(**ctx.gpu_queue, preprocess=False)

    def api_request(*values: Any) -> Any:  # the fields by position, then request and progress
        return prepare(dict(zip(api_order(task.request), values)))

    # Said at once, outside the queue: a job queued behind another's would otherwise show nothing
    # until its turn. Its place in line is Gradio's own "queue: k/n | eta" from the queue that
    # holds the job, at the status line's right edge (show_progress="minimal" on `status`;
    # assets/studio.css makes it paint), so no count of ours can drift from the real line. This
    # also makes the job's Stop flag now, so that a Stop pressed while the job waits reaches it.
    def queued(request: gr.Request) -> Any:
        ctx.stops.expect(job_key(request, task))
        return status_html(QUEUED, "waiting") if devices.busy else skip

    generate.click(queued, None, status, queue=False, show_progress="hidden", api_visibility="private")
    generate.click(on_page, {*tab.page_inputs.values(), ctx.history},
                   [gallery, used_seed, details, status, ctx.history, *hooks.page_outputs],
                   show_progress="minimal", show_progress_on=status, api_visibility="private", **gpu)
    api_button = gr.Button(visible=False)
    doc = (f"{task.label}: returns {hooks.api_doc or 'the images (PNG files that carry their settings), the seed used and the details'}"
           f". Parameters are the request's fields; omitted ones take the page's defaults.")
    api_inputs = [tab.fields[name] for name in api_order(task.request)]
    api_button.click(gpu_entry(api_function(on_api, task.request, doc), request_seconds(api_request)), api_inputs,
                     hooks.api_outputs, api_name=task.name, show_progress="hidden", **gpu)

    def stop_job(request: gr.Request) -> Any:
        flag = ctx.stops.stop(job_key(request, task))
        return status_html(NOT_RUN, "stopped") if flag is not None and not flag.started else skip

    stop.click(stop_job, inputs=None, outputs=status, queue=False, show_progress="hidden", api_visibility="private")
