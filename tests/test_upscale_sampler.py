"""The patch sampler: equal to diffusers' image-to-image in the one-patch case, UNet calls as
predicted, no seams at patch borders, guidance that guides, and Stop between patches."""

from __future__ import annotations

import pytest
import torch

from studio.upscale.patches import count_patches
from studio.upscale.sampler import GuidancePlan, PatchPlan, sample, unet_calls


def ddim(steps: int):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    return scheduler


def smooth_latent(h: int, w: int) -> torch.Tensor:
    """A smooth synthetic guidance latent (1, 4, h, w): ramps and a slow sine."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([x, y, torch.sin(2 * x + y), x * y])[None]


class PatchNoise:
    """A stand-in UNet whose prediction differs from patch to patch (a random constant per patch
    and call): hard patch edges would show as steps; it records the boxes of the last call."""

    def __init__(self, seed: int = 0):
        self.generator, self.calls, self.boxes = torch.Generator().manual_seed(seed), 0, []

    def __call__(self, xs, t, boxes):
        self.calls += 1
        self.boxes = list(boxes)
        level = torch.randn(len(boxes), 1, 1, 1, generator=self.generator)
        return 0.3 * xs + level  # (k, C, ph, pw)


def border_ratio(x: torch.Tensor, columns: list[int]) -> float:
    """Mean |horizontal gradient| across the given columns / the mean over all columns."""
    grad = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))  # (W-1,): between column c-1 and c at c-1
    return float(grad[[c - 1 for c in columns]].mean() / grad.mean())


def interior_edges(boxes) -> list[int]:
    return sorted({b for _, b, _, _ in boxes if b > 0} | {d for _, _, _, d in boxes})[:-1]


def test_one_patch_without_guidance_equals_diffusers_img2img(manager):
    """With one patch covering the canvas, Slider 0 and no fusion, the sampler is image-to-image."""
    from diffusers.utils.torch_utils import randn_tensor

    from studio.pipelines.upscale import UpscaleRequest, make_denoiser

    pipe = manager.pipeline("tiny", "img2img")
    z0 = smooth_latent(8, 8)  # the tiny UNet's native size: one patch
    request = UpscaleRequest(image=None, model="tiny", prompt="a red barn", negative_prompt="fog", guidance_scale=5.0,
                             num_inference_steps=4, slider=0, phase_fusion=False, chess_mask=False)
    scheduler = ddim(4)
    denoise, _ = make_denoiser(pipe, request, scheduler, (64, 64), None, None)
    generator = torch.Generator().manual_seed(7)
    noise = randn_tensor(z0.shape, generator=generator, dtype=torch.float32)
    ours = sample(denoise, scheduler, z0, noise, scheduler.timesteps, PatchPlan(8, 2), GuidancePlan(0, None, False),
                  generator)

    original = pipe.scheduler
    pipe.scheduler = ddim(4)
    try:
        theirs = pipe(prompt="a red barn", negative_prompt="fog", image=z0, strength=1.0, num_inference_steps=4,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="latent").images
    finally:
        pipe.scheduler = original
    assert ours.shape == theirs.shape == (1, 4, 8, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_unet_calls_equal_the_predicted_count(batch):
    h, w, steps = 20, 28, 3
    plan = PatchPlan(8, 2, batch)
    model = PatchNoise()
    scheduler = ddim(steps)
    sample(model, scheduler, smooth_latent(h, w), torch.randn(1, 4, h, w), scheduler.timesteps, plan,
           GuidancePlan(2), torch.Generator().manual_seed(0))
    assert model.calls == unet_calls(h, w, plan, steps) == -(-count_patches(h, w, 8, 2) // batch) * steps
    assert count_patches(h, w, 8, 2) > 1


def test_patch_borders_do_not_show_and_the_measure_can_see_them():
    """Blended patches leave no step at their borders (ratio ≈ 1); hard tiles (no overlap) do."""
    h, w, steps = 16, 64, 3
    ratios = {}
    for name, overlap in (("blended", 4), ("hard", 0)):
        model, scheduler = PatchNoise(), ddim(steps)
        z0 = smooth_latent(h, w)
        x = sample(model, scheduler, z0, torch.zeros_like(z0), scheduler.timesteps, PatchPlan(16, overlap),
                   GuidancePlan(0, None, False), torch.Generator().manual_seed(1))
        ratios[name] = border_ratio(x, interior_edges(model.boxes))
    assert ratios["blended"] < 1.5, ratios
    assert ratios["hard"] > 3 * ratios["blended"], ratios


def test_tiny_unet_leaves_no_seams_on_a_smooth_guidance(manager):
    from studio.pipelines.upscale import UpscaleRequest, make_denoiser

    pipe = manager.pipeline("tiny", "img2img")
    request = UpscaleRequest(image=None, model="tiny", guidance_scale=1.0, num_inference_steps=4, slider=2)
    scheduler = ddim(4)
    denoise, _ = make_denoiser(pipe, request, scheduler, (128, 512), None, None)
    seen = []

    def record(xs, t, boxes):
        seen[:] = boxes
        return denoise(xs, t, boxes)

    z0 = smooth_latent(16, 64)
    x = sample(record, scheduler, z0, torch.randn_like(z0), scheduler.timesteps, PatchPlan.for_unet(8),
               GuidancePlan(2), torch.Generator().manual_seed(2))
    assert border_ratio(x, interior_edges(seen)) < 1.5


def test_guided_steps_keep_the_result_near_the_guidance():
    """The Slider's guidance (phase fusion, chess mask, Laplacian bands) pulls towards z0; free steps do not."""
    h, w, steps = 16, 16, 6
    z0 = smooth_latent(h, w)
    noise = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(3))
    distances = {}
    for name, plan in {"free": GuidancePlan(0, None, False), "chess": GuidancePlan(4, None, True),
                       "phase": GuidancePlan(4, 0.8, False), "laplacian": GuidancePlan(4, None, False, 3)}.items():
        scheduler = ddim(steps)
        x = sample(PatchNoise(), scheduler, z0, noise, scheduler.timesteps, PatchPlan(8, 2), plan,
                   torch.Generator().manual_seed(4))
        distances[name] = float((x - z0).abs().mean())
    for name in ("chess", "phase", "laplacian"):
        assert distances[name] < distances["free"], distances


def test_stop_between_patches():
    scheduler = ddim(3)
    asked = []

    def on_patch(step, done, total, x):
        asked.append((step, done, total))
        return len(asked) == 12

    z0 = smooth_latent(16, 16)
    with pytest.raises(InterruptedError, match="step 2, patch 3 of 9"):
        sample(PatchNoise(), scheduler, z0, torch.zeros_like(z0), scheduler.timesteps, PatchPlan(8, 2),
               GuidancePlan(0, None, False), torch.Generator(), on_patch)
    assert asked[-1] == (1, 3, 9)  # 3 × 3 patches a step: the 12th call is patch 3 of step 2
