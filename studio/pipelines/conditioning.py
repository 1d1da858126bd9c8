"""SDXL micro-conditioning (size and crop metadata) weighted over time.

Berrada et al., "On improved conditioning mechanisms and pre-training strategies for diffusion
models" (FAIR, NeurIPS 2024) decouple control metadata from semantics and weight the control
conditioning with a cosine schedule of the noise level, so that low-level conditions act late
in sampling and do not change the content decided early. SDXL was trained with constant
metadata; here the schedule is applied at sampling time only:

    w(t) = cos(π/2 · t)^power,   t = timestep / num_train_timesteps ∈ [0, 1]
    time_ids(t) = neutral + w(t) · (requested − neutral)

where `neutral` is SDXL's default metadata for the image (original = target = its size, no crop).
power = 0 gives w = 1 at every step: plain diffusers, the default. Larger powers hold the
requested metadata back longer (power 2: ~half weight at t = 0.5).
"""

from __future__ import annotations

import math
from typing import Any

Pair = tuple[int, int]  # (height, width) or (top, left), as diffusers orders them


def control_weight(t: float, power: float) -> float:
    """w(t) = cos(π/2 · t)^power: 0 at pure noise (t=1) for power > 0, 1 once denoised (t=0)."""
    return 1.0 if power == 0 else math.cos(math.pi / 2 * min(max(t, 0.0), 1.0)) ** power


def time_ids(original: Pair, crop: Pair, target: Pair) -> list[float]:
    """SDXL's six micro-conditioning numbers, in the UNet's order."""
    return [*original, *crop, *target]


def blend(neutral: list[float], requested: list[float], w: float) -> list[float]:
    return [n + w * (r - n) for n, r in zip(neutral, requested)]


def pipeline_kwargs(ids: list[float], negative_ids: list[float]) -> dict[str, Any]:
    """The diffusers keyword arguments that make the pipeline start from these time ids."""
    return dict(original_size=tuple(ids[0:2]), crops_coords_top_left=tuple(ids[2:4]), target_size=tuple(ids[4:6]),
                negative_original_size=tuple(negative_ids[0:2]), negative_crops_coords_top_left=tuple(negative_ids[2:4]),
                negative_target_size=tuple(negative_ids[4:6]))


def scheduled_time_ids(pipe: Any, step: int, ids: tuple[list, list, list, list], power: float, rows: int):
    """`add_time_ids` for denoising step `step`, laid out as diffusers' SDXL pipeline does.

    ids = (neutral, requested, negative neutral, negative requested). With classifier-free
    guidance diffusers stacks [negative, positive] and tiles that pair once per image.
    """
    import torch

    timesteps = pipe.scheduler.timesteps
    t = float(timesteps[min(step, len(timesteps) - 1)]) / pipe.scheduler.config.num_train_timesteps
    w = control_weight(t, power)
    neutral, requested, neg_neutral, neg_requested = ids
    pos = torch.tensor([blend(neutral, requested, w)])
    neg = torch.tensor([blend(neg_neutral, neg_requested, w)])
    pair = torch.cat([neg, pos]) if pipe.do_classifier_free_guidance else pos
    return pair.repeat(rows // len(pair), 1)


def micro_conditioning_arguments(pipe: Any, request: Any) -> tuple[dict, tuple | None]:
    """SDXL keyword arguments for the first step, and the schedule for the step callback (or None)."""
    if getattr(pipe, "tokenizer_2", None) is None:
        return {}, None  # SD1.5 has no micro-conditioning
    neutral, requested, neg_neutral, neg_requested = ids = request.micro_conditioning()
    power = request.micro_conditioning_power
    if power == 0:  # constant weight 1: exactly plain diffusers with these arguments
        return pipeline_kwargs(requested, neg_requested), None
    pipe.scheduler.set_timesteps(request.num_inference_steps)  # to know the first step's noise level
    w = control_weight(float(pipe.scheduler.timesteps[0]) / pipe.scheduler.config.num_train_timesteps, power)
    first = pipeline_kwargs(blend(neutral, requested, w), blend(neg_neutral, neg_requested, w))
    return {**first, "callback_on_step_end_tensor_inputs": ["latents", "add_time_ids"]}, (ids, power)
