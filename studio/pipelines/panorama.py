"""360° HDR panoramas by sequential inpainting (Edify Image, NVIDIA 2024, §4.4).

1. The first view is text-to-image at yaw 0, pitch 0, projected into an empty equirectangular canvas.
2. Each next view (the horizon ring, then up and down to the poles) renders the canvas into its
   perspective (`e2p`); the part nothing has painted yet is inpainted with the prompt, the new
   pixels take the colour statistics of the overlap (Reinhard transfer), and the view is projected
   back (`p2e`) and feathered into the canvas. Pixels outside a view's feathered unknown region
   never change. The last horizon view overlaps the first, so the 0°/360° seam is painted, not stitched.
3. Optionally a low-strength refine pass over the whole canvas, patch by patch (the upscaler's
   patch sampler), on a canvas padded around the seam so patches cross it.
4. LDR -> HDR: inverse tone mapping with a smooth highlight expansion map, optionally merged with
   the brightest view repainted at lower exposures (Debevec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from studio.groups import Loras, Model, Prompt, Style
from studio.groups_panorama import Panorama, PanoramaSampler
from studio.results import Details, PanoramaDetails, Result, StepCallback, StepEvent, Stopped

BRACKET_EV = (-3.0, -6.0)  # the brightest view repainted this many stops darker (Edify's figures reach −9)
BRACKET_STRENGTH = 0.45  # enough for the model to redraw clipped highlights, little enough to keep the view
BRACKET_WORDS = "underexposed photograph, dark exposure, detailed bright highlights"
# Views looking steeply up or down are told so: the prompt describes the scene at eye level, and a
# pole view without these words tends to paint another horizon into the sky or the ground.
UP_WORDS, DOWN_WORDS, STEEP_PITCH = "looking straight up, the sky overhead", "looking straight down, the ground", 60.0


def view_prompt(prompt: str, view: Any) -> str:
    """The prompt a view is painted with: the user's, plus where the view looks when it is steep."""
    if view.pitch >= STEEP_PITCH:
        return f"{prompt}, {UP_WORDS}"
    if view.pitch <= -STEEP_PITCH:
        return f"{prompt}, {DOWN_WORDS}"
    return prompt


@dataclass(frozen=True, kw_only=True)
class PanoramaRequest(Loras, Style, Model, PanoramaSampler, Prompt, Panorama):
    TASK: ClassVar[str] = "panorama"
    NEEDS: ClassVar[str] = "inpaint"


