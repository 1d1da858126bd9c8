"""SDXL micro-conditioning on a cosine schedule (Berrada et al. 2024), checked at the UNet's input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studio.pipelines.conditioning import control_weight
from studio.pipelines.txt2img import Txt2ImgRequest, run

BASE = dict(prompt="a harbour at night", negative_prompt="", width=64, height=64, num_inference_steps=4,
            guidance_scale=5.0, seed=5, model="tiny", scheduler="Euler")
REQUESTED = dict(original_size=(32, 48), crops_coords_top_left=(8, 4), target_size=(64, 64))


def test_control_weight():
    assert control_weight(1.0, 2.0) == pytest.approx(0, abs=1e-12)  # pure noise: no control metadata
    assert control_weight(0.0, 2.0) == 1.0  # denoised: full
    assert control_weight(0.5, 2.0) == pytest.approx(0.5)  # cos(π/4)^2
    assert control_weight(0.3, 0.0) == 1.0  # power 0: constant, plain SDXL
    ws = [control_weight(t, 3.0) for t in np.linspace(1, 0, 11)]
    assert all(a <= b for a, b in zip(ws, ws[1:]))


def captured_time_ids(manager, request):
    """Run `request`, recording the `time_ids` the UNet receives at each call."""
    pipe = manager.pipeline("tiny")
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = run(request, manager)
    finally:
        handle.remove()
    return result, seen


def test_unet_conditioning_follows_the_cosine_schedule(manager):
    request = Txt2ImgRequest(**BASE, **REQUESTED, micro_conditioning_power=2.0)
    result, seen = captured_time_ids(manager, request)
    assert len(seen) == 4
    pipe = manager.pipeline("tiny")
    from studio.schedulers import make_scheduler

    scheduler = make_scheduler("Euler", pipe.scheduler.config)
    scheduler.set_timesteps(4)
    neutral = np.array([64, 64, 0, 0, 64, 64], dtype=np.float64)
    requested = np.array([32, 48, 8, 4, 64, 64], dtype=np.float64)
    for step, ids in enumerate(seen):
        t = float(scheduler.timesteps[step]) / 1000
        w = math.cos(math.pi / 2 * t) ** 2
        expected = neutral + w * (requested - neutral)
        assert ids.shape == (2, 6)  # [negative, positive] under classifier-free guidance
        assert np.allclose(ids.numpy(), expected, atol=1e-3), (step, ids, expected)
    first, last = seen[0][1].numpy(), seen[-1][1].numpy()
    span = np.abs(requested - neutral).max()
    assert np.abs(first - neutral).max() < 0.2 * span  # early (t = 0.75): mostly semantics
    assert np.abs(last - requested).max() < 0.01 * span  # last step (t ~ 0): the requested metadata


def test_schedule_off_equals_plain_diffusers(manager):
    import torch

    from studio.schedulers import make_scheduler

    result, seen = captured_time_ids(manager, Txt2ImgRequest(**BASE, **REQUESTED))
    assert all(np.allclose(ids[1].numpy(), [32, 48, 8, 4, 64, 64]) for ids in seen)  # constant
    pipe = manager.pipeline("tiny")
    original = pipe.scheduler
    pipe.scheduler = make_scheduler("Euler", original.config)
    try:
        direct = pipe(prompt=BASE["prompt"], width=64, height=64, num_inference_steps=4, guidance_scale=5.0,
                      generator=[torch.Generator().manual_seed(5)], **REQUESTED).images
    finally:
        pipe.scheduler = original
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(direct[0]))


def test_schedule_changes_the_image_but_defaults_do_not(manager):
    plain = run(Txt2ImgRequest(**BASE), manager)
    neutral_scheduled = run(Txt2ImgRequest(**BASE, micro_conditioning_power=2.0), manager)
    scheduled = run(Txt2ImgRequest(**BASE, **REQUESTED, micro_conditioning_power=2.0), manager)
    constant = run(Txt2ImgRequest(**BASE, **REQUESTED), manager)
    px = lambda r: np.asarray(r.images[0], dtype=np.int16)  # noqa: E731
    assert np.array_equal(px(plain), px(neutral_scheduled))  # nothing requested: nothing to ramp
    assert not np.array_equal(px(scheduled), px(constant))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(original_size=(32,)), "Original size (original_size) must be empty or two integers in [0, 8192], got (32,)"),
        (dict(crops_coords_top_left=(-1, 0)), "Crop top-left (crops_coords_top_left) must be two integers"),
        (dict(target_size=("64", 64)), "Target size (target_size) must be empty or two integers"),
        (dict(micro_conditioning_power=float("nan")), "Cosine schedule power (micro_conditioning_power) must be a finite number in [0, 8]"),
        (dict(micro_conditioning_power=9), "Cosine schedule power (micro_conditioning_power) must be a finite number in [0, 8], got 9"),
    ],
)
def test_bad_micro_conditioning(registry, overrides, message):
    with pytest.raises(ValueError) as err:
        Txt2ImgRequest(**{**BASE, **overrides}).validate(registry)
    assert message in str(err.value)


def test_micro_conditioning_needs_sdxl(registry):
    with pytest.raises(ValueError, match=r"micro_conditioning_power need an SDXL-family model, got 'tiny-sd15' \(sd15\)"):
        Txt2ImgRequest(**{**BASE, "model": "tiny-sd15", "micro_conditioning_power": 1.0}).validate(registry)
