"""What every generation tab is made of: the interface the app and the presets panel use, and
the shared panels (model and size, sampler, style, results) built from the field declarations.

No tab imports another: the app wires tabs together through `Tab` only.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from studio.buckets import buckets
from studio.fields import defaults, label, specs
from studio.images import open_image, open_mask
from studio.tasks import Task
from studio.ui.jobs import GPU, StopFlags
from studio.ui.widgets import elem_id, parse, shown, widget

CUSTOM = "Custom"


@dataclass
class AppContext:
    """What every tab builder gets from the app."""

    manager: Any
    default_model: str
    outputs_dir: Path
    stops: StopFlags
    history: gr.State  # this session's saved images: [(path, task), ...]
    styles: dict[str, Any]  # the styles library by name
    library: Any = None  # the LoRA library (studio.loras.LoraLibrary) the LoRA pickers list; None: no picker
    devices: Any = None  # the GPUs jobs run on (studio.models.pool.DevicePool); None: `manager` alone

    @property
    def gpu_queue(self) -> dict[str, Any]:
        """Event arguments of everything that runs on a GPU: one queue, as many at once as there are
        GPUs. (Gradio gives a shared queue the lowest limit any of its events asks for.)"""
        return dict(concurrency_id=GPU, concurrency_limit=len(self.devices) if self.devices else 1)


@dataclass
class Tab:
    """A built tab, as the app and the presets panel see it."""

    task: Task
    fields: dict[str, gr.components.Component]  # one widget per request field, in declaration order
    extras: list[gr.components.Component]  # widgets also set when settings are restored (the aspect)
    gallery: gr.Gallery
    selected: gr.State  # the path of the gallery image the user clicked last
    send_row: gr.Row  # where the app puts "Send to …" buttons
    image_input: gr.components.Component | None = None  # what "Send to" this tab fills
    fill_extras: Callable[[Any], list] = lambda request: []  # values for `extras` showing a request
    # The page may show a field through another widget than the API's (an image editor holding the
    # image and its mask); `read_page` turns the page's raw values into the API's.
    page_fields: dict[str, gr.components.Component] | None = None
    read_page: Callable[[dict[str, Any]], dict[str, Any]] = lambda values: values

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [*self.fields.values(), *self.extras]

    @property
    def page_inputs(self) -> dict[str, gr.components.Component]:
        return self.page_fields or self.fields

    def make_request(self, values: dict[str, Any]) -> Any:
        """A request from raw widget or API values (not yet validated; images opened safely; an
        image `read_page` already opened is taken as it is)."""
        declared = specs(self.task.request)
        parsed = {name: parse(declared[name], raw) for name, raw in values.items()}
        for name, spec in declared.items():
            value = parsed.get(name)
            if spec.kind == "image" and value is not None and not isinstance(value, Image.Image):
                path = upload_path(value, label(name, spec))
                try:
                    parsed[name] = (open_mask if name == "mask" else open_image)(path)
                except ValueError as exc:  # say which upload, when the task takes several
                    several = sum(s.kind == "image" for s in declared.values()) > 1
                    raise ValueError(f"{label(name, spec)}: {exc}" if several else str(exc)) from None
        return self.task.request(**parsed)

    def fill(self, request: Any, registry: Any) -> list:
        """Updates for `outputs` that show `request`: size sliders bounded by its model's range
        (which may not be the model shown now); an input image is left as it is."""
        declared, (lo, hi) = specs(self.task.request), registry.get(request.model).size_range

        def update(name: str, spec: Any) -> Any:
            if spec.kind == "image":
                return gr.update()
            value = shown(spec, getattr(request, name))
            return gr.update(value=value, minimum=lo, maximum=hi) if spec.sized else value

        return [update(n, declared[n]) for n in self.fields] + self.fill_extras(request)


def upload_path(value: Any, what: str = "Image (image)") -> str:
    """The file path Gradio gives for an upload: a FileData dict (raw events) or a path, which must
    lie in Gradio's upload folder (files really uploaded, and the images the app showed).

    Raw events (preprocess=False) skip Gradio's own check for values without FileData's "meta", so
    an API caller could name any file on the server (/etc/passwd, another user's outputs, a path
    with ..) or a URL; those are refused here, and nothing is ever fetched from a URL."""
    path = value.get("path") if isinstance(value, dict) else value
    url = value.get("url") if isinstance(value, dict) else None
    if path is None and isinstance(url, str) or isinstance(path, str) and "://" in path:
        raise ValueError(f"{what} must be an uploaded file, got the URL {str(path or url)!r:.100}: Studio does "
                         "not fetch URLs; upload the file itself")
    if not isinstance(path, (str, Path)) or not str(path):
        raise ValueError(f"{what} must be an uploaded image file, got {value!r:.100}")
    folder = Path(get_upload_folder()).resolve()
    try:
        inside = Path(path).resolve().is_relative_to(folder)  # resolve(): no way out by .. or a link
    except (OSError, ValueError):  # a NUL byte, a loop of links
        inside = False
    if not inside:
        raise ValueError(f"{what} must be a file uploaded to this app, got {str(path)!r:.100}, which lies "
                         "outside its upload folder: upload the file itself")
    return str(path)


# --- model and size ----------------------------------------------------------------------------

def model_choices(manager: Any, task: Task) -> list[tuple[str, str]]:
    """The models that can do `task`; those that cannot be loaded now are marked."""
    out = []
    for name in manager.registry.names("base", task=task.request.needs()):
        reason = manager.available(name)
        label = manager.registry.get(name).label
        out.append((label if reason is None else f"{label} — not available now", name))
    return out


def bucket_table(entry: Any) -> dict[str, tuple[int, int]]:
    """Aspect buckets near the model's default area, every one within its size range."""
    area = entry.defaults.width * entry.defaults.height
    return buckets(area, multiple=64 if area >= 256 * 256 else 8, min_side=entry.size_range[0])


