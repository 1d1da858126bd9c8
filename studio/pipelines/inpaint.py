"""Inpainting: repaint what a mask covers, and keep every other pixel exactly (A1111's inpainting,
with one guarantee more: the VAE round trip changes every pixel, so the original is pasted back
outside the feathered mask, bit for bit).

The repainted window is the whole image, or in "only masked" mode a padded box around the mask
(A1111's "inpaint at full resolution"). It runs at the model's native area with the window's
aspect, and is resized back and composited with the feathered mask (studio/masks.py). The
model is the base model's own inpainting pipeline (diffusers' `from_pipe`), an inpainting
checkpoint, or a ControlNet-Union model's repaint mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from studio.groups import InpaintMask, Loras, Model, Prompt, Repaint, Sampler, Style
from studio.groups_control import OptionalControlUnit
from studio.results import Details, InpaintDetails, Result, StepCallback

UNION_MASKED = 0  # the Union model's repaint hint: the image with masked pixels black (model card)


@dataclass(frozen=True, kw_only=True)
class InpaintRequest(Loras, Style, Model, Sampler, Prompt, Repaint, OptionalControlUnit, InpaintMask):
    TASK: ClassVar[str] = "inpaint"

    @property
    def steps_run(self) -> int:
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


@dataclass(frozen=True)
class Plan:
    """What to repaint: the image, the mask the model sees, the alpha it is pasted back with, and
    the window (left, top, right, bottom) of the image that is repainted."""

    image: Any  # PIL RGB, the full output canvas before repainting
    mask: Any  # bool (H, W): where the model repaints
    alpha: Any  # float32 (H, W) in [0, 1]: 0 keeps the original pixel exactly
    window: tuple[int, int, int, int]
    masked_content: str
    mode: str  # for the details


def run(request: InpaintRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Repaint the masked part of `request.image`."""
    from studio import masks

    request.validate(models.registry)
    image = request.image.convert("RGB")
    # 1. The mask: the documented upload rule, grown or shrunk, then feathered for pasting back
    mask = masks.grow_mask(masks.mask_from_upload(request.mask, image.size), request.mask_grow)
    state = masks.check_mask(mask)
    if state == "empty":
        raise ValueError("Mask (mask) is empty: paint the area to repaint (white in an uploaded mask); "
                         "nothing was generated")
    alpha = masks.feather(mask, request.mask_blur)
    # 2. The window: a padded box around the mask ("only masked"), or the whole image
    window = (0, 0, *image.size)
    if request.inpaint_only_masked and state == "partial":
        window = masks.mask_box(mask, request.padding)
    mode = "inpaint" if state == "partial" else "image-to-image (the mask covers the whole image)"
    return repaint(request, models, on_step, Plan(image, mask, alpha, window, request.masked_content, mode))


