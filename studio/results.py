"""What every pipeline returns, and the one step-callback contract they all accept."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepEvent:
    step: int  # denoising steps done so far, 1-based (0 while waiting for the GPU)
    total: int  # steps planned
    preview: Callable[[], list[Any]] | None = None  # cheap PIL previews of the current latents
    message: str | None = None  # set while the job waits: who holds the GPU, our place in line
    detail: str | None = None  # where a long job is, for the status line ("Stage 1 of 2 · step 3 of 30 · …")


class Stopped(Exception):
    """The job was stopped before it began: asked to stop while it waited for the GPU."""


# Called after every denoising step (and about once a second while waiting for the GPU);
# returning True stops the run at that step (the images made so far are still returned, marked
# as interrupted). Progress, previews, waiting messages and Stop all use it.
StepCallback = Callable[[StepEvent], "bool | None"]


@dataclass(frozen=True)
class PromptDetails:
    tokens: int  # of the prompt the model saw (style and camera words included)
    negative_tokens: int
    handling: str  # "single window", or how a long prompt was chunked


@dataclass(frozen=True)
class HorizonDetails:
    horizon_row: float  # image row of the level horizon (may lie outside the image)
    focal_length_px: float
    controlnet: str | None = None  # the depth ControlNet holding the horizon ("Camera → horizon control")


@dataclass(frozen=True)
class DepthOfFieldDetails:
    depth_model: str
    focus_distance_m: list[float]  # per image
    depth_range_m: list[list[float]]  # per image: [nearest, farthest]


@dataclass(frozen=True)
class InputImageDetails:
    input_size: list[int]  # [width, height] of the image given
    resize_mode: str
    steps_run: int  # int(steps · strength): the denoising steps image-to-image really runs


@dataclass(frozen=True)
class ControlUnitDetails:
    unit: int  # 0, 1: A1111's "ControlNet 0", "ControlNet 1"
    control_type: str  # the preprocessor
    controlnet: str  # registry name
    repo_id: str
    control_mode: int | None  # a Union model's mode; None for a single-condition ControlNet
    weight: float
    guidance_start: float
    guidance_end: float
    resize_mode: str
    hint_given: bool  # a ready-made hint was used as it is
    hint_size: list[int]  # [width, height] the ControlNet saw


@dataclass(frozen=True)
class InpaintDetails:
    mode: str  # "inpaint", "image-to-image (the mask covers everything)" or "outpaint"
    inpaint_model: str  # the base model's inpaint pipeline, a checkpoint or a Union repaint ControlNet
    window: list[int]  # [left, top, right, bottom] of the repainted area in the output
    working_size: list[int]  # [width, height] the model ran at
    mask_coverage: float  # fraction of the output's pixels masked
    output_size: list[int]  # [width, height]


@dataclass(frozen=True)
class UpscaleDetails:
    input_size: list[int]  # [width, height]
    output_size: list[int]
    stages: list[list[int]]  # [width, height] after each stage of the cascade
    sliders: list[int]  # guided steps of each stage
    patch_size: int  # latent pixels (the UNet's native size)
    patch_overlap: int
    patches_last_stage: int  # patches per step in the last stage
    unet_calls: int  # over all stages
    tile_controlnet: str | None = None


@dataclass(frozen=True)
class PanoramaDetails:
    canvas_size: list[int]  # [width, height] of the equirectangular image (2:1)
    view_size: int  # side of each square perspective view, in pixels
    views: list[dict]  # {"yaw", "pitch", "fov"} in painting order
    wrap_ratio: float  # |column 0 − last column| over the median neighbour difference: ≈1 is seamless
    pole_spread: list[float]  # std of the top and bottom rows (each is one point on the sphere): ≈0 is clean
    dynamic_range_stops: float  # log2 of p99.9 / p0.1 luminance of the HDR
    bracketed_view: dict | None = None  # the view repainted at lower exposures, when bracketing
    refine_strength: float = 0.0


@dataclass(frozen=True)
class Details:
    """What a run records besides its request (typed: each part exists only where it applies)."""

    family: str
    repo_id: str
    prompt_encoding: PromptDetails
    camera: HorizonDetails | None = None
    depth_of_field: DepthOfFieldDetails | None = None
    input_image: InputImageDetails | None = None
    control: list[ControlUnitDetails] | None = None
    inpaint: InpaintDetails | None = None
    upscale: UpscaleDetails | None = None
    panorama: PanoramaDetails | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Result:
    request: Any  # the request as run: its seed resolved
    images: list[Any]  # PIL images
    seeds: list[int]  # image i used seeds[i]
    prompt: str  # the prompt and negative prompt the model saw (style and camera words applied)
    negative_prompt: str
    steps_done: int
    total_steps: int  # the denoising steps planned
    interrupted: bool
    details: Details
    originals: list[Any] = field(default_factory=list)  # the images before a post-effect (lens blur)
    hints: list[Any] = field(default_factory=list)  # ControlNet hints, saved beside the images when asked
    # A large output as an (H, W, 3) uint8 array on disk (np.memmap); `images` then holds its preview
    canvas: Any = None
    radiance: Any = None  # a panorama's HDR: (H, W, 3) float32 linear radiance, 1 = diffuse white

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def summary(self) -> dict[str, Any]:
        """Everything about the run as JSON: what the page's details panel and the API show."""
        return {"task": self.request.TASK, **self.request.record(), "seed": self.seed, "seeds": self.seeds,
                "styled_prompt": self.prompt, "styled_negative_prompt": self.negative_prompt,
                "steps_done": self.steps_done, "total_steps": self.total_steps, "interrupted": self.interrupted,
                **self.details.to_json()}

    def status(self) -> str:
        """One line for the page: how the run ended."""
        n = len(self.images)
        made = f"{n} image{'s' if n != 1 else ''}, seed {self.seed}"
        if self.interrupted:
            return f"Stopped after {self.steps_done} of {self.total_steps} steps ({made})."
        return f"Done: {made}, {self.steps_done} step{'s' if self.steps_done != 1 else ''}."
