"""Generate and Stop for any tab: one page event and one API endpoint per task.

The page's event is a generator: the job runs in a thread of its own (ui/jobs.stream_job) while
the page shows its progress, cheap previews of the latents and "waiting" messages in the tab's
status line. A bad input or an unavailable model is one message in that line, and the last
results stay on screen. The API endpoint (/txt2img, /img2img, ...) takes the request's fields by
name and raises a clear error instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.models.manager import ModelUnavailable
from studio.outputs import save_result_images
from studio.results import Stopped
from studio.ui.jobs import GPU, stream_job
from studio.ui.tab import AppContext, Tab, status_html
from studio.ui.widgets import api_function, api_order

INPUT_ERRORS = (ValueError, ModelUnavailable)  # the user's to fix: a message, not a traceback
# ... and a Stop pressed while the job still waited for the GPU (it made nothing): said as plainly.


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
    manager, task = ctx.manager, tab.task
    api_seed = gr.Number(visible=False, precision=0)  # the API returns the seed as a number
    hooks = hooks or default_hooks(out["gallery"], api_seed, out["details"])
    extra_skip = [gr.skip()] * len(hooks.page_outputs)
    gallery, used_seed, details, status = out["gallery"], out["used_seed"], out["details"], out["status"]
    skip = gr.skip()

    def prepare(values: dict[str, Any]) -> Any:
        try:
            request = tab.make_request(values)
        except TypeError as exc:  # a value of the wrong kind for its field
            raise ValueError(str(exc)) from None
        request.validate(manager.registry)
        return request

    def on_page(data: dict, request: gr.Request):
        # One dict of inputs (not *values): Gradio injects `request` only into named parameters.
        session = job_key(request, task)
        try:
            job = prepare(tab.read_page({name: data[w] for name, w in tab.page_inputs.items()}))
        except INPUT_ERRORS as exc:
            yield skip, skip, skip, status_html(str(exc), "error"), skip, *extra_skip
            return
        flag = ctx.stops.start(session)
        result = None
        try:
            for kind, payload in stream_job(task.run, job, manager, flag):
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
        finally:
            ctx.stops.finish(session, flag)
        paths = hooks.save(result, ctx.outputs_dir)
        history = [*(data[ctx.history] or []), *((str(p), task.name) for p in paths[:len(result.images)])]
        kind = "stopped" if result.interrupted else "done"
        yield (gallery_items(paths, result), str(result.seed), result.summary(), status_html(result.status(), kind),
               history, *hooks.page_values(paths, result))

    def on_api(values: dict[str, Any], progress: gr.Progress, request: gr.Request):
        session = job_key(request, task)
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
            return flag.is_set()

        try:
            result = task.run(job, manager, on_step)
        except (*INPUT_ERRORS, Stopped) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        finally:
            ctx.stops.finish(session, flag)
        return hooks.api_values(hooks.save(result, ctx.outputs_dir), result)

    # preprocess=False: raw values reach validation, whose errors name the field, the range and
    # the value, also for API callers that bypass the sliders.
    gpu = dict(concurrency_id=GPU, concurrency_limit=1, preprocess=False)
    generate.click(on_page, {*tab.page_inputs.values(), ctx.history},
                   [gallery, used_seed, details, status, ctx.history, *hooks.page_outputs],
                   show_progress="hidden", api_visibility="private", **gpu)
    api_button = gr.Button(visible=False)
    doc = (f"{task.label}: returns {hooks.api_doc or 'the images (PNG files that carry their settings), the seed used and the details'}"
           f". Parameters are the request's fields; omitted ones take the page's defaults.")
    api_inputs = [tab.fields[name] for name in api_order(task.request)]
    api_button.click(api_function(on_api, task.request, doc), api_inputs, hooks.api_outputs,
                     api_name=task.name, show_progress="hidden", **gpu)

    def stop_job(request: gr.Request) -> None:
        ctx.stops.stop(job_key(request, task))

    stop.click(stop_job, inputs=None, outputs=None, queue=False, api_visibility="private")
