"""Image-to-image: repaint an input image, as much as `strength` says (SDEdit, Meng et al. 2021).

The input is resized to the output size by the resize mode (studio/images.py), encoded by the VAE,
noised to the level of step int(steps · strength) from the end of the schedule, and denoised from
there by diffusers' own img2img pipeline, which shares every component with text-to-image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from studio.groups import InitImage, Loras, Model, Prompt, Sampler, Size, Style
from studio.results import Details, InputImageDetails, Result, StepCallback


@dataclass(frozen=True, kw_only=True)
class Img2ImgRequest(Loras, Style, Model, Sampler, Size, Prompt, InitImage):
    TASK: ClassVar[str] = "img2img"

    @property
    def steps_run(self) -> int:
        """The denoising steps diffusers runs: the last int(steps · strength) of the schedule."""
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


def run(request: Img2ImgRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Repaint `request.image` into `request.batch_size` images with the model manager `models`."""
    from studio.images import resize_image
    from studio.pipelines.decode import generate
    from studio.pipelines.sampling import make_generators, prompt_inputs, resolve_seed, seeds_for, step_callback, waiting
    from studio.schedulers import make_scheduler

    # 1. Check inputs (before anything is loaded or changed)
    request.validate(models.registry)
    if not hasattr(request.image, "convert"):
        raise ValueError(f"Image (image) must be an image, got {type(request.image).__name__}")
    entry = models.registry.get(request.model)
    request, loras = request.with_lora_stack()  # <lora:…> tags leave the prompt for the LoRA stack
    request = request.replace(seed=resolve_seed(request.seed))
    prompt, negative_prompt = request.styled_prompts()
    state = {"steps_done": 0, "interrupted": False}

    # 2. The input at the output size
    image = resize_image(request.image.convert("RGB"), request.width, request.height, request.resize_mode)

    with models.lease(request.model, "img2img", loras=loras, on_wait=waiting(on_step, request.steps_run)) as lease:
        pipe = lease.pipe
        # 3. Sampler and prompts, as in text-to-image
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        prompt_kwargs, prompt_details = prompt_inputs(pipe, prompt, negative_prompt)
        # 4. Encode, noise to `strength`, denoise and decode
        images = generate(
            pipe,
            **prompt_kwargs,
            image=image,
            strength=request.strength,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=make_generators(request.seed, request.batch_size),
            callback_on_step_end=step_callback(on_step, request.steps_run, state),
        )

    # 5. What lets anyone remake these images (given the same input image)
    input_details = InputImageDetails(input_size=list(request.image.size), resize_mode=request.resize_mode,
                                      steps_run=request.steps_run)
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=prompt_details, input_image=input_details)
    return Result(request=request, images=images, seeds=seeds_for(request.seed, request.batch_size),
                  prompt=prompt, negative_prompt=negative_prompt, steps_done=state["steps_done"],
                  total_steps=request.steps_run, interrupted=state["interrupted"], details=details)
