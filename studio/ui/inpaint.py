"""The inpainting tab: paint a mask over the image in the editor (or upload one: white = repaint),
then repaint just that region; every pixel outside the feathered mask stays exactly as it was. An
optional ControlNet unit keeps depth or edges while repainting. `/inpaint` takes `image` and
`mask` as files and the request's other fields by name."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio import masks
from studio.fields import defaults, specs
from studio.images import open_image, open_mask
from studio.tasks import TASKS
from studio.ui.control_unit import controlnet_choices, editor_hint, unit_panel, wire_preview
from studio.ui.generate import wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.repaint import (
    model_row,
    repaint_panel,
    wire_inpaint_models,
    wire_model_defaults,
)
from studio.ui.tab import AppContext, Tab, results, sampler, style, upload_path
from studio.ui.widgets import widget

TASK = TASKS["inpaint"]
PREFIX = "inpaint-"


def read_editor(values: dict[str, Any]) -> dict[str, Any]:
    """The page's editor value as the API's `image` and `mask`: the editor's picture, and what was
    painted on it (unless a mask file was uploaded, which wins). Nothing painted: an empty mask,
    which the pipeline refuses with a message saying what to do."""
    editor, out = values["image"], dict(values)
    if not isinstance(editor, dict):
        return out
    background = editor.get("background")
    if not background:
        raise ValueError("Image (image) is missing: open a picture in the editor, then paint over what to repaint "
                         "(if the editor shows one already, open it again: it had not taken it in)")
    out["image"] = open_image(upload_path(background))
    if values.get("mask") is None:
        layers = [open_mask(upload_path(layer, "Mask (mask)")) for layer in editor.get("layers") or [] if layer]
        painted = masks.mask_from_editor({"layers": layers}, out["image"].size)
        if painted is None:
            painted = np.zeros(out["image"].size[::-1], dtype=bool)
        out["mask"] = Image.fromarray(painted.astype(np.uint8) * 255, mode="L")
    return out


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    with gr.Row():
        with gr.Column(scale=2):
            editor = gr.ImageEditor(label="Image: paint over what to repaint", type="filepath", format="png",
                                    height=420, sources=["upload", "clipboard"], layers=True,
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                                    elem_id=f"{PREFIX}editor")
            with gr.Accordion("Or upload a mask (white = repaint)", open=False):
                mask = widget(declared["mask"], None, f"{PREFIX}mask", height=200)
            prompt = widget(declared["prompt"], None, f"{PREFIX}prompt", lines=3, info=None,
                            placeholder="What the masked area should show")
            negative_prompt = widget(declared["negative_prompt"], initial["negative_prompt"], f"{PREFIX}negative-prompt",
                                     lines=2, info=None)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}stop")
            repaint = repaint_panel(ctx, declared, initial, PREFIX)
            with gr.Row():
                mask_grow = widget(declared["mask_grow"], initial["mask_grow"], f"{PREFIX}mask-grow")
                masked_content = widget(declared["masked_content"], initial["masked_content"], f"{PREFIX}masked-content")
            with gr.Row(equal_height=True):
                only_masked = widget(declared["inpaint_only_masked"], initial["inpaint_only_masked"],
                                     f"{PREFIX}only-masked")
                padding = widget(declared["padding"], initial["padding"], f"{PREFIX}padding")
            model = model_row(ctx, TASK, PREFIX)
            samp = sampler(ctx, TASK, PREFIX)
            unit = unit_panel(ctx, declared, initial, "", "ControlNet (optional: keep depth or edges while repainting)",
                              f"{PREFIX}control-", open=False)
            loras = widget(declared["loras"], initial["loras"], f"{PREFIX}loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, PREFIX)
            styles = style(ctx, TASK, PREFIX)
        with gr.Column(scale=3):
            out = results(PREFIX)
        image = widget(declared["image"], None, f"{PREFIX}image-api", visible=False)  # the API's image file

    widgets = dict(image=image, mask=mask, prompt=prompt, negative_prompt=negative_prompt, mask_grow=mask_grow,
                   masked_content=masked_content, inpaint_only_masked=only_masked, padding=padding, model=model,
                   **repaint, **samp, **styles, **unit, loras=loras)
    fields = {name: widgets[name] for name in declared}

    def read_page(values: dict[str, Any]) -> dict[str, Any]:
        return {**read_editor(values), "control_hint": editor_hint(values["control_hint"])}

    tab = Tab(TASK, fields, [], out["gallery"], out["selected"], out["send_row"], image_input=editor,
              page_fields={**fields, "image": editor, "control_hint": unit["hint_editor"]}, read_page=read_page)
    wire_generate(tab, ctx, generate, stop, out)
    wire_model_defaults(registry, model, samp, out["used_seed"])
    wire_inpaint_models(registry, model, repaint["inpaint_model"])
    wire_preview(ctx, unit, "", [], out["status"])
    model.change(lambda m: gr.update(choices=controlnet_choices(registry, m)), model, unit["controlnet_model"],
                 queue=False, api_visibility="private")
    return tab
