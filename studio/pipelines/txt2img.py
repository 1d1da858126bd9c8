"""Text-to-image: one request in, images and their details out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from studio.groups import Camera, Loras, MicroConditioning, Model, Prompt, Sampler, Size, Style
from studio.groups_control import HorizonControl, usable_controlnets
from studio.results import (
    DepthOfFieldDetails,
    Details,
    HorizonDetails,
    Result,
    StepCallback,
)


@dataclass(frozen=True, kw_only=True)
class Txt2ImgRequest(Loras, HorizonControl, Camera, MicroConditioning, Style, Model, Sampler, Size, Prompt):
    TASK: ClassVar[str] = "txt2img"

    def styled_prompts(self) -> tuple[str, str]:
        """The prompt and negative prompt the model sees: the style applied, then the camera's words."""
        prompt, negative = Style.styled_prompts(self)
        terms, negative_terms = self.camera_words()
        return ", ".join([prompt, *terms]), ", ".join(p for p in (negative, *negative_terms) if p)


def run(request: Txt2ImgRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Generate `request.batch_size` images for `request` with the model manager `models`."""
    from studio.pipelines import camera
    from studio.pipelines.conditioning import micro_conditioning_arguments
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

    # 1. Check inputs (before anything is loaded or changed)
    request.validate(models.registry)
    entry = models.registry.get(request.model)
    request, loras = request.with_lora_stack()  # <lora:…> tags leave the prompt for the LoRA stack
    request = request.replace(seed=resolve_seed(request.seed))
    prompt, negative_prompt = request.styled_prompts()
    state = {"steps_done": 0, "interrupted": False}
    horizon = None
    # The depth ControlNet that enforces the horizon, when asked (validation made sure one exists)
    depth_net = usable_controlnets(models.registry, entry, "depth")[0] if request.horizon_control else None
    nets = [depth_net.name] if depth_net is not None else []

    with models.lease(request.model, "txt2img", controlnets=nets, loras=loras,
                      on_wait=waiting(on_step, request.num_inference_steps)) as lease:
        pipe = lease.pipe
        # 2. The sampler for this request (the lease restores the model's own afterwards)
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        # 3. Prompts (with the camera's words), chunked past 77 tokens
        prompt_kwargs, prompt_details = prompt_inputs(pipe, prompt, negative_prompt)
        # 4. Size and crop metadata, optionally on a cosine schedule
        conditioning_kwargs, schedule = micro_conditioning_arguments(pipe, request)
        # 5. The initial noise, with the horizon layout when a pitch is set
        generators = make_generators(request.seed, request.batch_size)
        latents = camera.horizon_latents(pipe, request, generators)
        if latents is not None:
            horizon = HorizonDetails(**camera.horizon_details(request), controlnet=nets[0] if nets else None)
        control = camera.horizon_control_arguments(request, depth_net) if nets else {}
        # 6. Denoise and decode
        images = generate(
            pipe,
            **prompt_kwargs,
            **conditioning_kwargs,
            **control,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=generators,
            latents=latents,
            callback_on_step_end=step_callback(on_step, request.num_inference_steps, state, schedule),
        )
        originals, dof = [], None
        # 7. Depth of field through the lens, from each image's estimated depth; sharp ones are kept
        if request.aperture_f_number is not None and request.dof_mode == "lens":
            depth_name, estimator = lease.depth_estimator()
            blurred, dof_details = camera.apply_depth_of_field(images, estimator, request)
            originals, images = images, blurred
            dof = DepthOfFieldDetails(depth_model=depth_name, **dof_details)

    # 8. What lets anyone remake these images
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=prompt_details, camera=horizon,
                      depth_of_field=dof)
    return Result(request=request, images=images, seeds=seeds_for(request.seed, request.batch_size), prompt=prompt,
                  negative_prompt=negative_prompt, steps_done=state["steps_done"],
                  total_steps=request.num_inference_steps, interrupted=state["interrupted"], details=details,
                  originals=originals)
