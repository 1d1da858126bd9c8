"""ControlNet: text-to-image (or image-to-image) steered by up to two control units, each a hint
image (depth, edges, lines) with a weight and a start/end range of the schedule (Zhang et al.
2023, "Adding Conditional Control to Text-to-Image Diffusion Models"; Edify Image's control inputs).

diffusers' ControlNet pipelines do the sampling; several units stack through its Multi-ControlNet
models. The ControlNets load through the model lease, sharing the base model's UNet, VAE and text
encoders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from studio.fields import field
from studio.groups import Loras, Model, Prompt, Sampler, Size, Style
from studio.groups_control import FirstControlUnit, OptionalInitImage, SecondControlUnit
from studio.images import RESIZE_MODES
from studio.results import Details, InputImageDetails, Result, StepCallback


@dataclass(frozen=True, kw_only=True)
class ControlNetRequest(Loras, Style, Model, Sampler, Size, Prompt, OptionalInitImage, SecondControlUnit,
                        FirstControlUnit):
    TASK: ClassVar[str] = "controlnet"
    NEEDS: ClassVar[str] = "txt2img"
    save_hints: bool = field(False, "Save hints", "bool", help="Also save each unit's hint beside the images.")

    def control_units(self) -> list:
        return [self.control_unit(), self.control_unit_2()]

    @property
    def steps_run(self) -> int:
        """The denoising steps diffusers runs: all of them, or int(steps · strength) from an image."""
        if self.init_image is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def unused_fields(self) -> tuple[str, ...]:
        """Without an initial image the strength plays no part (and A1111's readers would take
        "Denoising strength" for image-to-image)."""
        return ("strength",) if self.init_image is None else ()

    def infotext_extras(self) -> dict[str, str]:
        """The A1111 ControlNet extension's lines: ControlNet 0: "Module: depth, Model: …, Weight: 1, …"."""
        return {f"ControlNet {u.index}": (f"Module: {u.control_type}, Model: {u.model}, Weight: {u.scale:g}, "
                                          f"Resize Mode: {u.resize_mode}, Guidance Start: {u.start:g}, "
                                          f"Guidance End: {u.end:g}")
                for u in self.control_units() if u.active}

    @staticmethod
    def parse_infotext_extras(params: dict[str, str]) -> dict[str, Any]:
        """Unit settings from those lines (A1111's module names such as depth_midas or
        lineart_realistic map to their kind; its model names, which Studio's registry lacks, to
        "" so the model's family picks one)."""
        from studio.groups_control import CONTROL_TYPES

        out: dict[str, Any] = {}
        for index, s in ((0, ""), (1, "_2")):
            text = params.get(f"ControlNet {index}")
            if not text:
                continue
            items = dict(part.split(":", 1) for part in text.split(",") if ":" in part)
            items = {k.strip().lower(): v.strip() for k, v in items.items()}
            module = items.get("module", "none").lower()
            kind = next((t for t in CONTROL_TYPES if module.startswith(t)), "none")
            out[f"control_type{s}"] = kind
            model = items.get("model", "")
            out[f"controlnet_model{s}"] = model if re.fullmatch(r"[a-z0-9][a-z0-9._-]*", model) else ""
            for key, name in (("weight", "controlnet_conditioning_scale"), ("guidance start", "control_guidance_start"),
                              ("guidance end", "control_guidance_end")):
                if key in items:
                    out[name + s] = float(items[key])
            mode = items.get("resize mode", "").lower()
            if mode in RESIZE_MODES:
                out[f"control_resize_mode{s}"] = mode
        return out



