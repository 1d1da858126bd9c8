"""Image-to-image on the tiny SDXL model, compared with diffusers' own img2img pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.pipelines.img2img import Img2ImgRequest, run

BASE = dict(prompt="a red lighthouse on a cliff", negative_prompt="blurry", model="tiny", width=64, height=64,
            num_inference_steps=4, guidance_scale=5.0, scheduler="Euler", seed=1234)


def source(size=(64, 64)) -> Image.Image:
    """A picture with structure: a gradient with a dark disc."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 128.0)], axis=-1)
    rgb[(x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 4) ** 2] = 20
    return Image.fromarray(rgb.astype(np.uint8))


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_same_pixels_as_diffusers_img2img(manager, strength):
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from studio.schedulers import make_scheduler

    image = source()
    result = run(Img2ImgRequest(**BASE, image=image, strength=strength, batch_size=2), manager)
    with manager.lease("tiny", "img2img") as lease:
        components = dict(lease.pipe.components)
        components["scheduler"] = make_scheduler("Euler", components["scheduler"].config)
        direct = StableDiffusionXLImg2ImgPipeline(**components)(
            prompt=BASE["prompt"], negative_prompt=BASE["negative_prompt"], image=image, strength=strength,
            num_inference_steps=4, guidance_scale=5.0, num_images_per_prompt=2,
            generator=[torch.Generator().manual_seed(1234), torch.Generator().manual_seed(1235)],
        ).images
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert np.array_equal(pixels(result.images), pixels(direct))
    assert result.steps_done == result.total_steps == int(4 * strength)
    assert result.seeds == [1234, 1235]


def test_strength_near_zero_returns_the_input_as_the_vae_sees_it(manager, monkeypatch):
    """One step at the lowest noise level gives back the input, as the VAE reproduces it.

    The tiny models are random, so three things a trained model has are put in place: their VAE's
    posterior is wide (the round trip uses the latent diffusers samples with the same seed); its
    latents already have unit variance (so its scaling factor is 1, where SDXL's 0.13025 brings
    its own latents to unit variance); and the UNet's noise prediction is arbitrary (replaced by
    "no noise here", which a trained model predicts for a clean image)."""
    import torch
    from diffusers.configuration_utils import FrozenDict

    image = source()
    with manager.lease("tiny", "img2img") as lease:
        pipe = lease.pipe
        x = pipe.image_processor.preprocess(image)
        with torch.no_grad():
            latent = pipe.vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(BASE["seed"]))
            round_trip = pipe.image_processor.postprocess(pipe.vae.decode(latent).sample)[0]
        unet, vae = pipe.unet, pipe.vae
    monkeypatch.setattr(unet, "forward", lambda sample, *args, **kwargs: (torch.zeros_like(sample),))
    monkeypatch.setattr(vae, "_internal_dict", FrozenDict({**vae.config, "scaling_factor": 1.0}))

    def distance(strength: float, steps: int) -> float:
        request = Img2ImgRequest(**{**BASE, "num_inference_steps": steps}, image=image, strength=strength)
        return float(np.abs(pixels(run(request, manager).images) - pixels([round_trip])).mean())

    near, half, full = distance(0.02, 50), distance(0.5, 4), distance(1.0, 4)
    # Within 2 % on average: what is left is the step's own noise (σ ≈ 0.04), which the stand-in
    # UNet does not predict away; half and full strength repaint far more.
    assert near < 5.0 and near < half < full and full > 5 * near, (near, half, full)


def test_the_input_is_resized_by_the_resize_mode(manager, monkeypatch):
    import studio.images as images

    seen = []
    real = images.resize_image
    monkeypatch.setattr(images, "resize_image", lambda im, w, h, mode: seen.append((im.size, w, h, mode)) or real(im, w, h, mode))
    result = run(Img2ImgRequest(**{**BASE, "width": 96}, image=source((200, 100)), strength=0.5,
                                resize_mode="resize and fill"), manager)
    assert seen == [((200, 100), 96, 64, "resize and fill")]
    assert result.images[0].size == (96, 64)
    assert result.details.input_image.input_size == [200, 100]


def test_stop_returns_early_and_says_so(manager):
    result = run(Img2ImgRequest(**{**BASE, "num_inference_steps": 10}, image=source(), strength=0.8), manager,
                 on_step=lambda e: e.step >= 2)
    assert (result.steps_done, result.total_steps, result.interrupted) == (2, 8, True)
    assert result.status().startswith("Stopped after 2 of 8 steps")


@pytest.mark.parametrize("overrides, message", [
    (dict(image=None), r"Image \(image\) is missing: upload an image"),
    (dict(image="not an image"), r"Image \(image\) must be an image, got str"),
    (dict(image=source(), strength=1.5), r"Denoising strength \(strength\) must be a finite number in \[0, 1\]"),
    (dict(image=source(), strength=0.1), r"Denoising strength \(strength\) × Steps must leave at least one step"),
    (dict(image=source(), resize_mode="zoom"), r"Resize mode \(resize_mode\) must be one of \['just resize'"),
    (dict(image=source(), model="tiny-inpaint"), r"Model \(model\) must be a base model that can do img2img"),
])
def test_bad_requests_are_refused_before_anything_runs(manager, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(Img2ImgRequest(**{**BASE, **overrides}), manager)
    assert manager.loaded() == []
