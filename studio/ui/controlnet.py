"""The ControlNet tab: two control units (an image, its hint, type, ControlNet, weight, start/end,
resize rule), an optional initial image, and every text-to-image knob. "Preview hint" shows the
hint before generating; it can be painted on (white lines for edges, for instance) or replaced by
an upload, and Generate uses it as shown. `/controlnet` takes the fields by name (the second unit's
suffixed `_2`); `/control_hint` returns a hint on its own."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.fields import defaults, specs
from studio.groups_control import CONTROL_TYPES
from studio.images import open_image
from studio.tasks import TASKS
from studio.ui.control_unit import (
    controlnet_choices,
    editor_hint,
    unit_panel,
    wire_preview,
)
from studio.ui.generate import INPUT_ERRORS, wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.tab import (
    AppContext,
    Tab,
    aspect_for,
    model_and_size,
    results,
    sampler,
    style,
    upload_path,
    wire_model_and_sampler,
)
from studio.ui.widgets import integral, widget

TASK = TASKS["controlnet"]
PREFIX = "controlnet-"
UNITS = (("", "Control unit 1"), ("_2", "Control unit 2 (stacked; off without an image)"))


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    with gr.Row():
        with gr.Column(scale=3):
            units = [unit_panel(ctx, declared, initial, s, title, PREFIX, open=not s) for s, title in UNITS]
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
            loras = widget(declared["loras"], initial["loras"], f"{PREFIX}loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, PREFIX)
            styles = style(ctx, TASK, PREFIX)
            save_hints = widget(declared["save_hints"], initial["save_hints"], f"{PREFIX}save-hints")
        with gr.Column(scale=2):
            out = results(PREFIX)

    widgets = dict(prompt=prompt, negative_prompt=negative_prompt, init_image=init_image, strength=strength,
                   save_hints=save_hints, **size, **samp, **styles, **units[0], **units[1], loras=loras)
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
        wire_preview(ctx, unit, s, [size["width"], size["height"]], out["status"])
    wire_hint_api(ctx)
    return tab


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
                 preprocess=False, **ctx.gpu_queue)
