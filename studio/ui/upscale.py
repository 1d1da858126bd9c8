"""The upscale tab: an image, the final scale, the Slider and its guidance, the tile ControlNet.

Results too large to show whole are browsed in a deep-zoom view; the full image (PNG, or a tiled
BigTIFF past 67 megapixels) is a download. `/upscale` takes the request's fields by name (`image`
is a file) and returns (the image file, details).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from studio.fields import defaults, specs
from studio.groups_upscale import stage_factors, stage_sizes, stage_sliders, tile_controlnets
from studio.outputs import save_canvas
from studio.tasks import TASKS
from studio.ui.generate import ResultHooks, wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.tab import AppContext, Tab, model_choices, results
from studio.ui.widgets import widget
from studio.ui.zoom import viewer_value, zoom_viewer

TASK = TASKS["upscale"]
PREFIX = "upscale-"
INTRO = ("Upsample an image to 4K and far beyond, patch by patch (Pixelsmith). For the first **Slider** steps the "
         "upsampled image steers every patch, so the picture stays yours; after them the model adds detail "
         "freely. Each ×2 stage is guided 1.5× longer than the one before.")


def image_size(path: str | None) -> tuple[int, int] | None:
    """The uploaded image's (width, height), read from its header only; None when unreadable."""
    if not path:
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None


def plan_text(path: str | None, scale: float, slider: int, steps: int, strength: float) -> str:
    """What the settings will do, in one line: sizes, stages and each stage's guided steps."""
    size = image_size(path)
    if size is None:
        return "Upload an image to see the plan."
    try:
        scale, slider, steps_run = float(scale), int(slider), max(1, int(int(steps) * float(strength)))
        sizes = stage_sizes(*size, scale)
    except (TypeError, ValueError):
        return "Set a scale of at least 1."
    sliders = stage_sliders(slider, len(sizes), steps_run)
    stages = " → ".join(f"{w}×{h}" for w, h in sizes)
    factors = ", ".join(f"×{f:g}" for f in stage_factors(scale))
    guided = ", ".join(f"{s} of {steps_run}" for s in sliders)
    return (f"**{size[0]}×{size[1]} → {stages}** in {len(sizes)} stage{'s' if len(sizes) > 1 else ''} ({factors}); "
            f"guided steps per stage: {guided}.")


def scale_for(path: str | None, long_side: Any) -> Any:
    """The scale that brings the image's long side to `long_side` pixels (at least 1)."""
    size = image_size(path)
    try:
        target = float(long_side)
    except (TypeError, ValueError):
        return gr.update()
    return gr.update() if size is None or target <= 0 else max(1.0, round(target / max(size), 2))


def slider_range(steps: Any, strength: Any, slider: Any) -> Any:
    """The Slider bounded by the steps each stage runs (int(steps · strength)), its value kept inside."""
    try:
        steps_run = max(1, int(int(steps) * float(strength)))
        return gr.update(maximum=steps_run, value=min(int(slider), steps_run))
    except (TypeError, ValueError):
        return gr.update()


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)
    entry = registry.get(ctx.default_model)

    def field(name: str, **kw: Any) -> Any:
        return widget(declared[name], initial[name], f"{PREFIX}{name.replace('_', '-')}", **kw)

    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown(INTRO, elem_id=f"{PREFIX}intro")
            image = widget(declared["image"], None, f"{PREFIX}image", height=300)
            prompt = field("prompt", lines=2, placeholder="Optional: what the picture shows")
            negative_prompt = field("negative_prompt", lines=1)
            with gr.Row():
                generate = gr.Button("Upscale", variant="primary", elem_id=f"{PREFIX}generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}stop")
            with gr.Row():
                scale = field("scale")
                long_side = gr.Textbox("", label="…or target long side (px)", placeholder="e.g. 4096",
                                       elem_id=f"{PREFIX}long-side")
            slider = field("slider")
            plan = gr.Markdown(plan_text(None, 4, 12, 30, 1), elem_id=f"{PREFIX}plan")
            with gr.Accordion("Guidance", open=False, elem_id=f"{PREFIX}guidance"):
                with gr.Row():
                    phase_fusion, phase_weight = field("phase_fusion"), field("phase_weight")
                chess_mask, laplacian_fusion = field("chess_mask"), field("laplacian_fusion")
                strength = field("strength")
                tile_controlnet = field("tile_controlnet", allow_custom_value=True,
                                        choices=[("Off", ""), *((n, n) for n in tile_controlnets(registry, entry))])
                tile_weight = field("tile_weight")
            model = widget(declared["model"], ctx.default_model, f"{PREFIX}model", choices=model_choices(ctx.manager, TASK))
            with gr.Row():
                steps, guidance = field("num_inference_steps"), field("guidance_scale")
            with gr.Row():
                scheduler, patch_batch = field("scheduler"), field("patch_batch")
            with gr.Row(equal_height=True):
                seed = field("seed", scale=3)
                reuse = gr.Button("♻️ Last seed", size="sm", elem_id=f"{PREFIX}reuse-seed", scale=1, min_width=110)
            loras = field("loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, PREFIX)
        with gr.Column(scale=3):
            out = results(PREFIX)
            viewer = zoom_viewer(f"{PREFIX}zoom")
            download = gr.File(label="Full image", interactive=False, elem_id=f"{PREFIX}download")

    widgets = dict(image=image, prompt=prompt, negative_prompt=negative_prompt, scale=scale, slider=slider,
                   strength=strength, phase_fusion=phase_fusion, phase_weight=phase_weight, chess_mask=chess_mask,
                   laplacian_fusion=laplacian_fusion, tile_controlnet=tile_controlnet, tile_weight=tile_weight,
                   patch_batch=patch_batch, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                   scheduler=scheduler, model=model, loras=loras)
    fields = {name: widgets[name] for name in declared}
    tab = Tab(TASK, fields, [], out["gallery"], out["selected"], out["send_row"], image_input=image)
    hooks = ResultHooks(
        save=save_canvas, page_outputs=[viewer, download],
        page_values=lambda paths, result: [viewer_value(paths[2]), str(paths[1])],
        api_outputs=[download, out["details"]], api_values=lambda paths, result: (str(paths[1]), result.summary()),
        api_doc="the full image file (PNG, or a tiled BigTIFF past 67 megapixels) and the details")
    wire_generate(tab, ctx, generate, stop, out, hooks)
    private = dict(api_visibility="private", queue=False)
    planned = [image, scale, slider, steps, strength]
    for box in planned:
        box.change(plan_text, planned, plan, **private)
    long_side.input(scale_for, [image, long_side], scale, **private)
    # The Slider counts steps: it cannot go past the steps a stage runs.
    for box in (steps, strength):
        box.input(slider_range, [steps, strength, slider], slider, **private)
    model.input(lambda m: gr.update(choices=[("Off", ""), *((n, n) for n in tile_controlnets(registry, registry.get(m)))],
                                    value=""), model, tile_controlnet, **private)
    reuse.click(lambda s: int(s) if str(s).isdigit() else gr.update(), out["used_seed"], seed, **private)
    return tab
