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
DOF_MODES = {"lens": "lens blur from estimated depth", "prompt": "prompt words only (no depth model)"}
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
    # Camera (studio/camera.py, pipelines/camera.py). None turns a control off; the defaults are
    # plain text-to-image. Focal length is full-frame equivalent (50 mm when only pitch or
    # aperture is set); pitch is in degrees, positive looking up.
    camera_pitch: float | None = None
    focal_length_mm: float | None = None
    aperture_f_number: float | None = None
    focus_distance_m: float | None = None  # None with an aperture: focus on the image's centre
    dof_mode: str = "lens"  # "lens": depth model + thin-lens blur; "prompt": bokeh words only
    horizon_strength: float = 0.6  # how hard the initial noise is pushed to the horizon layout

    def __post_init__(self):
        for name in PAIR_FIELDS:  # JSON brings pairs back as lists
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def styled_prompts(self) -> tuple[str, str]:
        """The prompt and negative prompt the model sees once the style and camera words are applied."""
        from studio.camera import camera_terms

        terms, negative_terms = camera_terms(self.focal_length_mm, self.camera_pitch, self.aperture_f_number,
                                             dof_from_prompt=self.dof_mode == "prompt")
        prompt = ", ".join([self.style_prompt.replace("{prompt}", self.prompt), *terms])
        negative = ", ".join(p for p in (self.style_negative_prompt, self.negative_prompt, *negative_terms) if p)
        return prompt, negative

    @property
    def focal_length(self) -> float:
        """The focal length the geometry uses (mm): the requested one, or a normal 50 mm lens."""
        return 50.0 if self.focal_length_mm is None else self.focal_length_mm

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
        _check_number("guidance_scale", self.guidance_scale, 0, 30)
        check_scheduler_name(self.scheduler)
        self._validate_micro_conditioning(entry)
        self._validate_camera()

    def _validate_camera(self) -> None:
        _check_number("camera_pitch", self.camera_pitch, -60, 60, optional=True)
        _check_number("focal_length_mm", self.focal_length_mm, 8, 800, optional=True)
        _check_number("aperture_f_number", self.aperture_f_number, 0.7, 64, optional=True)
        _check_number("focus_distance_m", self.focus_distance_m, 0.1, 10000, optional=True)
        _check_number("horizon_strength", self.horizon_strength, 0, 2)
        if self.dof_mode not in DOF_MODES:
            raise ValueError(f"dof_mode must be one of {list(DOF_MODES)}, got {self.dof_mode!r}")
        if self.focus_distance_m is not None and self.focus_distance_m * 1000 <= 2 * self.focal_length:
            raise ValueError(f"focus_distance_m must be beyond twice the focal length ({self.focal_length:g} mm), "
                             f"got {self.focus_distance_m!r}")

    def _validate_micro_conditioning(self, entry: ModelEntry) -> None:
        for name in PAIR_FIELDS:
            value = getattr(self, name)
            if value is None and name != "crops_coords_top_left":
                continue
            if not (isinstance(value, tuple) and len(value) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 8192 for v in value)):
                raise ValueError(f"{name} must be two integers in [0, 8192], got {value!r}")
        _check_number("micro_conditioning_power", self.micro_conditioning_power, 0, 8)
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
CAMERA_FIELDS = ("camera_pitch", "focal_length_mm", "aperture_f_number", "focus_distance_m", "dof_mode",
                 "horizon_strength")


def _check_number(name: str, value: Any, lo: float, hi: float, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be {'empty or ' if optional else ''}a finite number in [{lo}, {hi}], got {value!r}")


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
    from studio.pipelines import camera
    from studio.pipelines.prompts import prompt_arguments
    from studio.schedulers import make_scheduler

    # 1. Check inputs (before anything is loaded or changed)
    entry = models.registry.get(request.model)
    request.validate(entry)
    seed = resolve_seed(request.seed)
    prompt, negative_prompt = request.styled_prompts()
    state = {"steps_done": 0, "interrupted": False}
    details: dict[str, Any] = {}

    with models.use(request.model, "txt2img") as pipe:
        # 2. The sampler for this request (the manager restores the model's own afterwards)
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        # 3. Prompts (with the camera's words), chunked past 77 tokens
        prompt_kwargs, prompt_info = prompt_arguments(pipe, prompt, negative_prompt)
        # 4. Size and crop metadata, optionally on a cosine schedule
        conditioning_kwargs, schedule = micro_conditioning_arguments(pipe, request)
        # 5. The initial noise, with the horizon layout when a pitch is set
        generators = make_generators(seed, request.batch_size)
        latents = camera.horizon_latents(pipe, request, generators)
        if latents is not None:
            details["camera"] = camera.horizon_details(request)
        # 6. Denoise and decode
        output = pipe(
            **prompt_kwargs,
            **conditioning_kwargs,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=generators,
            latents=latents,
            callback_on_step_end=step_callback(on_step, request.num_inference_steps, state, schedule),
        )
    images = list(output.images)

    # 7. Depth of field through the lens, from each image's estimated depth; sharp ones are kept
    originals: list = []
    if request.aperture_f_number is not None and request.dof_mode == "lens":
        with models.use_depth() as (depth_name, estimator):
            blurred, dof = camera.apply_depth_of_field(images, estimator, request)
        originals, images = images, blurred
        details["depth_of_field"] = {"depth_model": depth_name, **dof}

    # 8. Metadata that lets anyone remake these images
    metadata = {
        **asdict(request),
        "seed": seed,
        "styled_prompt": prompt,
        "styled_negative_prompt": negative_prompt,
        "seeds": [(seed + i) % (MAX_SEED + 1) for i in range(request.batch_size)],
        "family": entry.family,
        "repo_id": entry.repo_id,
        **prompt_info,
        **details,
        "steps_done": state["steps_done"],
        "interrupted": state["interrupted"],
    }
    return Result(images=images, seed=seed, metadata=metadata, originals=originals)
