"""The text-to-image tab: prompt, model and size, sampler, camera, style, SDXL conditioning;
draft mode and live preview; results. The `/txt2img` endpoint takes the request's fields by name."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.fields import defaults, specs
from studio.pipelines.drafts import draft_partner
from studio.tasks import TASKS
from studio.ui.camera import build_camera_panel, wire_camera_summary, wire_horizon_control
from studio.ui.generate import wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.preview import wire_live_preview
from studio.ui.tab import (AppContext, Tab, aspect_for, model_and_size, on_model_defaults, results, sampler, style,
                           wire_model_and_sampler)
from studio.ui.widgets import widget

TASK = TASKS["txt2img"]
MICRO = {"original_size": "original-size", "crops_coords_top_left": "crops", "target_size": "target-size",
         "negative_original_size": "negative-original-size",
         "negative_crops_coords_top_left": "negative-crops", "negative_target_size": "negative-target-size",
         "micro_conditioning_power": "mc-power"}


def draft_button(registry: Any, model_name: str) -> dict[str, Any]:
    """The draft toggle shows its state: on while a draft (few-step) model is chosen."""
    on = any(m.draft == model_name for m in registry.models)
    return dict(value=f"⚡ Draft mode: {'on' if on else 'off'}", variant="primary" if on else "secondary",
                interactive=draft_partner(registry, model_name) is not None)


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = widget(declared["prompt"], None, "prompt", lines=3, placeholder="A lighthouse at dawn, 35mm photo",
                            info=None)
            negative_prompt = widget(declared["negative_prompt"], initial["negative_prompt"], "negative-prompt", lines=2,
                                     info=None)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
                draft_mode = gr.Button(**draft_button(registry, ctx.default_model), elem_id="draft-mode")
                live = gr.Checkbox(False, label="Live preview", elem_id="live-preview")
            size = model_and_size(ctx, TASK, "")
            samp = sampler(ctx, TASK, "")
            camera = build_camera_panel(declared)
            loras = widget(declared["loras"], initial["loras"], "loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, "")
            styles = style(ctx, TASK, "")
            with gr.Accordion("Advanced: SDXL size and crop conditioning", open=False):
                gr.Markdown("Sizes are *height, width*; the crop is *top, left*. Empty: the image's own "
                            "size (for negatives: the value above). The cosine schedule lets this "
                            "metadata act late in sampling only (Berrada et al. 2024); 0 turns it off.")
                micro = {name: widget(declared[name], initial[name], elem, info=None) for name, elem in MICRO.items()}
        with gr.Column(scale=3):
            with gr.Group(visible=False) as preview_box:
                preview_image = gr.Image(label="Live preview (draft)", type="pil", format="png", height=320,
                                         interactive=False, elem_id="preview")
                preview_caption = gr.Markdown("", elem_id="preview-caption")
            out = results("")

    widgets = dict(prompt=prompt, negative_prompt=negative_prompt, **size, **samp, **styles, **micro,
                   **{k: camera[k] for k in declared if k in camera}, loras=loras)
    fields = {name: widgets[name] for name in declared}  # declaration order: the API's parameter order
    tab = Tab(TASK, fields, [size["aspect"]], out["gallery"], out["selected"], out["send_row"],
              fill_extras=lambda r: [aspect_for(registry.get(r.model), r.width, r.height)])
    wire_generate(tab, ctx, generate, stop, out)
    model_outputs = wire_model_and_sampler(registry, size, samp, out["used_seed"])
    size["model"].change(lambda m: gr.update(**draft_button(registry, m)), size["model"], draft_mode,
                         api_visibility="private", queue=False)

    def on_draft_mode(model_name: str):
        partner = draft_partner(registry, model_name)
        if partner is None:
            raise gr.Error(f"model {model_name!r} has no draft model in the registry", print_exception=False)
        return [partner, *on_model_defaults(registry, partner)]

    draft_mode.click(on_draft_mode, size["model"], [size["model"], *model_outputs], api_visibility="private")
    wire_camera_summary(camera, size["width"], size["height"])
    wire_horizon_control(registry, size["model"], camera)
    live.change(lambda on: gr.update(visible=on), live, preview_box, queue=False, api_visibility="private")
    triggers = [prompt, negative_prompt, size["model"], size["width"], size["height"], samp["seed"],
                styles["style_prompt"], *(camera[k] for k in declared if k in camera)]
    wire_live_preview(ctx.manager, fields, tab.make_request, live, preview_image, preview_caption, triggers)
    return tab