def bucket_choices(entry: Any) -> list[tuple[str, str]]:
    """Aspect-ratio choices sized for the model, e.g. ("16:9 · 1344×768", "16:9"), and Custom."""
    return [(f"{r} · {w}×{h}", r) for r, (w, h) in bucket_table(entry).items()] + [(CUSTOM, CUSTOM)]


def aspect_for(entry: Any, width: Any, height: Any) -> Any:
    """The aspect dropdown for `entry`, showing the bucket that matches width × height (or Custom)."""
    match = [r for r, wh in bucket_table(entry).items() if wh == (width, height)]
    return gr.update(choices=bucket_choices(entry), value=match[0] if match else CUSTOM)


def model_and_size(ctx: AppContext, task: Task, prefix: str) -> dict[str, Any]:
    """Model dropdown, aspect buckets, width and height (sliders bounded by the model's range)."""
    declared, registry = specs(task.request), ctx.manager.registry
    entry = registry.get(ctx.default_model)
    d = entry.defaults
    model = widget(declared["model"], ctx.default_model, elem_id(prefix, "model"),
                   choices=model_choices(ctx.manager, task))
    aspect = gr.Dropdown(bucket_choices(entry), value=aspect_for(entry, d.width, d.height)["value"],
                         label="Aspect ratio", elem_id=elem_id(prefix, "aspect"))
    with gr.Row():
        width = widget(declared["width"], d.width, elem_id(prefix, "width"), range=entry.size_range)
        height = widget(declared["height"], d.height, elem_id(prefix, "height"), range=entry.size_range)
    return dict(model=model, aspect=aspect, width=width, height=height)


def wire_sizes(registry: Any, model: Any, aspect: Any, width: Any, height: Any) -> None:
    """Buckets set the size; a size typed by hand shows its bucket or Custom."""
    def on_aspect(model_name: str, ratio: str):
        dims = None if ratio == CUSTOM else bucket_table(registry.get(model_name)).get(ratio)
        return (gr.update(), gr.update()) if dims is None else dims

    # .input fires on the user's own edits only, so restored settings are not undone.
    aspect.input(on_aspect, [model, aspect], [width, height], api_visibility="private", queue=False)
    for box in (width, height):
        box.input(lambda m, w, h: aspect_for(registry.get(m), w, h), [model, width, height], aspect,
                  api_visibility="private", queue=False)


def on_model_defaults(registry: Any, model_name: str) -> list:
    """Updates for [aspect, width, height, steps, guidance, scheduler] when the model changes:
    its defaults, and the size sliders bounded by its range."""
    entry = registry.get(model_name)
    e = entry.defaults
    lo, hi = entry.size_range
    return [aspect_for(entry, e.width, e.height), gr.update(value=e.width, minimum=lo, maximum=hi),
            gr.update(value=e.height, minimum=lo, maximum=hi), e.num_inference_steps, e.guidance_scale, e.scheduler]


def wire_model_and_sampler(registry: Any, size: dict[str, Any], samp: dict[str, Any], used_seed: Any) -> list:
    """Buckets, hand-typed sizes, a model's defaults and the reuse-seed button; returns the widgets
    a model change sets (for other events that switch models)."""
    wire_sizes(registry, size["model"], size["aspect"], size["width"], size["height"])
    model_outputs = [size["aspect"], size["width"], size["height"], samp["num_inference_steps"],
                     samp["guidance_scale"], samp["scheduler"]]
    private = dict(api_visibility="private", queue=False)
    size["model"].input(lambda m: on_model_defaults(registry, m), size["model"], model_outputs, **private)
    samp["reuse"].click(lambda seed: int(seed) if str(seed).isdigit() else gr.update(), used_seed, samp["seed"],
                        **private)
    return model_outputs


