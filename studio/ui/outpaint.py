"""The outpainting tab: extend the canvas by some pixels on chosen sides and paint the new area to
match; the original pixels stay exactly as they were. `/outpaint` takes the fields by name."""

from __future__ import annotations

import gradio as gr

from studio.fields import defaults, specs
from studio.tasks import TASKS
from studio.ui.generate import wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.repaint import (
    model_row,
    repaint_panel,
    wire_inpaint_models,
    wire_model_defaults,
)
from studio.ui.tab import AppContext, Tab, results, sampler, style
from studio.ui.widgets import widget

TASK = TASKS["outpaint"]
PREFIX = "outpaint-"
SIDES = ("left", "right", "top", "bottom")


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    with gr.Row():
        with gr.Column(scale=2):
            image = widget(declared["image"], None, f"{PREFIX}image", height=320)
            with gr.Row():
                sides = {s: widget(declared[s], initial[s], f"{PREFIX}{s}") for s in SIDES[:2]}
            with gr.Row():
                sides.update({s: widget(declared[s], initial[s], f"{PREFIX}{s}") for s in SIDES[2:]})
            prompt = widget(declared["prompt"], None, f"{PREFIX}prompt", lines=3, info=None,
                            placeholder="The whole scene, as it continues beyond the edges")
            negative_prompt = widget(declared["negative_prompt"], initial["negative_prompt"], f"{PREFIX}negative-prompt",
                                     lines=2, info=None)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}stop")
            repaint = repaint_panel(ctx, declared, initial, PREFIX)
            model = model_row(ctx, TASK, PREFIX)
            samp = sampler(ctx, TASK, PREFIX)
            loras = widget(declared["loras"], initial["loras"], f"{PREFIX}loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, PREFIX)
            styles = style(ctx, TASK, PREFIX)
        with gr.Column(scale=3):
            out = results(PREFIX)

    widgets = dict(image=image, prompt=prompt, negative_prompt=negative_prompt, model=model, **sides, **repaint,
                   **samp, **styles, loras=loras)
    fields = {name: widgets[name] for name in declared}
    tab = Tab(TASK, fields, [], out["gallery"], out["selected"], out["send_row"], image_input=image)
    wire_generate(tab, ctx, generate, stop, out)
    wire_model_defaults(registry, model, samp, out["used_seed"])
    wire_inpaint_models(registry, model, repaint["inpaint_model"])
    return tab
