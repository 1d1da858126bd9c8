"""The ControlNet tab: two control units (an image, its hint, type, ControlNet, weight, start/end,
resize rule), an optional initial image, and every text-to-image knob. "Preview hint" shows the
hint before generating; it can be painted on (white lines for edges, for instance) or replaced by
an upload, and Generate uses it as shown. `/controlnet` takes the fields by name (the second unit's
suffixed `_2`); `/control_hint` returns a hint on its own."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.fields import defaults, specs
from studio.groups import CONTROL_TYPES, usable_controlnets
from studio.images import open_image
from studio.tasks import TASKS
from studio.ui.generate import INPUT_ERRORS, wire_generate
from studio.ui.jobs import GPU
from studio.ui.tab import (AppContext, Tab, aspect_for, model_and_size, results, sampler, status_html, style,
                           upload_path, wire_model_and_sampler)
from studio.ui.widgets import integral, widget

TASK = TASKS["controlnet"]
PREFIX = "controlnet-"
UNITS = (("", "Control unit 1"), ("_2", "Control unit 2 (stacked; off without an image)"))
AUTO = "— first for the control type"


def controlnet_choices(registry: Any, model_name: str) -> list[tuple[str, str]]:
    """The ControlNets that fit the model, and "" (pick one for the control type)."""
    nets = usable_controlnets(registry, registry.get(model_name))
    return [(AUTO, "")] + [(f"{m.label} · {', '.join(m.control_types)}", m.name) for m in nets]


def editor_hint(value: Any) -> Any:
    """The hint an image editor shows (its picture with what was painted on it), or None when empty."""
    if not isinstance(value, dict) or not value.get("background"):
        return None
    return value.get("composite") or value["background"]


def unit_panel(ctx: AppContext, declared: dict, initial: dict, suffix: str, title: str) -> dict[str, Any]:
    """One unit's widgets, keyed by request field; the hint's editor (page) and the hidden API
    field for it are "hint_editor" and "control_hint"."""
    def w(name: str, elem: str, **kw: Any) -> Any:
        return widget(declared[name + suffix], initial[name + suffix], f"{PREFIX}{elem}{suffix}", **kw)

    with gr.Accordion(title, open=not suffix, elem_id=f"{PREFIX}unit{suffix or '_1'}"):
        with gr.Row():
            image = w("control_image", "image", height=260)
            hint_editor = gr.ImageEditor(label="Hint (preview, paint or upload)", type="filepath",
                                         format="png", height=260, sources=["upload", "clipboard"],
                                         brush=gr.Brush(colors=["#ffffff", "#000000"], default_size=4),
                                         elem_id=f"{PREFIX}hint{suffix}")
        with gr.Row(equal_height=True):
            control_type = w("control_type", "type")
            model = w("controlnet_model", "model", choices=controlnet_choices(ctx.manager.registry, ctx.default_model))
            preview = gr.Button("Preview hint", size="sm", elem_id=f"{PREFIX}preview{suffix}", min_width=120)
        with gr.Row():
            weight = w("controlnet_conditioning_scale", "weight")
            start = w("control_guidance_start", "start")
            end = w("control_guidance_end", "end")
        with gr.Row():
            resize_mode = w("control_resize_mode", "resize-mode")
            canny = initial["control_type" + suffix] == "canny"
            low = w("canny_low_threshold", "canny-low", visible=canny)
            high = w("canny_high_threshold", "canny-high", visible=canny)
        hint = w("control_hint", "hint-api", visible=False)  # the API's hint: a plain file
    control_type.change(lambda t: [gr.update(visible=t == "canny")] * 2, control_type, [low, high], queue=False,
                        api_visibility="private")
    return {n + suffix: v for n, v in dict(
        control_image=image, control_hint=hint, control_type=control_type, controlnet_model=model,
        controlnet_conditioning_scale=weight, control_guidance_start=start, control_guidance_end=end,
        control_resize_mode=resize_mode, canny_low_threshold=low, canny_high_threshold=high,
        hint_editor=hint_editor, preview=preview).items()}


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    with gr.Row():
        with gr.Column(scale=2):
            units = [unit_panel(ctx, declared, initial, s, title) for s, title in UNITS]
            prompt = widget(declared["prompt"], None, f"{PREFIX}prompt", lines=3, info=None,
                            placeholder="What the image should show; the hints decide where")
            negative_prompt = widget(declared["negative_prompt"], initial["negative_prompt"], f"{PREFIX}negative-prompt",
                                     lines=2, info=None)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}stop")
            size = model_and_size(ctx, TASK, PREFIX)
            samp = sampler(ctx, TASK, PREFIX)
            with gr.Accordion("Initial image (optional: image to image)", open=False):
                init_image = widget(declared["init_image"], None, f"{PREFIX}init-image", height=220)
                strength = widget(declared["strength"], initial["strength"], f"{PREFIX}strength")
            styles = style(ctx, TASK, PREFIX)
            save_hints = widget(declared["save_hints"], initial["save_hints"], f"{PREFIX}save-hints")
        with gr.Column(scale=3):
            out = results(PREFIX)

    widgets = dict(prompt=prompt, negative_prompt=negative_prompt, init_image=init_image, strength=strength,
                   save_hints=save_hints, **size, **samp, **styles, **units[0], **units[1])
    widgets = {k: v for k, v in widgets.items() if not k.startswith(("hint_editor", "preview"))}
    fields = {name: widgets[name] for name in declared}
    page = {**fields, "control_hint": units[0]["hint_editor"], "control_hint_2": units[1]["hint_editor_2"]}

    def read_page(values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "control_hint": editor_hint(values["control_hint"]),
                "control_hint_2": editor_hint(values["control_hint_2"])}

    tab = Tab(TASK, fields, [size["aspect"]], out["gallery"], out["selected"], out["send_row"],
              image_input=units[0]["control_image"], page_fields=page, read_page=read_page,
              fill_extras=lambda r: [aspect_for(registry.get(r.model), r.width, r.height)])
    wire_generate(tab, ctx, generate, stop, out)
    wire_model_and_sampler(registry, size, samp, out["used_seed"])
    size["model"].change(lambda m: [gr.update(choices=controlnet_choices(registry, m))] * 2, size["model"],
                         [u["controlnet_model" + s] for u, (s, _) in zip(units, UNITS)], queue=False,
                         api_visibility="private")
    for unit, (s, _) in zip(units, UNITS):
        wire_preview(ctx, unit, s, size, out["status"])
    wire_hint_api(ctx)
    return tab


def wire_preview(ctx: AppContext, unit: dict, s: str, size: dict, status: Any) -> None:
    """"Preview hint": the unit's hint at the output size, into its editor (errors in the status line)."""
    from studio.pipelines.controlnet import control_hint

    def preview(path: str | None, control_type: str, low: Any, high: Any, width: Any, height: Any, mode: str):
        try:
            image = open_image(path) if path else None
            hint = control_hint(ctx.manager, image, control_type, integral(low), integral(high), integral(width),
                                integral(height), mode)
        except INPUT_ERRORS as exc:
            return gr.update(), status_html(str(exc), "error")
        return hint, status_html(f"Hint ready ({control_type}, {hint.width}×{hint.height}): paint on it or "
                                 "Generate.", "done")

    inputs = [unit["control_image" + s], unit["control_type" + s], unit["canny_low_threshold" + s],
              unit["canny_high_threshold" + s], size["width"], size["height"], unit["control_resize_mode" + s]]
    unit["preview" + s].click(preview, inputs, [unit["hint_editor" + s], status], concurrency_id=GPU,
                              concurrency_limit=1, api_visibility="private")