# --- sampler and style -------------------------------------------------------------------------

def sampler(ctx: AppContext, task: Task, prefix: str) -> dict[str, Any]:
    declared, initial = specs(task.request), defaults(task.request)
    d = ctx.manager.registry.get(ctx.default_model).defaults
    with gr.Row():
        steps = widget(declared["num_inference_steps"], d.num_inference_steps, elem_id(prefix, "steps"))
        guidance = widget(declared["guidance_scale"], d.guidance_scale, elem_id(prefix, "guidance"))
    with gr.Row():
        scheduler = widget(declared["scheduler"], d.scheduler, elem_id(prefix, "scheduler"))
        batch = ({"batch_size": widget(declared["batch_size"], initial["batch_size"], elem_id(prefix, "batch-size"))}
                 if "batch_size" in declared else {})  # a panorama is one image
    with gr.Row(equal_height=True):
        seed = widget(declared["seed"], initial["seed"], elem_id(prefix, "seed"), scale=3)
        reuse = gr.Button("♻️ Last seed", size="sm", elem_id=elem_id(prefix, "reuse-seed"), scale=1, min_width=110)
    return dict(num_inference_steps=steps, guidance_scale=guidance, scheduler=scheduler, seed=seed, reuse=reuse,
                **batch)


def style(ctx: AppContext, task: Task, prefix: str) -> dict[str, Any]:
    """The style picker (the shipped library) and the two text boxes it fills."""
    declared, initial = specs(task.request), defaults(task.request)
    with gr.Accordion("Style", open=False, elem_id=elem_id(prefix, "style")):
        # Custom values allowed: a preset or an image may name a style this library lacks.
        picker = widget(declared["style_name"], initial["style_name"], elem_id(prefix, "style-name"),
                        choices=[("— your own (the boxes below)", ""), *((n, n) for n in ctx.styles)],
                        allow_custom_value=True)
        style_prompt = widget(declared["style_prompt"], initial["style_prompt"], elem_id(prefix, "style-prompt"))
        style_negative = widget(declared["style_negative_prompt"], initial["style_negative_prompt"],
                                elem_id(prefix, "style-negative"))

    def pick(name: str):
        chosen = ctx.styles.get(name)
        return (gr.update(), gr.update()) if chosen is None else (chosen.prompt, chosen.negative_prompt)

    private = dict(api_visibility="private", queue=False)
    picker.input(pick, picker, [style_prompt, style_negative], **private)
    for box in (style_prompt, style_negative):  # edited by hand: no longer the library's style
        box.input(lambda: "", None, picker, **private)
    return dict(style_name=picker, style_prompt=style_prompt, style_negative_prompt=style_negative)


# --- results -----------------------------------------------------------------------------------

def results(prefix: str, top: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Status line, gallery, seed used, details, and the row for "Send to …" buttons; `top` builds
    what a tab shows first, between the status line and the gallery (the 360° viewer): out["top"]."""
    status = gr.HTML(status_html("Ready."), elem_id=elem_id(prefix, "status"), elem_classes=["status-line"])
    shown_first = top() if top is not None else None
    # Two fixed columns: with Gradio's default (fit the columns to the images) one image gets a
    # full-width square cell that the gallery's height crops at the bottom.
    gallery = gr.Gallery(label="Images", format="png", columns=2, fit_columns=False, object_fit="contain",
                         interactive=False, elem_id=elem_id(prefix, "gallery"), elem_classes=["results-gallery"])
    selected = gr.State(None)
    with gr.Row(equal_height=True) as send_row:
        used_seed = gr.Textbox("", label="Seed used", interactive=False, elem_id=elem_id(prefix, "seed-used"))
    details = gr.JSON(label="Generation details", elem_id=elem_id(prefix, "details"))

    def select(evt: gr.SelectData):
        value = evt.value or {}
        image = value.get("image") if isinstance(value, dict) else None
        return image.get("path") if isinstance(image, dict) else None

    gallery.select(select, None, selected, api_visibility="private", queue=False)
    return dict(status=status, gallery=gallery, selected=selected, send_row=send_row, used_seed=used_seed,
                details=details, top=shown_first)


def status_html(text: str, kind: str = "info", step: int | None = None, total: int | None = None) -> str:
    """The status line: a message (info, error or stopped), with a progress bar while running."""
    bar = f'<progress value="{step}" max="{total}"></progress>' if step is not None and total else ""
    return f'<div class="status {kind}">{html.escape(text)}{bar}</div>'
