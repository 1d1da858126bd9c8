"""What the inpainting and outpainting tabs share: the repaint settings (strength, mask blur, the
inpainting model) and the model list that follows the chosen model's family."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.fields import specs
from studio.groups import inpaint_models
from studio.ui.tab import model_choices
from studio.ui.widgets import widget

OWN = "— the model's own inpainting"


def inpaint_model_choices(registry: Any, model_name: str) -> list[tuple[str, str]]:
    entry = registry.get(model_name)
    return [(OWN, "")] + [(registry.get(n).label, n) for n in inpaint_models(registry, entry)]


def repaint_panel(ctx: Any, declared: dict, initial: dict, prefix: str) -> dict[str, Any]:
    """Strength, mask blur and the inpainting model, keyed by request field."""
    with gr.Row():
        strength = widget(declared["strength"], initial["strength"], f"{prefix}strength")
        mask_blur = widget(declared["mask_blur"], initial["mask_blur"], f"{prefix}mask-blur")
    model = widget(declared["inpaint_model"], initial["inpaint_model"], f"{prefix}inpaint-model",
                   choices=inpaint_model_choices(ctx.manager.registry, ctx.default_model))
    return dict(strength=strength, mask_blur=mask_blur, inpaint_model=model)


def wire_inpaint_models(registry: Any, model: Any, inpaint_model: Any) -> None:
    """The inpainting models offered follow the family of the model chosen."""
    model.change(lambda m: gr.update(choices=inpaint_model_choices(registry, m)), model, inpaint_model,
                 queue=False, api_visibility="private")


def model_row(ctx: Any, task: Any, prefix: str) -> Any:
    """The model dropdown alone: inpainting and outpainting take their size from the image."""
    return widget(specs(task.request)["model"], ctx.default_model, f"{prefix}model",
                  choices=model_choices(ctx.manager, task))


def wire_model_defaults(registry: Any, model: Any, samp: dict[str, Any], used_seed: Any) -> None:
    """A model's steps, guidance and sampler when it is picked, and the reuse-seed button."""
    private = dict(api_visibility="private", queue=False)

    def on_model(name: str) -> list:
        d = registry.get(name).defaults
        return [d.num_inference_steps, d.guidance_scale, d.scheduler]

    model.input(on_model, model, [samp["num_inference_steps"], samp["guidance_scale"], samp["scheduler"]], **private)
    samp["reuse"].click(lambda seed: int(seed) if str(seed).isdigit() else gr.update(), used_seed, samp["seed"],
                        **private)
