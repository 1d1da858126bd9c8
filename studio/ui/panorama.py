"""The 360° panorama tab: a prompt becomes an equirectangular HDR panorama, painted view by view.

The plan (views, order, FOV, overlap) is data the user sees and may edit as JSON; the result is
explored in an in-page 360° viewer with an exposure slider, and downloaded as .hdr, .exr, PNG
previews at chosen exposures, a cubemap and a pan video. `/panorama` takes the request's fields by
name and returns (the LDR equirectangular image, the .hdr file, the .exr file, details).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.fields import defaults, specs
from studio.panorama.files import save_panorama
from studio.tasks import TASKS
from studio.ui.generate import ResultHooks, wire_generate
from studio.ui.lora_picker import lora_picker
from studio.ui.tab import AppContext, Tab, model_choices, results, sampler, style
from studio.ui.widgets import widget
from studio.ui.sphere import sphere_value, sphere_viewer

TASK = TASKS["panorama"]
PREFIX = "panorama-"
INTRO = ("Paint a **360° panorama** from a prompt: the first view is generated, then each next view inpaints what "
         "is still empty around the horizon, up to the sky and down to the ground, so the 0°/360° seam and the "
         "poles are painted, not stitched. The result is HDR: look around below and move the exposure slider.")


def plan_text(views: str, fov: Any, overlap: Any, width: Any) -> str:
    """The plan in one line: views, rings and coverage; or why it would be refused."""
    from studio.panorama.plan import check_plan, plan_for, plan_from_json

    try:
        width = int(width)
        plan = plan_from_json(views) if str(views or "").strip() else plan_for(float(fov), float(overlap))
        report = check_plan(plan, width // 2, width)
    except (TypeError, ValueError) as exc:
        return f"⚠️ {exc}"
    pitches = sorted({round(v.pitch) for v in plan}, key=lambda p: (abs(p), -p))
    rings = ", ".join(f"{sum(round(v.pitch) == p for v in plan)} at pitch {p:+d}°" for p in pitches)
    source = "your JSON" if str(views or "").strip() else f"{float(fov):g}° FOV, {float(overlap):.0%} overlap"
    return (f"**{len(plan)} views** ({source}): {rings}. Covers {report.covered_share:.1%} of the sphere; every "
            f"view after the first starts from at least {report.min_overlap:.0%} already painted.")


def plan_json(fov: Any, overlap: Any) -> Any:
    """The plan made from FOV and overlap, as editable JSON (unchanged if they are refused)."""
    from studio.panorama.plan import plan_for, plan_to_json

    try:
        return plan_to_json(plan_for(float(fov), float(overlap)))
    except (TypeError, ValueError):
        return gr.update()


def page_values(paths: list, result: Any) -> list:
    """[viewer, downloads, video] for a saved panorama."""
    video = next((str(p) for p in paths if p.suffix == ".mp4"), None)
    return [sphere_value(paths[1], paths[0], paths[2]), [str(p) for p in paths[1:]], video]


def build_tab(ctx: AppContext) -> Tab:
    registry, declared, initial = ctx.manager.registry, specs(TASK.request), defaults(TASK.request)

    def field(name: str, **kw: Any) -> Any:
        return widget(declared[name], initial[name], f"{PREFIX}{name.replace('_', '-')}", **kw)

    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown(INTRO, elem_id=f"{PREFIX}intro")
            prompt = widget(declared["prompt"], None, f"{PREFIX}prompt", lines=3, info=None,
                            placeholder="e.g. sunset at a lookout point with autumn maple trees and smoky mountains")
            negative_prompt = field("negative_prompt", lines=2, info=None)
            with gr.Row():
                generate = gr.Button("Paint panorama", variant="primary", elem_id=f"{PREFIX}generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}stop")
            width = field("width")
            with gr.Row():
                fov, overlap = field("fov"), field("overlap")
            plan = gr.Markdown(plan_text("", initial["fov"], initial["overlap"], initial["width"]),
                               elem_id=f"{PREFIX}plan")
            with gr.Accordion("Views (plan JSON)", open=False, elem_id=f"{PREFIX}views-panel"):
                views = field("views", lines=8, max_lines=20, placeholder="Empty: the plan from FOV and overlap")
                edit = gr.Button("Edit this plan as JSON", size="sm", elem_id=f"{PREFIX}edit-plan")
            with gr.Accordion("HDR and files", open=False, elem_id=f"{PREFIX}hdr"):
                max_stops, bracket = field("max_stops"), field("bracket")
                exposures, video = field("exposures"), field("video")
                refine_strength = field("refine_strength")
            model = widget(declared["model"], ctx.default_model, f"{PREFIX}model",
                           choices=model_choices(ctx.manager, TASK))
            samp = sampler(ctx, TASK, PREFIX)
            with gr.Accordion("Inpainting", open=False, elem_id=f"{PREFIX}inpainting"):
                inpaint_model, mask_blur = field("inpaint_model"), field("mask_blur")
            loras = field("loras", placeholder="name:0.8, other:0.5")
            lora_picker(ctx.library, loras, PREFIX)
            styles = style(ctx, TASK, PREFIX)
        with gr.Column(scale=3):
            # The viewer first, under the status line: the panorama is explored there
            out = results(PREFIX, top=lambda: sphere_viewer(f"{PREFIX}viewer"))
            viewer = out["top"]
            downloads = gr.File(label="HDR, EXR, exposures, cubemap, video", file_count="multiple",
                                interactive=False, elem_id=f"{PREFIX}downloads")
            pan = gr.Video(label="360° pan", interactive=False, height=320, elem_id=f"{PREFIX}pan")
            api_ldr, api_hdr, api_exr = (gr.File(visible=False) for _ in range(3))

    reuse = samp.pop("reuse")
    widgets = dict(prompt=prompt, negative_prompt=negative_prompt, width=width, views=views, fov=fov, overlap=overlap,
                   inpaint_model=inpaint_model, mask_blur=mask_blur, refine_strength=refine_strength,
                   max_stops=max_stops, bracket=bracket, exposures=exposures, video=video, model=model,
                   loras=loras, **samp, **styles)
    fields = {name: widgets[name] for name in declared}
    tab = Tab(TASK, fields, [], out["gallery"], out["selected"], out["send_row"])
    hooks = ResultHooks(
        save=save_panorama, page_outputs=[viewer, downloads, pan], page_values=page_values,
        api_outputs=[api_ldr, api_hdr, api_exr, out["details"]],
        api_values=lambda paths, result: (str(paths[0]), str(paths[1]), str(paths[2]), result.summary()),
        api_doc="the LDR equirectangular PNG, the Radiance .hdr file, the OpenEXR .exr file and the details")
    wire_generate(tab, ctx, generate, stop, out, hooks)
    private = dict(api_visibility="private", queue=False)
    planned = [views, fov, overlap, width]
    for box in planned:
        box.change(plan_text, planned, plan, **private)
    edit.click(plan_json, [fov, overlap], views, **private)
    reuse.click(lambda s: int(s) if str(s).isdigit() else gr.update(), out["used_seed"], samp["seed"], **private)

    def model_defaults(name: str) -> list:  # a new model brings its own steps, guidance and sampler
        d = registry.get(name).defaults
        return [d.num_inference_steps, d.guidance_scale, d.scheduler]

    model.input(model_defaults, model, [samp["num_inference_steps"], samp["guidance_scale"], samp["scheduler"]],
                **private)
    return tab
