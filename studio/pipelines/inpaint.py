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

from studio.groups import InpaintMask, Model, Prompt, Repaint, Sampler, Style
from studio.results import Details, InpaintDetails, Result, StepCallback

UNION_MASKED = 0  # the Union model's repaint hint: the image with masked pixels black (model card)


@dataclass(frozen=True, kw_only=True)
class InpaintRequest(Style, Model, Sampler, Prompt, Repaint, InpaintMask):
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
    from studio.images import fit_size
    from studio.pipelines.sampling import make_generators, prompt_inputs, resolve_seed, seeds_for, step_callback, waiting
    from studio.schedulers import make_scheduler

    registry = models.registry
    entry = registry.get(request.model)
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
    helper = registry.get(request.inpaint_model) if request.inpaint_model else None
    model, nets, extra = request.model, [], {}
    if helper is not None and helper.role == "inpaint":
        model = helper.name
    elif helper is not None:
        hint = np.asarray(source).copy()
        hint[np.asarray(mask_image) > 127] = UNION_MASKED
        nets, extra = [helper.name], dict(control_image=[Image.fromarray(hint)],
                                          control_mode=[helper.control_modes["inpaint"]])

    with models.lease(model, "inpaint", controlnets=nets, on_wait=waiting(on_step, request.steps_run)) as lease:
        pipe = lease.pipe
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        prompt_kwargs, prompt_details = prompt_inputs(pipe, prompt, negative_prompt)
        # 5. Denoise the window (diffusers keeps the unmasked latents on the noised original)
        output = pipe(
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
    images = [masks.paste_window(plan.image, out, plan.window, plan.alpha) for out in output.images]
    inpaint = InpaintDetails(mode=plan.mode, inpaint_model=request.inpaint_model or f"{request.model} (its own)",
                             window=list(plan.window), working_size=list(size),
                             mask_coverage=round(masks.mask_coverage(plan.mask), 4), output_size=list(plan.image.size))
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=prompt_details, inpaint=inpaint)
    return Result(request=request, images=images, seeds=seeds_for(request.seed, request.batch_size), prompt=prompt,
                  negative_prompt=negative_prompt, steps_done=status["steps_done"], total_steps=request.steps_run,
                  interrupted=status["interrupted"], details=details)
