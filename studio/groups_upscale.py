"""The upsampling task's fields: the cascade (scale), the Slider and its guidance, the tile ControlNet.

The method is Pixelsmith's (Tragakis et al., "Is One GPU Enough? Pushing Image Generation at
Higher-Resolutions with Foundation Models", NeurIPS 2024): the upsampled image guides the first
`slider` denoising steps of every patch, after which generation runs free and adds detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from studio.fields import Request, field, redefault
from studio.groups import Prompt, Sampler, check_steps_run
from studio.groups_control import OPTIONAL_MODEL, check_controlnet, usable_controlnets

STAGE_FACTOR = 2.0  # each stage of the cascade doubles the size at most (Pixelsmith works in ×2 steps)
SLIDER_GROWTH = 1.5  # each later stage is guided longer: ~40 % then ~60 % of the steps (duplication grows with size)
SLIDER_HELP = ("Guided steps: for this many steps the upsampled image steers every patch (phase fusion, chess "
               "mask); after them the model adds detail freely. Lower: more new detail; higher: closer to the "
               "input. Each later ×2 stage is guided 1.5× as long.")


def stage_factors(scale: float) -> list[float]:
    """The cascade: ×2 stages until the rest is at most ×2, e.g. 4 → [2, 2], 3 → [2, 1.5], 1 → [1]."""
    factors = []
    while scale > STAGE_FACTOR + 1e-9:
        factors.append(STAGE_FACTOR)
        scale /= STAGE_FACTOR
    return factors + [scale]


def stage_sizes(width: int, height: int, scale: float) -> list[tuple[int, int]]:
    """(width, height) after each stage: multiples of 8 (the VAE's factor), the last at `scale`."""
    sizes, total = [], 1.0
    for factor in stage_factors(scale):
        total *= factor
        sizes.append((max(8, round(width * total / 8) * 8), max(8, round(height * total / 8) * 8)))
    return sizes


def stage_sliders(slider: int, stages: int, steps: int) -> list[int]:
    """The Slider of each stage: the user's for the first, 1.5× more for each later one (capped at `steps`)."""
    return [min(steps, math.ceil(slider * SLIDER_GROWTH ** k - 1e-9)) for k in range(stages)]


@dataclass(frozen=True, kw_only=True)
class UpscalePrompt(Request):
    """Prompts are optional here: the image says what is there; a prompt only nudges the new detail."""

    prompt: str = redefault(Prompt, "prompt", "", essential=False,
                            help="Optional: what the picture shows (helps the model add fitting detail).")
    negative_prompt: str = redefault(Prompt, "negative_prompt", "blurry, lowres, jpeg artifacts")

    def styled_prompts(self) -> tuple[str, str]:
        """The prompts the model sees (no style here): as given."""
        return self.prompt, self.negative_prompt


@dataclass(frozen=True, kw_only=True)
class UpscaleSampler(Request):
    """The sampler fields of text-to-image (declared there), with Pixelsmith's defaults: DDIM, 30 steps."""

    num_inference_steps: int = redefault(Sampler, "num_inference_steps", 30)
    guidance_scale: float = redefault(Sampler, "guidance_scale", 6.0)
    seed: int = redefault(Sampler, "seed", -1)
    scheduler: str = redefault(Sampler, "scheduler", "DDIM")


@dataclass(frozen=True, kw_only=True)
class Upsampling(Request):
    image: Any = field(None, "Image", "image", record=False, essential=True,
                       help="The picture to upsample (at most 67 megapixels).")
    scale: float = field(4.0, "Scale (final factor)", "float", lo=1, hi=64, step=0.5,
                         help="Final size = input size × scale, reached in ×2 stages (4: two stages).")
    slider: int = field(12, "Slider (guided steps)", "int", lo=0, hi=150, step=1, help=SLIDER_HELP)
    strength: float = field(1.0, "Denoising strength", "float", lo=0.05, hi=1, step=0.01,
                            infotext="Denoising strength",
                            help="1: Pixelsmith's full schedule (the Slider keeps the picture); lower runs only "
                                 "the last steps, as image-to-image does.")
    phase_fusion: bool = field(True, "Phase fusion", "bool",
                               help="In guided steps each patch keeps its own Fourier amplitudes (detail) and takes "
                                    "part of its phases (layout) from the upsampled image.")
    phase_weight: float = field(0.5, "Phase fusion weight", "float", lo=0, hi=1, step=0.05,
                                help="Share of the upsampled image's phase: 0 none, 1 all of it.")
    chess_mask: bool = field(True, "Chess mask", "bool",
                             help="After each guided step half the latent pixels, in a shifted checkerboard, "
                                  "take the upsampled image's noised latent.")
    laplacian_fusion: bool = field(False, "Laplacian band fusion", "bool",
                                   help="Keep the upsampled image's coarse frequency bands while the fine ones are "
                                        "released earlier (Edify Image's Laplacian diffusion).")
    tile_controlnet: str = field("", "Tile ControlNet", "text", hi=100, pattern=OPTIONAL_MODEL,
                                 help="Empty: off. A ControlNet with a tile mode keeps the structure of each patch.")
    tile_weight: float = field(0.5, "Tile ControlNet weight", "float", lo=0, hi=2, step=0.05)
    patch_batch: int = field(1, "Patch batch", "int", lo=1, hi=16, step=1,
                             help="Patches per UNet call: faster on a large GPU; memory per call stays fixed.")

    @property
    def steps_run(self) -> int:
        """Denoising steps per stage: the last int(steps · strength) of the schedule, as in image-to-image."""
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def check(self, registry: Any, entry: Any) -> None:
        check_steps_run(self)
        if self.slider > self.steps_run:
            raise ValueError(f"Slider (slider) must be in [0, {self.steps_run}] (the steps run), got {self.slider}")
        if self.tile_controlnet:
            check_controlnet(registry, entry, self.tile_controlnet, "tile", "tile_controlnet")


def tile_controlnets(registry: Any, entry: Any) -> list[str]:
    """Registry names usable as `tile_controlnet` with model `entry`."""
    return [m.name for m in usable_controlnets(registry, entry, "tile")]