class Progress:
    """Turns each view's step events into the whole run's: "View i of n (yaw, pitch) · step k of m"."""

    def __init__(self, on_step: StepCallback | None, views: list[Any], steps: int, extra: int):
        self.on_step, self.views, self.steps = on_step, views, steps
        self.total, self.view, self.stop = len(views) * steps + extra, 0, False
        self.base, self.where = 0, "before the first view"
        self.prompt_details = None  # how the prompts were encoded (set by the first view)

    def label(self) -> str:
        v = self.views[self.view] if self.view < len(self.views) else None
        if v is None:
            return "Refining"
        return f"View {self.view + 1} of {len(self.views)} (yaw {v.yaw:g}°, pitch {v.pitch:g}°)"

    def for_view(self, index: int, base: int, label: str | None = None) -> StepCallback:
        """The step callback of one diffusion run that starts at overall step `base`."""
        self.view, self.base = index, base

        def on_step(event: StepEvent) -> bool:
            if event.message is not None:  # waiting for the GPU: as it is
                return self.send(event)
            where = f"{label or self.label()} · step {event.step} of {event.total}"
            return self.send(StepEvent(self.base + event.step, self.total, event.preview, detail=where))
        return on_step

    def send(self, event: StepEvent) -> bool:
        self.where = event.detail or self.where
        if self.on_step is not None:
            self.stop = self.stop or bool(self.on_step(event))
        return self.stop

    def painted(self, index: int, canvas: Any, view_image: Any) -> None:
        """After a view: show the canvas so far and the latest view; raise Stopped if asked to stop."""
        from PIL import Image

        self.where = f"view {index + 1} of {len(self.views)} painted"
        def images() -> list:  # the canvas so far (at most 2048 px wide, as a preview) and the new view
            step = max(1, canvas.shape[1] // 2048)
            return [Image.fromarray(canvas[::step, ::step].round().clip(0, 255).astype("uint8")), view_image]

        self.send(StepEvent((index + 1) * self.steps, self.total, images, detail=self.label() + " · painted"))
        if self.stop:
            raise Stopped(f"Stopped after view {index + 1} of {len(self.views)}; nothing was saved.")


def run(request: PanoramaRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Paint a 360° panorama for `request.prompt`; the result's `radiance` is its HDR."""
    import numpy as np

    from PIL import Image

    from studio.panorama import blend, hdr
    from studio.pipelines.sampling import resolve_seed

    # 1. Check inputs (before anything is loaded or changed)
    request.validate(models.registry)
    entry = models.registry.get(request.model)
    views = request.view_plan()
    request, loras = request.with_lora_stack()  # <lora:…> tags leave the prompt for the LoRA stack
    request = request.replace(seed=resolve_seed(request.seed))
    size = entry.defaults.width  # views are square, at the model's native size (1024 for SDXL)
    progress = Progress(on_step, views, request.num_inference_steps, progress_extra(request))

    # 2. Paint the views one after another into the canvas, (H, W, 3) float32 in [0, 255]
    canvas = np.zeros((request.height, request.width, 3), np.float32)
    painted = np.zeros((request.height, request.width), bool)
    shots = []  # (view, its perspective image) for bracketing
    for i, view in enumerate(views):
        image = paint_view(request, models, progress, i, view, size, canvas, painted)
        shots.append((view, image))
        progress.painted(i, canvas, image)
    ldr = canvas.round().clip(0, 255).astype(np.uint8)
    # 3. Refine the whole canvas with patches that cross the seam
    if request.refine_strength:
        ldr = refine(request, models, progress, ldr, loras)
    # 4. LDR -> HDR
    radiance = hdr.inverse_tone_map(ldr, max_stops=request.max_stops)
    bracketed = bracket(request, models, progress, shots, radiance, size) if request.bracket else None
    panorama = PanoramaDetails(
        canvas_size=[request.width, request.height], view_size=size,
        views=[dict(yaw=v.yaw, pitch=v.pitch, fov=v.fov) for v in views],
        wrap_ratio=round(blend.wrap_ratio(ldr), 3), pole_spread=[round(s, 2) for s in blend.pole_spread(ldr)],
        dynamic_range_stops=round(hdr.luminance_stops(radiance), 2), bracketed_view=bracketed,
        refine_strength=request.refine_strength)
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=progress.prompt_details,
                      panorama=panorama)
    prompt, negative_prompt = request.styled_prompts()
    return Result(request=request, images=[Image.fromarray(ldr)], seeds=[request.seed], prompt=prompt,
                  negative_prompt=negative_prompt, steps_done=progress.total, total_steps=progress.total,
                  interrupted=False, details=details, radiance=radiance)


def paint_view(request: PanoramaRequest, models: Any, progress: Progress, index: int, view: Any, size: int,
               canvas: Any, painted: Any) -> Any:
    """Paint one view into `canvas` (in place) and mark it in `painted`; returns the view's image (PIL).

    View 0 is text-to-image; every other view inpaints what is unknown in its perspective."""
    import numpy as np
    from PIL import Image

    from studio import masks
    from studio.panorama import blend
    from studio.panorama.projection import e2p, p2e

    base = index * request.num_inference_steps
    known = e2p(painted.astype(np.float32), view, size) > 0.999  # (size, size) bool: painted all around
    if index == 0 or not known.any():
        out = text_to_image(request, models, progress.for_view(index, base), size, progress)
        alpha = np.ones((size, size), np.float32)
    else:
        persp = e2p(canvas, view, size).round().clip(0, 255).astype(np.uint8)  # (size, size, 3)
        unknown = masks.grow_mask(~known, max(2, size // 64))  # the boundary is repainted too
        raw = inpaint(request.replace(prompt=view_prompt(request.prompt, view)), models,
                      progress.for_view(index, base), persp, unknown, index, progress)
        # Lighting that matches across views: the model's colours over the overlap -> the canvas's
        raw = blend.match_colour(raw, persp, known & ~unknown)
        alpha = masks.feather(unknown, request.mask_blur)  # (size, size) in [0, 1]; 0 keeps the canvas
        out = masks.composite(persp, raw, alpha)
    values, covered = p2e(out.astype(np.float32), view, *canvas.shape[:2])
    weight, _ = p2e(alpha, view, *canvas.shape[:2])  # (H, W): 0 outside the view and where it was known
    weight = np.where(covered, weight, 0)[..., None]
    canvas *= 1 - weight
    canvas += weight * values
    painted |= covered
    return Image.fromarray(out.astype(np.uint8))


def text_to_image(request: PanoramaRequest, models: Any, on_step: StepCallback, size: int, progress: Progress) -> Any:
    """The first view: the prompt at the view's size, (size, size, 3) uint8."""
    import numpy as np

    from studio.pipelines.txt2img import Txt2ImgRequest, run

    common = shared_fields(request, Txt2ImgRequest)
    result = run(Txt2ImgRequest(**common, width=size, height=size), models, on_step)
    if result.interrupted:
        raise Stopped(f"Stopped in view 1 of {len(progress.views)}; nothing was saved.")
    progress.prompt_details = result.details.prompt_encoding
    return np.asarray(result.images[0].convert("RGB"))


def inpaint(request: PanoramaRequest, models: Any, on_step: StepCallback, persp: Any, unknown: Any, index: int,
            progress: Progress) -> Any:
    """The model's repaint of the view (every pixel, not pasted back: colour matching compares the
    overlap), (size, size, 3) uint8."""
    import numpy as np
    from PIL import Image

    from studio.pipelines.inpaint import InpaintRequest, Plan, repaint

    image = Image.fromarray(persp)
    fields = {**shared_fields(request, InpaintRequest), "seed": request.seed + index}  # a new noise per view
    inpaint_request = InpaintRequest(**fields, image=image, mask=None, strength=1.0, mask_blur=0,
                                     inpaint_model=request.inpaint_model, masked_content="fill")
    size = persp.shape[0]
    plan = Plan(image, unknown, np.ones(unknown.shape, np.float32), (0, 0, size, size), "fill", "panorama view")
    result = repaint(inpaint_request, models, on_step, plan)
    if result.interrupted:
        raise Stopped(f"Stopped in view {index + 1} of {len(progress.views)}; nothing was saved.")
    return np.asarray(result.images[0].convert("RGB"))


def shared_fields(request: PanoramaRequest, target: type) -> dict[str, Any]:
    """The fields a view's request takes from the panorama's (prompt, model, sampler, style, LoRAs)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(target)} & {f.name for f in dataclasses.fields(request)}
    names -= {"width", "height", "mask_blur", "inpaint_model"}
    return {name: getattr(request, name) for name in names}


def refine(request: PanoramaRequest, models: Any, progress: Progress, ldr: Any, loras: list) -> Any:
    """A low-strength pass over the whole canvas with the upscaler's patch sampler, on a canvas
    padded around the seam (studio/panorama/wrap.py) so patches cross 0°/360°; (H, W, 3) uint8."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from studio.panorama.wrap import unwrap, wrap_pad
    from studio.pipelines import upscale
    from studio.pipelines.sampling import waiting
    from studio.upscale.files import discard
    from studio.upscale.sampler import PatchPlan, unet_calls

    base, steps = progress.total - progress_extra(request), int(request.num_inference_steps * request.refine_strength)
    progress.view = len(progress.views)
    prompt, negative_prompt = request.styled_prompts()
    with models.lease(request.model, "img2img", loras=loras, on_wait=waiting(progress.send, steps)) as lease:
        pipe = lease.pipe
        pad = min(request.width // 2, pipe.unet.config.sample_size * 4)  # half a patch each side
        padded = wrap_pad(ldr, pad)
        height, width = padded.shape[:2]
        job = upscale.UpscaleRequest(
            image=None, scale=1.0, slider=0, strength=request.refine_strength, phase_fusion=False, chess_mask=False,
            prompt=prompt, negative_prompt=negative_prompt, model=request.model,
            loras=request.loras, num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale, seed=request.seed, scheduler=request.scheduler)
        patch = PatchPlan.for_unet(pipe.unet.config.sample_size)
        calls = unet_calls(height // 8, width // 8, patch, steps)
        relay = lambda e: progress.send(StepEvent(base + e.step * steps // max(1, e.total), progress.total,  # noqa: E731
                                                  e.preview, detail=e.detail))
        state = upscale.Progress(relay, calls, pipe)
        stage = upscale.Stage(0, 1, (width, height), 0)
        scratch = Path(models.scratch_dir or Path(tempfile.gettempdir()) / "studio-upscale")
        try:
            out, _ = upscale.run_stage(pipe, job, stage, padded, scratch, patch, state)
        except InterruptedError:
            raise Stopped(f"Stopped while refining ({state.where}); nothing was saved.") from None
    try:
        return unwrap(np.asarray(out), pad)
    finally:
        discard(out)


def progress_extra(request: PanoramaRequest) -> int:
    """Steps after the views: the refine pass's and the brackets'."""
    steps = request.num_inference_steps
    extra = int(steps * request.refine_strength) if request.refine_strength else 0
    return extra + (len(BRACKET_EV) * int(steps * BRACKET_STRENGTH) if request.bracket else 0)


def bracket(request: PanoramaRequest, models: Any, progress: Progress, shots: list, radiance: Any,
            size: int) -> dict:
    """Repaint the brightest view at BRACKET_EV with image-to-image, merge the brackets (Debevec,
    sRGB response) into that view's radiance, and feather it into `radiance` (in place)."""
    import numpy as np
    from PIL import Image

    from studio import masks
    from studio.panorama import hdr
    from studio.panorama.projection import p2e
    from studio.pipelines.img2img import Img2ImgRequest, run

    luma = [np.percentile(np.asarray(img.convert("L")), 99) for _, img in shots]
    index = int(np.argmax(luma))
    view, image = shots[index]
    ldr = np.asarray(image.convert("RGB"))
    view_radiance = hdr.inverse_tone_map(ldr, max_stops=request.max_stops)
    prompt = f"{request.prompt}, {BRACKET_WORDS}"
    steps = int(request.num_inference_steps * BRACKET_STRENGTH)
    brackets = []
    for k, ev in enumerate(BRACKET_EV):
        dark = Image.fromarray(hdr.expose(view_radiance, ev))
        base = progress.total - steps * (len(BRACKET_EV) - k)
        fields = {**shared_fields(request, Img2ImgRequest), "prompt": prompt, "seed": request.seed + 1000 + k}
        result = run(Img2ImgRequest(**fields, image=dark, strength=BRACKET_STRENGTH, width=size, height=size,
                                    resize_mode="just resize"), models,
                     progress.for_view(index, base, f"Bracket {ev:g} EV of view {index + 1}"))
        if result.interrupted:
            raise Stopped("Stopped while bracketing; nothing was saved.")
        brackets.append(np.asarray(result.images[0].convert("RGB")))
    merged = hdr.merge_brackets([ldr, *brackets], [0.0, *BRACKET_EV])  # (size, size, 3) radiance
    # A window that is 1 inside the view and fades to 0 at its borders, so the neighbours blend in
    border = max(1, size // 8)
    inner = np.zeros((size, size), bool)
    inner[border:-border, border:-border] = True
    window = masks.feather(inner, max(1, size // 16))
    values, covered = p2e(merged, view, *radiance.shape[:2])
    weight, _ = p2e(window, view, *radiance.shape[:2])
    weight = np.where(covered, weight, 0)[..., None]
    radiance *= 1 - weight
    radiance += weight * values
    return {"view": index + 1, "yaw": view.yaw, "pitch": view.pitch, "exposures": [0.0, *BRACKET_EV]}
