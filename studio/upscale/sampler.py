"""The patch sampler: denoise a latent canvas of any size one UNet-sized patch at a time.

Pixelsmith (Tragakis et al., "Is One GPU Enough? Pushing Image Generation at Higher-Resolutions
with Foundation Models", NeurIPS 2024), implemented from the paper:

- every timestep, each patch of the UNet's native latent size is denoised once; the noise
  predictions of overlapping patches are blended with smooth weights that sum to one (MultiDiffusion,
  Bar-Tal et al. 2023), and the scheduler then steps the whole canvas — so any diffusers scheduler
  works, and one UNet call costs the same memory whatever the canvas size;
- the patch grid moves by a random shift every step, so no patch border stays in one place;
- for the first `slider` steps the canvas is guided by the noised guidance latent
  g_t = sqrt(ᾱ_t)·z0 + sqrt(1−ᾱ_t)·ε (the scheduler's own `add_noise`, computed when needed):
  phase fusion of each patch with g_t before it is denoised, and after the step a chess mask that
  sets half the latent pixels to g of the next timestep; optionally Laplacian band fusion
  (Edify Image's Laplacian diffusion, NVIDIA 2024). After the Slider, generation runs free.

With one patch covering the canvas, slider 0 and fusion off this is exactly diffusers'
image-to-image given the same z0 and noise (tests/test_upscale_sampler.py checks it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in latent pixels
# (x (k, C, ph, pw), t, boxes) -> the guided noise prediction (k, C, ph, pw), classifier-free guidance applied
Denoise = Callable[[Any, Any, Sequence[Box]], Any]
# (step, patch, patches, canvas x) after every UNet call; True stops the run
OnPatch = Callable[[int, int, int, Any], "bool | None"]


@dataclass(frozen=True)
class PatchPlan:
    size: int  # patch side in latent pixels: the UNet's native sample size (128 for SDXL)
    overlap: int  # latent pixels shared by neighbouring patches
    batch: int = 1  # patches per UNet call

    @classmethod
    def for_unet(cls, sample_size: int, batch: int = 1) -> PatchPlan:
        # A quarter of the patch overlaps: wide enough for the blend ramps to hide the borders,
        # small enough that each pixel is denoised ~1.8× per step, not more.
        return cls(sample_size, max(1, sample_size // 4), batch)


@dataclass(frozen=True)
class GuidancePlan:
    slider: int  # guided steps, from the first one
    phase_weight: float | None = 0.5  # share of the guidance's phase; None: phase fusion off
    chess: bool = True
    laplacian_levels: int | None = None  # None: Laplacian band fusion off


def unet_calls(height: int, width: int, patches: PatchPlan, steps: int) -> int:
    """The UNet calls a canvas of (height, width) latents takes: ceil(patches / batch) per step."""
    from studio.upscale.patches import count_patches

    n = count_patches(height, width, patches.size, patches.overlap)
    return math.ceil(n / patches.batch) * steps


def sample(denoise: Denoise, scheduler: Any, z0: Any, noise: Any, timesteps: Any, patches: PatchPlan,
           guidance: GuidancePlan, generator: Any, on_patch: OnPatch | None = None) -> Any:
    """Denoise from g at timesteps[0] to a clean latent (1, C, H, W); z0 and noise are (1, C, H, W).

    `timesteps` are the scheduler's (its last int(steps · strength)); `generator` (CPU) draws the
    grid shifts and chess parities. Raises InterruptedError when `on_patch` asks to stop."""
    from studio.upscale.fusion import apply_chess, band_fusion, chess_mask, random_parity

    _, _, h, w = z0.shape
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    x = scheduler.add_noise(z0, noise, timesteps[:1])  # where image-to-image starts: g at the first timestep
    for i, t in enumerate(timesteps):
        guided = i < guidance.slider
        g = scheduler.add_noise(z0, noise, t.reshape(1)) if guided else None  # (1, C, H, W), this step only
        if guided and guidance.laplacian_levels:
            x = band_fusion(x, g, i / guidance.slider, guidance.laplacian_levels)
        x, eps = _predict(denoise, x, g if guided else None, t, i, patches, guidance, generator, on_patch)
        x = scheduler.step(eps, t, x, **step_kwargs, return_dict=False)[0]
        if guided and guidance.chess and i + 1 < len(timesteps):
            # x is now at the next timestep: half its pixels take the guidance at that noise level
            g_next = scheduler.add_noise(z0, noise, timesteps[i + 1:i + 2])
            x = apply_chess(x, g_next, chess_mask(h, w, random_parity(generator)))
    return x


def _predict(denoise: Denoise, x: Any, g: Any, t: Any, step: int, patches: PatchPlan, guidance: GuidancePlan,
             generator: Any, on_patch: OnPatch | None) -> tuple[Any, Any]:
    """One step's blended noise prediction over a randomly shifted patch grid, and the canvas the
    UNet saw (phase-fused in guided steps, else x itself)."""
    import torch

    from studio.upscale.fusion import phase_fusion
    from studio.upscale.patches import patch_grid, patch_weight, random_shift

    _, _, h, w = x.shape
    fuse = g is not None and guidance.phase_weight is not None
    boxes = patch_grid(h, w, patches.size, patches.overlap, random_shift(generator, patches.overlap))
    num = torch.zeros_like(x)  # Σ weight · prediction, (1, C, H, W)
    den = x.new_zeros(1, 1, h, w)  # Σ weight
    seen = torch.zeros_like(x) if fuse else None  # Σ weight · fused input
    for start in range(0, len(boxes), patches.batch):
        group = boxes[start:start + patches.batch]
        xs = torch.cat([x[..., a:c, b:d] for a, b, c, d in group])  # (k, C, ph, pw)
        if fuse:
            xs = phase_fusion(xs, torch.cat([g[..., a:c, b:d] for a, b, c, d in group]), guidance.phase_weight)
        eps = denoise(xs, t, group).to(x)
        for j, (a, b, c, d) in enumerate(group):
            weight = patch_weight((a, b, c, d), h, w, patches.overlap).to(x)  # (ph, pw)
            num[..., a:c, b:d] += weight * eps[j]
            den[..., a:c, b:d] += weight
            if fuse:
                seen[..., a:c, b:d] += weight * xs[j]
        if on_patch is not None and on_patch(step, start + len(group), len(boxes), x):
            raise InterruptedError(f"stopped at step {step + 1}, patch {start + len(group)} of {len(boxes)}")
    return (seen / den if fuse else x), num / den