def run(request: ControlNetRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Generate `request.batch_size` images steered by the request's active control units."""
    from studio.pipelines.control import (
        control_kwargs,
        make_hints,
        resolve_units,
        unit_details,
    )
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

    # 1. Check inputs and pick each unit's ControlNet (before anything is loaded or changed)
    request.validate(models.registry)
    if not request.control_unit().active:  # an input, not a setting: presets validate without it
        raise ValueError("Control image (control_image) is missing: upload a photo to make the hint from, "
                         "or a ready-made hint")
    entry = models.registry.get(request.model)
    resolved = resolve_units(models.registry, entry, request.control_units())
    request, loras = request.with_lora_stack()  # <lora:…> tags leave the prompt for the LoRA stack
    # The request as run names the ControlNets picked for it, so its PNG remakes it exactly.
    request = request.replace(seed=resolve_seed(request.seed), **{f"controlnet_model{r.suffix}": r.net.name
                                                                  for r in resolved})
    prompt, negative_prompt = request.styled_prompts()
    state = {"steps_done": 0, "interrupted": False}
    task = "txt2img" if request.init_image is None else "img2img"
    width, height = request.width, request.height

    with models.lease(request.model, task, controlnets=[r.net.name for r in resolved], loras=loras,
                      on_wait=waiting(on_step, request.steps_run)) as lease:
        pipe = lease.pipe
        # 2. Each unit's hint at the output size (depth and lines use models the lease holds)
        hints = make_hints(resolved, width, height, lease, on_step, request.steps_run)
        # 3. Sampler and prompts, as in text-to-image
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        prompt_kwargs, prompt_details = prompt_inputs(pipe, prompt, negative_prompt)
        # 4. The initial image, if any, at the output size
        extra: dict[str, Any] = {}
        if request.init_image is not None:
            from studio.images import resize_image

            extra = dict(image=resize_image(request.init_image.convert("RGB"), width, height, "crop and resize"),
                         strength=request.strength)
        # 5. Denoise with the units' residuals and decode
        images = generate(
            pipe,
            **prompt_kwargs,
            **control_kwargs(resolved, hints, "image" if task == "txt2img" else "control_image"),
            **extra,
            width=width,
            height=height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=make_generators(request.seed, request.batch_size),
            callback_on_step_end=step_callback(on_step, request.steps_run, state),
        )

    # 6. What lets anyone remake these images (given the same control images)
    input_details = None
    if request.init_image is not None:
        input_details = InputImageDetails(input_size=list(request.init_image.size), resize_mode="crop and resize",
                                          steps_run=request.steps_run)
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=prompt_details,
                      input_image=input_details, control=unit_details(resolved, hints))
    return Result(request=request, images=images, seeds=seeds_for(request.seed, request.batch_size),
                  prompt=prompt, negative_prompt=negative_prompt, steps_done=state["steps_done"],
                  total_steps=request.steps_run, interrupted=state["interrupted"], details=details,
                  hints=hints if request.save_hints else [])


def control_hint(models: Any, image: Any, control_type: str, low_threshold: int = 100, high_threshold: int = 200,
                 width: int | None = None, height: int | None = None, resize_mode: str = "crop and resize") -> Any:
    """The hint a unit makes from `image` (the page's preview and `/control_hint`): at width ×
    height by the resize rule when given, else at the image's aspect and at most a megapixel."""
    from studio.groups_control import CONTROL_TYPES, ControlUnit
    from studio.images import RESIZE_MODES, fit_size
    from studio.pipelines.control import make_hint

    if image is None or not hasattr(image, "convert"):
        raise ValueError("Control image (control_image) is missing: upload an image to make the hint from")
    if control_type not in CONTROL_TYPES:
        raise ValueError(f"Control type (control_type) must be one of {list(CONTROL_TYPES)}, got {control_type!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"Hint resize mode (control_resize_mode) must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")
    if width is None or height is None:
        width, height = fit_size(image.size, min(image.width * image.height, 1024 * 1024), 8, min_side=64,
                                 max_side=4096)
    unit = ControlUnit(0, image, None, control_type, "", 1.0, 0.0, 1.0, resize_mode, low_threshold, high_threshold)
    if control_type in ("canny", "none"):  # no model needed: no wait for the GPU
        return make_hint(unit, width, height, None)
    with models.lease(None, purpose="making a ControlNet hint") as lease:
        return make_hint(unit, width, height, lease)
