"""Cheap previews of latents while an image denoises: a linear map from latent channels to RGB.

Why. Decoding latents with the VAE at every step costs about as much as a denoising step, so
A1111 and ComfyUI show approximate previews made by a per-pixel linear map instead. We do not
use anyone's published coefficients: the map is fitted to the model's own VAE the first time
it is needed, so any VAE works (SD1.5, SDXL, a fine-tuned VAE, our tiny test VAE).

Fit (`fit_latent_to_rgb`), on N smooth random colour images x in [-1, 1] (flat colours and
bilinearly enlarged 4 × 4 colour fields, so each latent pixel covers one colour):

    z = (E(x) − shift) · scale        (N, C, h, w) the latents as the UNet sees them (diffusers:
                                       latents = (latent_dist.mean − shift_factor) · scaling_factor)
    y = avgpool_f(x)                  (N, 3, h, w) the image at latent resolution, f = 2^(levels−1)
    [W; b] = argmin Σ ‖z·W + b − y‖²  (C + 1, 3) ordinary least squares over all latent pixels

Preview (`preview_images`): rgb = z·W + b per latent pixel, pixel = clamp(127.5·(rgb + 1), 0, 255),
enlarged to `max_side` on the long side.

Limits. Each latent pixel becomes one colour, so a preview is as blurry as an 8× smaller image,
and the VAE decoder is non-linear, so colours are approximate and textures missing; a tiny
learned decoder (TAESD) would be sharper, at the cost of a second model. The fit is only as good
as the VAE's latents are linear in colour: trained VAEs are close to it, while a randomly
initialised VAE (our tests' tiny models) keeps almost no colour in its latents, so its map is
near the mean colour, like its images are noise. Noisy latents (early steps) preview as noise.
The map is cached per VAE object; weights loaded into the same object in place are not noticed.
"""

from __future__ import annotations

import weakref
from typing import Any

FIT_SAMPLES = 32  # images in the fit: 32 × (64/8)² = 2048 latent pixels for C + 1 unknowns
FIT_SIZE = 64  # pixels per side; small so the fit costs one short VAE encode
COARSE = 4  # the random colour fields are COARSE × COARSE colours, bilinearly enlarged

# vae module -> (weights, bias); entries go when the VAE is garbage-collected.
_maps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel: each encoder level after the first halves the size (8 for SD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def colour_images(samples: int, size: int, seed: int) -> Any:
    """(samples, 3, size, size) in [-1, 1]: the first half flat colours, the rest smooth fields."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    flat = samples // 2
    colours = torch.rand(flat, 3, 1, 1, generator=g) * 2 - 1
    fields = torch.rand(samples - flat, 3, COARSE, COARSE, generator=g) * 2 - 1
    fields = F.interpolate(fields, size=(size, size), mode="bilinear", align_corners=False)
    return torch.cat([colours.expand(flat, 3, size, size), fields])


def encode_latents(vae: Any, images: Any) -> Any:
    """(N, C, h, w) float32 latents of `images` ([-1, 1]) scaled as the UNet sees them."""
    import torch

    with torch.no_grad():
        mean = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None)  # SD3 and Flux VAEs have one; SD/SDXL None
    if shift is not None:
        mean = mean - shift
    return mean * vae.config.scaling_factor


def fit_latent_to_rgb(vae: Any, samples: int = FIT_SAMPLES, size: int = FIT_SIZE, seed: int = 0):
    """(weights (C, 3), bias (3,)) float32 CPU tensors: the least-squares map latents -> RGB in
    [-1, 1] for this VAE (the fit in the module docstring)."""
    import torch
    import torch.nn.functional as F

    factor = vae_scale_factor(vae)
    if size % factor:
        raise ValueError(f"size must be a multiple of the VAE's scale factor {factor}, got {size}")
    images = colour_images(samples, size, seed)  # (N, 3, size, size)
    latents = encode_latents(vae, images).cpu()  # (N, C, h, w)
    if not torch.isfinite(latents).all():
        raise ValueError(f"the VAE gave non-finite latents in {vae.dtype}; fit it in float32")
    targets = F.avg_pool2d(images, factor)  # (N, 3, h, w): each latent pixel's mean colour
    channels = latents.shape[1]
    z = latents.permute(0, 2, 3, 1).reshape(-1, channels)  # (P, C), one row per latent pixel
    y = targets.permute(0, 2, 3, 1).reshape(-1, 3)  # (P, 3)
    z1 = torch.cat([z, torch.ones(len(z), 1)], dim=1)  # (P, C + 1): a column of ones for the bias
    solution = torch.linalg.lstsq(z1, y).solution  # (C + 1, 3)
    return solution[:channels].contiguous(), solution[channels].contiguous()


def latent_to_rgb_map(vae: Any):
    """fit_latent_to_rgb(vae), computed once per VAE object."""
    if vae not in _maps:
        _maps[vae] = fit_latent_to_rgb(vae)
    return _maps[vae]


def preview_images(latents: Any, weights: Any, bias: Any, max_side: int = 256) -> list:
    """One RGB PIL image per batch item of `latents` (B, C, h, w), long side `max_side`."""
    import torch
    from PIL import Image

    z = latents.detach().float()
    rgb = torch.einsum("bchw,ck->bkhw", z, weights.to(z.device)) + bias.to(z.device)[:, None, None]
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)  # [-1, 1] -> [0, 255]
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, h, w, 3)
    h, w = pixels.shape[1:3]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Bilinear: smooth colour regions, no 8 × 8 blocks.
    return [Image.fromarray(p).resize(size, Image.Resampling.BILINEAR) for p in pixels]
