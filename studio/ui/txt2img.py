"""The text-to-image tab: widgets, and the `/txt2img` API endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.buckets import buckets
from studio.models.manager import ModelUnavailable
from studio.models.registry import ModelEntry
from studio.outputs import save_result_images
from studio.pipelines import txt2img
from studio.results import StepEvent
from studio.schedulers import SCHEDULERS
from studio.ui.jobs import StopFlags

CUSTOM = "Custom"


def bucket_choices(entry: ModelEntry) -> list[tuple[str, str]]:
    """Aspect-ratio choices sized for the model's default area, e.g. ("16:9 · 1344×768", "16:9")."""
    area = entry.defaults.width * entry.defaults.height
    sizes = buckets(area, multiple=64 if area >= 256 * 256 else 8)
    return [(f"{r} · {w}×{h}", r) for r, (w, h) in sizes.items()] + [(CUSTOM, CUSTOM)]


def bucket_dims(entry: ModelEntry, ratio: str) -> tuple[int, int] | None:
    area = entry.defaults.width * entry.defaults.height
    return None if ratio == CUSTOM else buckets(area, multiple=64 if area >= 256 * 256 else 8)[ratio]


def integral(value: Any) -> Any:
    """JSON numbers may arrive as 512.0: accept integral floats as ints, leave the rest to validation."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def build_txt2img_tab(manager: Any, default_model: str, outputs_dir: Path, stops: StopFlags) -> None:
    registry = manager.registry
    entry = registry.get(default_model)
    d = entry.defaults
    lo, hi = entry.size_range

    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="A lighthouse at dawn, 35mm photo", elem_id="prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            model = gr.Dropdown(
                [(registry.get(n).label, n) for n in registry.names("base")], value=default_model, label="Model"
            )
            aspect = gr.Dropdown(bucket_choices(entry), value="1:1", label="Aspect ratio")
            with gr.Row():
                width = gr.Slider(lo, hi, value=d.width, step=8, label="Width")
                height = gr.Slider(lo, hi, value=d.height, step=8, label="Height")
            with gr.Row():
                steps = gr.Slider(1, 150, value=d.num_inference_steps, step=1, label="Steps")
                guidance = gr.Slider(0, 30, value=d.guidance_scale, step=0.5, label="Guidance scale")
            with gr.Row():
                scheduler = gr.Dropdown(list(SCHEDULERS), value=d.scheduler, label="Sampler")
                seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Images", format="png", columns=2, object_fit="contain", height=560, elem_id="gallery"
            )
            used_seed = gr.Number(None, label="Seed used", interactive=False, precision=0)
            metadata = gr.JSON(label="Generation details", elem_id="details")

    def run_txt2img(
        prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, batch_size,
        scheduler, model=default_model, progress=gr.Progress(track_tqdm=True), request: gr.Request = None,
    ):
        """Generate images from text. Returns the images (PNG), the seed used and the settings."""
        session = getattr(request, "session_hash", None) or "api"
        flag = stops.start(session)

        def on_step(event: StepEvent) -> bool:
            progress((event.step, event.total), desc="Denoising", unit="steps")
            return flag.is_set()

        try:
            req = txt2img.Txt2ImgRequest(
                prompt=prompt, negative_prompt=negative_prompt or "", width=integral(width),
                height=integral(height), num_inference_steps=integral(num_inference_steps),
                guidance_scale=guidance_scale, seed=integral(seed), batch_size=integral(batch_size),
                scheduler=scheduler, model=model,
            )
            result = txt2img.run(req, manager, on_step=on_step)
        except (ValueError, TypeError, ModelUnavailable) as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            stops.finish(session, flag)
        paths = save_result_images(result, req, outputs_dir)
        return [str(p) for p in paths], result.seed, result.metadata

    # preprocess=False: raw values reach Txt2ImgRequest.validate, whose errors name the field,
    # the range and the value, also for API callers that bypass the sliders.
    generate.click(
        run_txt2img,
        inputs=[prompt, negative_prompt, width, height, steps, guidance, seed, batch_size, scheduler, model],
        outputs=[gallery, used_seed, metadata],
        api_name="txt2img", concurrency_id="gpu", concurrency_limit=1, preprocess=False,
    )
    def stop_job(request: gr.Request) -> None:
        stops.stop(getattr(request, "session_hash", None) or "api")

    stop.click(stop_job, inputs=None, outputs=None, queue=False, api_visibility="private")

    def on_aspect(model_name: str, ratio: str):
        dims = bucket_dims(registry.get(model_name), ratio)
        return (gr.update(), gr.update()) if dims is None else dims

    aspect.change(on_aspect, [model, aspect], [width, height], api_visibility="private", queue=False)

    def on_model(model_name: str):
        e = registry.get(model_name)
        lo, hi = e.size_range
        return (
            gr.update(choices=bucket_choices(e), value="1:1"),
            gr.update(minimum=lo, maximum=hi, value=e.defaults.width),
            gr.update(minimum=lo, maximum=hi, value=e.defaults.height),
            e.defaults.num_inference_steps, e.defaults.guidance_scale, e.defaults.scheduler,
        )

    model.change(
        on_model, [model], [aspect, width, height, steps, guidance, scheduler], api_visibility="private", queue=False
    )
