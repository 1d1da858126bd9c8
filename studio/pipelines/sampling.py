"""What every diffusion task shares: seeds, generators, the step callback, prompt arguments."""

from __future__ import annotations

import secrets
from typing import Any

from studio.groups import MAX_SEED
from studio.results import PromptDetails, StepCallback, StepEvent, Stopped


def resolve_seed(seed: int) -> int:
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed


def seeds_for(seed: int, count: int) -> list[int]:
    """Image i of a batch uses seed + i (wrapping), so any image can be remade alone."""
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


def make_generators(seed: int, count: int) -> list:
    """One CPU generator per image, so results do not depend on the GPU's random number generator."""
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds_for(seed, count)]


def step_callback(on_step: StepCallback | None, total: int, state: dict, schedule: tuple | None = None):
    """A diffusers `callback_on_step_end` that reports progress (with the latents, for previews),
    stops when asked to, and (with `schedule` = (time ids, power)) sets the next step's SDXL
    micro-conditioning."""
    from studio.pipelines.conditioning import scheduled_time_ids

    def callback(pipe, i, t, kwargs):
        state["steps_done"] = i + 1
        latents = kwargs.get("latents")  # (B, C, H/8, W/8)

        def preview() -> list:  # called (if at all) by on_step, while this job holds the GPU
            from studio.pipelines.previews import latent_to_rgb_map, preview_images

            return preview_images(latents, *latent_to_rgb_map(pipe.vae))

        event = StepEvent(step=i + 1, total=total, preview=preview if latents is not None else None)
        if on_step is not None and on_step(event):
            pipe._interrupt = True  # diffusers skips the remaining steps and decodes
            state["interrupted"] = i + 1 < total
        if schedule is not None:
            current = kwargs["add_time_ids"]  # (rows, 6)
            kwargs["add_time_ids"] = scheduled_time_ids(pipe, i + 1, *schedule, rows=current.shape[0]).to(current)
        return kwargs

    return callback


def waiting(on_step: StepCallback | None, total: int):
    """The lease's on_wait: waiting messages go through the step callback as step-0 events, and
    a Stop while waiting gives up the place in line (raising Stopped: nothing was made)."""
    if on_step is None:
        return None

    def on_wait(message: str) -> None:
        if on_step(StepEvent(step=0, total=total, message=message)):
            raise Stopped("Stopped while waiting for the GPU; nothing was made.")

    return on_wait


def prompt_inputs(pipe: Any, prompt: str, negative_prompt: str) -> tuple[dict, PromptDetails]:
    """Keyword arguments carrying both prompts (chunked past 77 tokens), and how they were handled."""
    from studio.pipelines.prompts import prompt_arguments

    kwargs, info = prompt_arguments(pipe, prompt, negative_prompt)
    return kwargs, PromptDetails(tokens=info["prompt_tokens"], negative_tokens=info["negative_prompt_tokens"],
                                 handling=info["prompt_handling"])
