"""The text-to-image tab: widgets, and the `/txt2img` API endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.buckets import buckets
from studio.models.manager import ModelUnavailable
from studio.models.registry import ModelEntry
from studio.outputs import save_result_images
from studio.pipelines import txt2img
from studio.pipelines.drafts import draft_partner
from studio.results import StepEvent
from studio.schedulers import SCHEDULERS
from studio.ui.camera import build_camera_panel, number_text, optional_number, wire_camera_summary
from studio.ui.jobs import GPU, StopFlags
from studio.ui.preview import wire_live_preview

CUSTOM = "Custom"
SIZE_RANGE = (64, 2048)  # the widest any model allows; each model's own limits are validated
OPTIONAL_NUMBERS = ("camera_pitch", "focal_length_mm", "aperture_f_number", "focus_distance_m")  # empty: off


@dataclass
class Txt2ImgWidgets:
    fields: dict[str, gr.components.Component]  # one widget per Txt2ImgRequest field, in field order
    aspect: gr.Dropdown


def _bucket_table(entry: ModelEntry) -> dict[str, tuple[int, int]]:
    area = entry.defaults.width * entry.defaults.height
    return buckets(area, multiple=64 if area >= 256 * 256 else 8)


def bucket_choices(entry: ModelEntry) -> list[tuple[str, str]]:
    """Aspect-ratio choices sized for the model's default area, e.g. ("16:9 · 1344×768", "16:9")."""
    return [(f"{r} · {w}×{h}", r) for r, (w, h) in _bucket_table(entry).items()] + [(CUSTOM, CUSTOM)]


def aspect_for(entry: ModelEntry, width: Any, height: Any) -> gr.Dropdown:
    """The aspect dropdown for `entry`, showing the bucket that matches width x height (or Custom)."""
    match = [r for r, wh in _bucket_table(entry).items() if wh == (width, height)]
    return gr.update(choices=bucket_choices(entry), value=match[0] if match else CUSTOM)


def integral(value: Any) -> Any:
    """JSON numbers may arrive as 512.0: accept integral floats as ints, leave the rest to validation."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def parse_pair(value: Any) -> Any:
    """A (height, width) or (top, left) pair from "1024, 768", "1024x768" or a JSON list; "" is None.

    Anything else is passed on unchanged, for validation to refuse with the field's name."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = value.replace("×", ",").replace("x", ",").split(",")
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            return value
    return tuple(integral(v) for v in value) if isinstance(value, (list, tuple)) else value


def pair_text(value: Any) -> str:
    """How a pair shows in its textbox."""
    return "" if value is None else ", ".join(str(v) for v in value)


def make_request(values: dict[str, Any]) -> txt2img.Txt2ImgRequest:
    """A request from raw widget/API values (not yet validated)."""
    v = {k: integral(x) for k, x in values.items()}
    v["negative_prompt"] = v.get("negative_prompt") or ""
    for name in txt2img.PAIR_FIELDS:
        if name in v:
            v[name] = parse_pair(v[name])
    if v.get("crops_coords_top_left", ()) is None:
        v["crops_coords_top_left"] = (0, 0)
    for name in OPTIONAL_NUMBERS:
        if name in v:
            v[name] = optional_number(v[name])
    return txt2img.Txt2ImgRequest(**v)


def widget_values(request: txt2img.Txt2ImgRequest) -> list:
    """The request's fields as its widgets show them, in widget order."""
    def shown(name: str, value: Any) -> Any:
        if name in txt2img.PAIR_FIELDS:
            return pair_text(value)
        return number_text(value) if name in OPTIONAL_NUMBERS else value

    return [shown(k, getattr(request, k)) for k in txt2img.REQUEST_FIELDS]


