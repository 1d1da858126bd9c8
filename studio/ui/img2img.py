"""The image-to-image tab: an input image, denoising strength and resize mode, and every
text-to-image knob (model, size, sampler, seed, batch, style). The `/img2img` endpoint takes the
request's fields by name; `image` is a file."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from studio.fields import defaults, specs
from studio.images import fit_size
from studio.tasks import TASKS
from studio.ui.generate import wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.tab import AppContext, Tab, aspect_for, model_and_size, results, sampler, style, wire_model_and_sampler
from studio.ui.widgets import widget

TASK = TASKS["img2img"]
PREFIX = "img2img-"


def size_for_image(registry: Any, model_name: str, path: str | None) -> list:
    """Updates for [aspect, width, height]: the uploaded image's aspect at the model's usual area."""
    if not path:
        return [gr.update()] * 3
    entry = registry.get(model_name)
    lo, hi = entry.size_range
    try:
        with Image.open(path) as image:  # the header only: the size, nothing decoded
            size = image.size
    except OSError:
        return [gr.update()] * 3  # an unreadable file: Generate says why
    width, height = fit_size(size, entry.defaults.width * entry.defaults.height, 8, min_side=lo, max_side=hi)
    return [aspect_for(entry, width, height), width, height]


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    with gr.Row():
        with gr.Column(scale=2):
            image = widget(declared["image"], None, f"{PREFIX}image", height=320)
            prompt = widget(declared["prompt"], None, f"{PREFIX}prompt", lines=3, info=None,
                            placeholder="What the new image should show")
            negative_prompt = widget(declared["negative_prompt"], initial["negative_prompt"], f"{PREFIX}negative-prompt",
                                     lines=2, info=None)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}stop")
            with gr.Row():
                strength = widget(declared["strength"], initial["strength"], f"{PREFIX}strength")
                resize_mode = widget(declared["resize_mode"], initial["resize_mode"], f"{PREFIX}resize-mode")
            size = model_and_size(ctx, TASK, PREFIX)
            samp = sampler(ctx, TASK, PREFIX)
            loras = widget(declared["loras"], initial["loras"], f"{PREFIX}loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, PREFIX)
            styles = style(ctx, TASK, PREFIX)
        with gr.Column(scale=3):
            out = results(PREFIX)

    widgets = dict(image=image, prompt=prompt, negative_prompt=negative_prompt, strength=strength,
                   resize_mode=resize_mode, **size, **samp, **styles, loras=loras)
    fields = {name: widgets[name] for name in declared}
    tab = Tab(TASK, fields, [size["aspect"]], out["gallery"], out["selected"], out["send_row"], image_input=image,
              fill_extras=lambda r: [aspect_for(registry.get(r.model), r.width, r.height)])
    wire_generate(tab, ctx, generate, stop, out)
    wire_model_and_sampler(registry, size, samp, out["used_seed"])
    # A new image proposes its own aspect (at the model's usual area); the user may change it.
    image.change(lambda m, path: size_for_image(registry, m, path), [size["model"], image],
                 [size["aspect"], size["width"], size["height"]], api_visibility="private", queue=False)
    return tab