def repaint(request: Any, models: Any, on_step: StepCallback | None, plan: Plan) -> Result:
    """Repaint `plan.window` of `plan.image` where `plan.mask` is set, and paste it back with
    `plan.alpha` (shared by inpainting and outpainting)."""
    import numpy as np
    from PIL import Image

    from studio import masks
    from studio.groups_control import ControlUnit
    from studio.images import fit_size
    from studio.pipelines.control import Resolved, control_kwargs, resolve_units, unit_details
    from studio.pipelines.decode import generate
    from studio.pipelines.sampling import (
        make_generators,
        prompt_inputs,
        resolve_seed,
        seeds_for,
        step_callback,
        waiting,
    )
    from studio.schedulers import make_scheduler

    registry = models.registry
    entry = registry.get(request.model)
    request, loras = request.with_lora_stack()  # <lora:…> tags leave the prompt for the LoRA stack
    request = request.replace(seed=resolve_seed(request.seed))
    prompt, negative_prompt = request.styled_prompts()
    status = {"steps_done": 0, "interrupted": False}

    # 3. The window at the model's native area (its aspect kept), with the masked content prepared
    left, top, right, bottom = plan.window
    lo, hi = entry.size_range
    size = fit_size((right - left, bottom - top), entry.defaults.width * entry.defaults.height, 8,
                    min_side=lo, max_side=hi)
    window_mask = plan.mask[top:bottom, left:right]
    crop = np.asarray(plan.image.crop(plan.window))
    source = Image.fromarray(masks.fill_masked(crop, window_mask, plan.masked_content)).resize(size, Image.LANCZOS)
    mask_image = Image.fromarray(window_mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)
    # 4. Which model repaints: the base model's inpaint pipeline, a checkpoint, or a Union ControlNet
    #    (in repaint mode: a unit of its own, whose hint is the window with the masked pixels black);
    #    then the request's own ControlNet unit, if it has one
    helper = registry.get(request.inpaint_model) if request.inpaint_model else None
    model, controls = request.model, []
    if helper is not None and helper.role == "inpaint":
        model = helper.name
    elif helper is not None:
        hint = np.asarray(source).copy()
        hint[np.asarray(mask_image) > 127] = UNION_MASKED
        repaint_unit = ControlUnit(-1, None, Image.fromarray(hint), "inpaint", helper.name, 1.0, 0.0, 1.0,
                                   "just resize", 100, 200)
        controls.append(Resolved(repaint_unit, helper))
    if hasattr(request, "control_unit"):
        own = resolve_units(registry, entry, [request.control_unit()])
        controls += own
        if own:  # the request as run names the ControlNet picked for it
            request = request.replace(controlnet_model=own[0].net.name)

    with models.lease(model, "inpaint", controlnets=[c.net.name for c in controls], loras=loras,
                      on_wait=waiting(on_step, request.steps_run)) as lease:
        pipe = lease.pipe
        # The units' hints: made for the whole image, then cut to the window at the working size
        hints = [window_hint(c.unit, plan, size, lease) for c in controls]
        extra = control_kwargs(controls, hints, "control_image") if controls else {}
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        prompt_kwargs, prompt_details = prompt_inputs(pipe, prompt, negative_prompt)
        # 5. Denoise the window (diffusers keeps the unmasked latents on the noised original)
        repainted = generate(
            pipe,
            **prompt_kwargs,
            **extra,
            image=source,
            mask_image=mask_image,
            strength=request.strength,
            width=size[0],
            height=size[1],
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=make_generators(request.seed, request.batch_size),
            callback_on_step_end=step_callback(on_step, request.steps_run, status),
        )

    # 6. Paste each result back: outside the feathered mask every pixel is the original's
    images = [masks.paste_window(plan.image, out, plan.window, plan.alpha) for out in repainted]
    inpaint = InpaintDetails(mode=plan.mode, inpaint_model=request.inpaint_model or f"{request.model} (its own)",
                             window=list(plan.window), working_size=list(size),
                             mask_coverage=round(masks.mask_coverage(plan.mask), 4), output_size=list(plan.image.size))
    units = [(c, h) for c, h in zip(controls, hints) if c.unit.index >= 0]
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=prompt_details, inpaint=inpaint,
                      control=unit_details([c for c, _ in units], [h for _, h in units]) or None)
    return Result(request=request, images=images, seeds=seeds_for(request.seed, request.batch_size), prompt=prompt,
                  negative_prompt=negative_prompt, steps_done=status["steps_done"], total_steps=request.steps_run,
                  interrupted=status["interrupted"], details=details)


def window_hint(unit: Any, plan: Plan, size: tuple[int, int], lease: Any) -> Any:
    """A unit's hint for the repainted window at the working size: the Union repaint hint is made
    for the window already; a ControlNet unit's hint is made for the whole image (so it lines up
    with it, by the unit's resize rule) and cut to the window."""
    from PIL import Image

    from studio.pipelines.control import make_hint

    if unit.index < 0:
        return unit.hint.resize(size, Image.Resampling.LANCZOS)
    width, height = plan.image.size
    return make_hint(unit, width, height, lease).crop(plan.window).resize(size, Image.Resampling.LANCZOS)