def build_txt2img_tab(manager: Any, default_model: str, outputs_dir: Path, stops: StopFlags) -> Txt2ImgWidgets:
    registry = manager.registry
    entry = registry.get(default_model)
    d = entry.defaults

    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="A lighthouse at dawn, 35mm photo", elem_id="prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative-prompt")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
                draft_mode = gr.Button("⚡ Draft mode", elem_id="draft-mode")
                live = gr.Checkbox(False, label="Live preview", elem_id="live-preview")
            model = gr.Dropdown(
                [(registry.get(n).label, n) for n in registry.names("base")], value=default_model, label="Model",
                elem_id="model",
            )
            aspect = gr.Dropdown(bucket_choices(entry), value="1:1", label="Aspect ratio")
            with gr.Row():
                width = gr.Slider(*SIZE_RANGE, value=d.width, step=8, label="Width", elem_id="width")
                height = gr.Slider(*SIZE_RANGE, value=d.height, step=8, label="Height", elem_id="height")
            with gr.Row():
                steps = gr.Slider(1, 150, value=d.num_inference_steps, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0, 30, value=d.guidance_scale, step=0.5, label="Guidance scale", elem_id="guidance")
            with gr.Row():
                scheduler = gr.Dropdown(list(SCHEDULERS), value=d.scheduler, label="Sampler", elem_id="scheduler")
                seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="seed")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="batch-size")
            camera = build_camera_panel()
            with gr.Accordion("Style", open=False):
                style_prompt = gr.Textbox("{prompt}", label="Style prompt ({prompt} is replaced by your prompt)", elem_id="style-prompt")
                style_negative = gr.Textbox("", label="Style negative prompt (added to yours)", elem_id="style-negative")
            with gr.Accordion("Advanced: SDXL size and crop conditioning", open=False):
                gr.Markdown("Sizes are *height, width*; the crop is *top, left*. Empty: the image's own "
                            "size (for negatives: the value above). The cosine schedule lets this "
                            "metadata act late in sampling only (Berrada et al. 2024); 0 turns it off.")
                with gr.Row():
                    original_size = gr.Textbox("", label="Original size", placeholder="same as image", elem_id="original-size")
                    crops = gr.Textbox("0, 0", label="Crop top-left", elem_id="crops")
                    target_size = gr.Textbox("", label="Target size", placeholder="same as image", elem_id="target-size")
                with gr.Row():
                    neg_original_size = gr.Textbox("", label="Negative original size", placeholder="as above")
                    neg_crops = gr.Textbox("", label="Negative crop top-left", placeholder="as above")
                    neg_target_size = gr.Textbox("", label="Negative target size", placeholder="as above")
                mc_power = gr.Slider(0, 8, value=0, step=0.5, label="Cosine schedule power (0: off)", elem_id="mc-power")
        with gr.Column(scale=3):
            with gr.Group(visible=False) as preview_box:
                preview_image = gr.Image(label="Live preview (draft)", type="pil", format="png", height=320,
                                         interactive=False, elem_id="preview")
                preview_caption = gr.Markdown("", elem_id="preview-caption")
            gallery = gr.Gallery(
                label="Images", format="png", columns=2, object_fit="contain", height=560, elem_id="gallery"
            )
            used_seed = gr.Number(None, label="Seed used", interactive=False, precision=0)
            metadata = gr.JSON(label="Generation details", elem_id="details")

    fields = dict(prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                  num_inference_steps=steps, guidance_scale=guidance, seed=seed, batch_size=batch_size,
                  scheduler=scheduler, model=model, style_prompt=style_prompt, style_negative_prompt=style_negative,
                  original_size=original_size, crops_coords_top_left=crops, target_size=target_size,
                  negative_original_size=neg_original_size, negative_crops_coords_top_left=neg_crops,
                  negative_target_size=neg_target_size, micro_conditioning_power=mc_power,
                  **{k: camera[k] for k in txt2img.CAMERA_FIELDS})
    assert list(fields) == txt2img.REQUEST_FIELDS, "widgets must follow Txt2ImgRequest's fields"

    def run_txt2img(
        prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, batch_size,
        scheduler, model=default_model, style_prompt="{prompt}", style_negative_prompt="",
        original_size="", crops_coords_top_left="0, 0", target_size="", negative_original_size="",
        negative_crops_coords_top_left="", negative_target_size="", micro_conditioning_power=0.0,
        camera_pitch=None, focal_length_mm=None, aperture_f_number=None, focus_distance_m=None,
        dof_mode="lens", horizon_strength=0.6,
        progress=gr.Progress(track_tqdm=True), request: gr.Request = None,
    ):
        """Generate images from text. Returns the images (PNG), the seed used and the settings.

        Camera: camera_pitch (degrees, + looks up), focal_length_mm (full-frame equivalent),
        aperture_f_number and focus_distance_m (lens blur from estimated depth; the sharp images
        follow the blurred ones), dof_mode ("lens" or "prompt"), horizon_strength. None: off."""
        arguments = locals()  # the request fields, by name, as the API and widgets sent them
        values = {k: arguments[k] for k in txt2img.REQUEST_FIELDS}
        session = getattr(request, "session_hash", None) or "api"
        flag = stops.start(session)

        def on_step(event: StepEvent) -> bool:
            progress((event.step, event.total), desc="Denoising", unit="steps")
            return flag.is_set()

        try:
            req = make_request(values)
            result = txt2img.run(req, manager, on_step=on_step)
        except (ValueError, TypeError, ModelUnavailable) as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            stops.finish(session, flag)
        paths = [str(p) for p in save_result_images(result, req, outputs_dir)]
        if result.originals:  # blurred images first, then their sharp originals
            n = len(result.images)
            paths = [(p, f"f/{req.aperture_f_number:g} lens blur" if i < n else "sharp") for i, p in enumerate(paths)]
        return paths, result.seed, result.metadata

    # preprocess=False: raw values reach Txt2ImgRequest.validate, whose errors name the field,
    # the range and the value, also for API callers that bypass the sliders.
    generate.click(
        run_txt2img, inputs=list(fields.values()), outputs=[gallery, used_seed, metadata],
        api_name="txt2img", concurrency_id=GPU, concurrency_limit=1, preprocess=False,
    )

    def stop_job(request: gr.Request) -> None:
        stops.stop(getattr(request, "session_hash", None) or "api")

    stop.click(stop_job, inputs=None, outputs=None, queue=False, api_visibility="private")

    def on_aspect(model_name: str, ratio: str):
        dims = None if ratio == CUSTOM else _bucket_table(registry.get(model_name))[ratio]
        return (gr.update(), gr.update()) if dims is None else dims

    # .input fires on the user's own edits only, so presets that set these widgets are not undone.
    aspect.input(on_aspect, [model, aspect], [width, height], api_visibility="private", queue=False)

    def on_model(model_name: str):
        e = registry.get(model_name).defaults
        return (aspect_for(registry.get(model_name), e.width, e.height), e.width, e.height,
                e.num_inference_steps, e.guidance_scale, e.scheduler)

    model.input(on_model, [model], [aspect, width, height, steps, guidance, scheduler],
                api_visibility="private", queue=False)

    def on_draft_mode(model_name: str):
        partner = draft_partner(registry, model_name)
        if partner is None:
            raise gr.Error(f"model {model_name!r} has no draft model in the registry")
        return (partner, *on_model(partner))

    draft_mode.click(on_draft_mode, [model], [model, aspect, width, height, steps, guidance, scheduler],
                     api_visibility="private")

    wire_camera_summary(camera, width, height)
    live.change(lambda on: gr.update(visible=on), live, preview_box, queue=False, api_visibility="private")
    triggers = [prompt, negative_prompt, model, width, height, seed, style_prompt,
                *(camera[k] for k in txt2img.CAMERA_FIELDS)]
    wire_live_preview(manager, fields, make_request, live, preview_image, preview_caption, triggers)
    return Txt2ImgWidgets(fields=fields, aspect=aspect)