def wire_hint_api(ctx: AppContext) -> None:
    """`/control_hint(image, control_type, canny_low_threshold, canny_high_threshold)` -> the hint (PNG)."""
    from studio.pipelines.controlnet import control_hint

    declared, initial = specs(TASK.request), defaults(TASK.request)

    def control_hint_api(image: Any, control_type: str = "depth", canny_low_threshold: int = 100,
                         canny_high_threshold: int = 200):
        """A ControlNet hint made from `image`: depth (near is bright), canny edges or line art, at
        the image's aspect and at most a megapixel."""
        try:
            opened = open_image(upload_path(image, "Control image (control_image)")) if image else None
            return control_hint(ctx.manager, opened, control_type, integral(canny_low_threshold),
                                integral(canny_high_threshold))
        except INPUT_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    with gr.Row(visible=False):
        image = gr.Image(type="filepath", label="Control image")
        control_type = gr.Dropdown(list(CONTROL_TYPES), value=initial["control_type"], label="Control type")
        low = gr.Number(initial["canny_low_threshold"], precision=0, label=declared["canny_low_threshold"].label)
        high = gr.Number(initial["canny_high_threshold"], precision=0, label=declared["canny_high_threshold"].label)
        hint = gr.Image(type="pil", format="png", label="Hint")
        button = gr.Button()
    button.click(control_hint_api, [image, control_type, low, high], hint, api_name="control_hint",
                 concurrency_id=GPU, concurrency_limit=1, preprocess=False)
