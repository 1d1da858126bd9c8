"""Text-to-image: one request in, images and metadata out."""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, fields
from typing import Any

from studio.models.registry import ModelEntry
from studio.results import Result, StepCallback, StepEvent
from studio.schedulers import check_scheduler_name

MAX_SEED = 2**32 - 1  # seeds as A1111 shows them; -1 asks for a random one
Pair = tuple[int, int]
PAIR_FIELDS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
               "negative_crops_coords_top_left", "negative_target_size")


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 30
    guidance_scale: float = 6.0
    seed: int = -1
    batch_size: int = 1
    scheduler: str = "DPM++ 2M Karras"
    model: str = "sdxl-base"
    # A style (Fooocus-like): the prompt is put in place of {prompt}, negatives are joined.
    style_prompt: str = "{prompt}"
    style_negative_prompt: str = ""
    # SDXL micro-conditioning, ordered as diffusers orders it: sizes (height, width), crop
    # (top, left). None: the image's own size, or for negatives the positive value.
    original_size: Pair | None = None
    crops_coords_top_left: Pair = (0, 0)
    target_size: Pair | None = None
    negative_original_size: Pair | None = None
    negative_crops_coords_top_left: Pair | None = None
    negative_target_size: Pair | None = None
    micro_conditioning_power: float = 0.0  # cosine schedule of the metadata (conditioning.py); 0: off

    def __post_init__(self):
        for name in PAIR_FIELDS:  # JSON brings pairs back as lists
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def styled_prompts(self) -> tuple[str, str]:
        """The prompt and negative prompt the model sees once the style is applied."""
        prompt = self.style_prompt.replace("{prompt}", self.prompt)
        negative = ", ".join(p for p in (self.style_negative_prompt, self.negative_prompt) if p)
        return prompt, negative

    def validate(self, entry: ModelEntry) -> None:
        """Raise ValueError naming the field, the expected range and the received value."""
        if entry.role != "base":
            raise ValueError(f"model must be a base model, got {entry.name!r} (role {entry.role!r})")
        for name in ("prompt", "negative_prompt", "scheduler", "model", "style_prompt", "style_negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if "{prompt}" not in self.style_prompt:
            raise ValueError(f"style_prompt must contain the placeholder {{prompt}}, got {self.style_prompt!r}")
        lo, hi = entry.size_range
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, lo, hi)
            if value % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {value}")
        _check_int("num_inference_steps", self.num_inference_steps, 1, 150)
        _check_int("batch_size", self.batch_size, 1, 8)
        if self.seed != -1:
            _check_int("seed", self.seed, 0, MAX_SEED)
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= 30:
            raise ValueError(f"guidance_scale must be a finite number in [0, 30], got {g!r}")
        check_scheduler_name(self.scheduler)
        self._validate_micro_conditioning(entry)

    def _validate_micro_conditioning(self, entry: ModelEntry) -> None:
        for name in PAIR_FIELDS:
            value = getattr(self, name)
            if value is None and name != "crops_coords_top_left":
                continue
            if not (isinstance(value, tuple) and len(value) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 8192 for v in value)):
                raise ValueError(f"{name} must be two integers in [0, 8192], got {value!r}")
        p = self.micro_conditioning_power
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 <= p <= 8:
            raise ValueError(f"micro_conditioning_power must be a finite number in [0, 8], got {p!r}")
        defaults = {name: f.default for name, f in Txt2ImgRequest.__dataclass_fields__.items()}
        changed = [n for n in (*PAIR_FIELDS, "micro_conditioning_power") if getattr(self, n) != defaults[n]]
        if changed and entry.family != "sdxl":
            raise ValueError(f"{', '.join(changed)} need an SDXL model, got {entry.name!r} ({entry.family})")

    def micro_conditioning(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """(neutral, requested, negative neutral, negative requested) SDXL time ids."""
        from studio.pipelines.conditioning import time_ids

        size = (self.height, self.width)
        neutral = time_ids(size, (0, 0), size)
        requested = time_ids(self.original_size or size, self.crops_coords_top_left, self.target_size or size)
        negative = time_ids(self.negative_original_size or self.original_size or size,
                            self.negative_crops_coords_top_left or self.crops_coords_top_left,
                            self.negative_target_size or self.target_size or size)
        return neutral, requested, neutral, negative


REQUEST_FIELDS = [f.name for f in fields(Txt2ImgRequest)]


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def resolve_seed(seed: int) -> int:
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed


def make_generators(seed: int, count: int) -> list:
    """One CPU generator per image (image i uses seed + i), so every image can be remade alone
    and results do not depend on the GPU's random number generator."""
    import torch

    return [torch.Generator("cpu").manual_seed((seed + i) % (MAX_SEED + 1)) for i in range(count)]


def step_callback(on_step: StepCallback | None, total: int, state: dict, schedule: tuple | None = None):
    """A diffusers `callback_on_step_end` that reports progress, stops when asked to, and (with
    `schedule` = (time ids, power)) sets the next step's micro-conditioning."""
    from studio.pipelines.conditioning import scheduled_time_ids

    def callback(pipe, i, t, kwargs):
        state["steps_done"] = i + 1
        if on_step is not None and on_step(StepEvent(step=i + 1, total=total)):
            pipe._interrupt = True  # diffusers skips the remaining steps and decodes
            state["interrupted"] = i + 1 < total
        if schedule is not None:
            current = kwargs["add_time_ids"]  # (rows, 6)
            kwargs["add_time_ids"] = scheduled_time_ids(pipe, i + 1, *schedule, rows=current.shape[0]).to(current)
        return kwargs

    return callback


def micro_conditioning_arguments(pipe: Any, request: Txt2ImgRequest) -> tuple[dict, tuple | None]:
    """SDXL keyword arguments for the first step, and the schedule for the callback (or None)."""
    from studio.pipelines.conditioning import blend, control_weight, pipeline_kwargs

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


def run(request: Txt2ImgRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Generate `request.batch_size` images for `request` with the model manager `models`."""
    from studio.pipelines.prompts import prompt_arguments
    from studio.schedulers import make_scheduler

    # 1. Check inputs (before anything is loaded or changed)
    entry = models.registry.get(request.model)
    request.validate(entry)
    seed = resolve_seed(request.seed)
    state = {"steps_done": 0, "interrupted": False}

    with models.use(request.model, "txt2img") as pipe:
        # 2. The sampler for this request (the manager restores the model's own afterwards)
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        # 3. Prompts, chunked past 77 tokens
        prompt_kwargs, prompt_info = prompt_arguments(pipe, *request.styled_prompts())
        # 4. Size and crop metadata, optionally on a cosine schedule
        conditioning_kwargs, schedule = micro_conditioning_arguments(pipe, request)
        # 5. Denoise and decode
        output = pipe(
            **prompt_kwargs,
            **conditioning_kwargs,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=make_generators(seed, request.batch_size),
            callback_on_step_end=step_callback(on_step, request.num_inference_steps, state, schedule),
        )

    # 6. Metadata that lets anyone remake these images
    metadata = {
        **asdict(request),
        "seed": seed,
        "styled_prompt": request.styled_prompts()[0],
        "styled_negative_prompt": request.styled_prompts()[1],
        "seeds": [(seed + i) % (MAX_SEED + 1) for i in range(request.batch_size)],
        "family": entry.family,
        "repo_id": entry.repo_id,
        **prompt_info,
        "steps_done": state["steps_done"],
        "interrupted": state["interrupted"],
    }
    return Result(images=list(output.images), seed=seed, metadata=metadata)
