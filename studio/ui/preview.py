"""Live preview: while the user edits the prompt or the camera, a small draft is regenerated.

Each edit bumps the session's counter at once, outside the queue (`Latest`), and its preview is
chained after that with the counter's new value as its token. A preview gives up as soon as the
counter has moved on (before, during or after its debounce wait), and otherwise runs the draft
model with a step callback that stops it when a newer edit supersedes it. Drafts are not saved.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.deploy import gpu_entry, gpu_seconds
from studio.models.manager import ModelUnavailable
from studio.pipelines import txt2img
from studio.pipelines.drafts import draft_request
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.results import Result
from studio.ui.jobs import Latest

DEBOUNCE_S = 0.6  # a pause in typing this long starts a draft


def draw_draft(manager: Any, latest: Latest, draft: Txt2ImgRequest, session: str, token: int) -> Result:
    """Run `draft`, stopping at the next step once an edit newer than `token` came. Newer, not just
    other: in a ZeroGPU worker `latest` is a copy frozen when the worker was forked, never ahead
    of the app's, so there a draft runs to its end and `live_preview` judges it afterwards."""
    return txt2img.run(draft, manager, on_step=lambda event: latest.current(session) > token)


def live_preview(request: Txt2ImgRequest, manager: Any, latest: Latest, session: str, token: int,
                 debounce_s: float = DEBOUNCE_S, draw: Callable[..., Result] | None = None) -> Result | None:
    """The draft of `request` for edit `token`, or None when a newer edit superseded it. `draw`
    (draft, session, token) makes it: `draw_draft` by default, a GPU entry on a ZeroGPU Space."""
    if latest.stale(session, token):
        return None
    time.sleep(debounce_s)  # in the app, not on a borrowed GPU
    if latest.stale(session, token):
        return None
    draft = draft_request(request, manager.registry)
    result = (draw or functools.partial(draw_draft, manager, latest))(draft, session, token)
    # The last check matters for one-step drafts: an edit during their only step cannot interrupt it.
    return None if result.interrupted or latest.stale(session, token) else result


def wire_live_preview(manager: Any, fields: dict[str, gr.components.Component],
                      make_request: Callable[[dict[str, Any]], Txt2ImgRequest], enabled: gr.Checkbox,
                      image: gr.Image, caption: gr.Markdown, triggers: list[gr.components.Component]) -> None:
    """Regenerate a draft into `image` after edits of `triggers` while `enabled` is ticked; the
    request is made from the `fields` widgets' values by `make_request`."""
    latest = Latest()
    # Only the draft itself borrows a ZeroGPU GPU; the wait and the staleness checks stay here.
    draw = gpu_entry(functools.partial(draw_draft, manager, latest), lambda draft, *_: gpu_seconds(draft))

    def session_of(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "api"

    def bump(request: gr.Request) -> int:
        return latest.bump(session_of(request))

    def preview(data: dict, request: gr.Request):
        # One dict of inputs (not *values): Gradio injects `request` only into named parameters.
        if not data[enabled]:
            return gr.skip(), gr.skip()
        values = {name: data[widget] for name, widget in fields.items()}
        try:
            result = live_preview(make_request(values), manager, latest, session_of(request), data[edit],
                                  draw=draw)
        except (ValueError, TypeError, ModelUnavailable) as exc:
            return gr.skip(), f"Preview paused: {exc}"
        if result is None:  # superseded: the newer edit's preview will answer
            return gr.skip(), gr.skip()
        r = result.request
        return result.images[0], (f"Draft: {r.model}, {r.num_inference_steps} step(s), {r.width}×{r.height}, "
                                  f"seed {r.seed}. Not saved; press Generate to keep.")

    edit = gr.State(0)  # the token of this tab's latest edit
    for component in [enabled, *triggers]:
        # Every edit's bump is sent at once ("multiple"): with "always_last" a slow page holds an
        # edit back until the previous bump has answered, the server sees a pause that the user
        # never made, and a superseded draft gets through. The preview is chained after the bump,
        # so it carries its own edit's token. It has a
        # queue of its own, apart from the GPU group: a waiting preview never holds a generation slot, and
        # the model manager's lock still runs one model at a time.
        component.change(bump, None, edit, queue=False, api_visibility="private", trigger_mode="multiple").then(
            preview, {edit, enabled, *fields.values()}, [image, caption], concurrency_id="preview",
            concurrency_limit=1, show_progress="hidden", api_visibility="private",
            trigger_mode="always_last")  # edits made while a preview runs are answered by one more
