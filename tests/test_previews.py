"""Latent previews: the least-squares latent -> RGB map, its cache, and the preview images.

The tiny SDXL's random VAE keeps almost no colour in its latents (on held-out images the fitted
map's error is 1.01 × that of guessing the mean colour: R² ≈ 0), so the quality of the fit is
measured on ColourVAE, a VAE-like encoder whose latents do hold colour (pooled, mixed and bent,
as a trained VAE roughly does); the tiny VAE checks the plumbing and that the fit is the
least-squares optimum.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from studio.pipelines import previews
from studio.pipelines.previews import (colour_images, encode_latents, fit_latent_to_rgb, latent_to_rgb_map,
                                       preview_images)


class ColourVAE(torch.nn.Module):
    """encode(x).latent_dist.mean = bend(M · avgpool_8(x) + c): colour in 4 channels, non-linear."""

    def __init__(self, scaling_factor: float = 1.0, shift_factor: float | None = None, bend: float = 0.2):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.mix = torch.nn.Parameter(torch.randn(4, 3, generator=g))  # (C, 3)
        self.offset = torch.nn.Parameter(torch.randn(4, generator=g))
        self.bend = bend
        self.config = SimpleNamespace(block_out_channels=(8, 8, 8, 8), scaling_factor=scaling_factor,
                                      shift_factor=shift_factor)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def encode(self, x):
        z = torch.einsum("kc,bchw->bkhw", self.mix, F.avg_pool2d(x, 8)) + self.offset[:, None, None]
        z = z + self.bend * z * z.abs()  # a trained VAE is only roughly linear in colour
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=z))


@pytest.fixture(scope="module")
def tiny_vae():
    from studio.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl().vae


def pixels_and_colours(vae, images):
    """(P, C) latent pixels and (P, 3) their true mean colours."""
    z = encode_latents(vae, images)
    y = F.avg_pool2d(images, 8)
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), y.permute(0, 2, 3, 1).reshape(-1, 3)


def error_ratio(vae, weights, bias, images) -> float:
    """Mean squared colour error of the map over that of predicting the mean colour (1 − R²)."""
    z, y = pixels_and_colours(vae, images)
    return float(((z @ weights + bias - y) ** 2).mean() / ((y - y.mean(0)) ** 2).mean())


def random_map_like(weights, bias):
    g = torch.Generator().manual_seed(7)
    return torch.randn(weights.shape, generator=g) * weights.std(), bias


def test_map_shapes_on_the_tiny_sdxl_vae(tiny_vae):
    weights, bias = fit_latent_to_rgb(tiny_vae)
    assert weights.shape == (4, 3) and bias.shape == (3,)
    assert weights.dtype == bias.dtype == torch.float32
    assert torch.isfinite(weights).all() and torch.isfinite(bias).all()


def test_the_fit_is_the_least_squares_optimum(tiny_vae):
    weights, bias = fit_latent_to_rgb(tiny_vae)
    z, y = pixels_and_colours(tiny_vae, colour_images(previews.FIT_SAMPLES, previews.FIT_SIZE, seed=0))
    z1 = torch.cat([z, torch.ones(len(z), 1)], dim=1)

    def gradient(w, b):  # of the squared error: zero at the optimum (normal equations)
        return (z1.T @ (z @ w + b - y) / len(z)).abs().max().item()

    assert gradient(weights, bias) < 1e-5
    assert gradient(*random_map_like(weights, bias)) > 1e-3


def test_fitted_map_predicts_held_out_colours():
    vae = ColourVAE()
    weights, bias = fit_latent_to_rgb(vae)
    held_out = colour_images(32, 64, seed=123)  # other colours and fields than the fit saw
    fitted = error_ratio(vae, weights, bias, held_out)
    random = error_ratio(vae, *random_map_like(weights, bias), held_out)
    # Measured: fitted 0.0098 (R² 0.99), a random map of the same size 4.5.
    assert fitted < 0.05
    assert random > 0.5


def test_flat_colours_come_back_in_the_preview():
    vae = ColourVAE()
    weights, bias = fit_latent_to_rgb(vae)
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])  # in [0, 1]
    images = (colours * 2 - 1)[:, :, None, None].expand(4, 3, 64, 64)
    shown = preview_images(encode_latents(vae, images), weights, bias, max_side=64)
    got = torch.tensor([im.getpixel((32, 32)) for im in shown], dtype=torch.float32) / 255
    error = (got - colours).abs().max().item()
    mean_guess = (colours - colours.mean(0)).abs().max().item()  # the naive baseline: 0.625
    # Measured: 0.09 at most (the bend is not linear); a random map: 1.0.
    assert error < 0.15 < mean_guess


def test_shift_and_scale_change_the_map_as_the_formula_says():
    plain = fit_latent_to_rgb(ColourVAE())
    s, t = 0.13025, 0.5
    scaled = fit_latent_to_rgb(ColourVAE(scaling_factor=s, shift_factor=t))
    # z' = (z − t)·s, so z·W + b = z'·(W/s) + (b + t·Σ_c W_c): same predictions, other coefficients.
    assert torch.allclose(scaled[0], plain[0] / s, rtol=1e-3, atol=1e-4)
    assert torch.allclose(scaled[1], plain[1] + t * plain[0].sum(0), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(scaled[0], plain[0], atol=0.1)


def test_the_map_is_cached_per_vae(tiny_vae, monkeypatch):
    fits = []
    real_fit = previews.fit_latent_to_rgb
    monkeypatch.setattr(previews, "fit_latent_to_rgb", lambda vae: fits.append(vae) or real_fit(vae))
    monkeypatch.setattr(previews, "_maps", type(previews._maps)())
    first = latent_to_rgb_map(tiny_vae)
    assert latent_to_rgb_map(tiny_vae) is first and fits == [tiny_vae]
    other_vae = ColourVAE()
    other = latent_to_rgb_map(other_vae)
    assert fits == [tiny_vae, other_vae] and not torch.allclose(other[0], first[0])
    assert latent_to_rgb_map(tiny_vae) is first


def test_preview_images_for_a_batch_of_two(tiny_vae):
    weights, bias = latent_to_rgb_map(tiny_vae)
    latents = torch.randn(2, 4, 16, 12)  # a 128 × 96 px image's latents (portrait)
    shown = preview_images(latents, weights, bias)
    assert len(shown) == 2
    assert all(im.mode == "RGB" and im.size == (192, 256) for im in shown)
    assert preview_images(torch.randn(1, 4, 128, 168), weights, bias)[0].size == (256, 195)


def test_preview_maps_minus_one_to_one_onto_0_to_255():
    weights, bias = torch.eye(4, 3), torch.zeros(3)  # channel k is colour k
    latents = torch.tensor([-1.0, 0.0, 1.0, 0.0])[None, :, None, None].expand(1, 4, 2, 2)
    assert preview_images(latents * 3, weights, bias, max_side=4)[0].getpixel((1, 1)) == (0, 128, 255)
    assert preview_images(latents, weights, bias, max_side=4)[0].getpixel((1, 1)) == (0, 128, 255)
