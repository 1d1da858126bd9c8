"""What training reads every step, computed once: VAE latents per (photo, mirrored) and text
embeddings per caption. The VAE and text encoders are frozen, so recomputing them each step
would only cost time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import ImageOps

from studio.training.data import Example


@dataclass(frozen=True)
class TextEmbedding:
    hidden: Any  # (77, D) tensor: the UNet's cross-attention input
    pooled: Any | None  # (P,) SDXL's pooled second-encoder output; None for SD1.5


def encode_latents(vae: Any, examples: Sequence[Example], flips: Sequence[bool], device: str) -> dict:
    """{(example index, mirrored): latent (4, h/8, w/8) float32 on `device`} for each flip in `flips`.

    We take the posterior's mean, not a sample: the VAE's posterior std is tiny next to the
    diffusion noise added later, and the mean makes the cache the same on every run and resume
    without a stored generator. The VAE runs in float32 (SDXL's VAE overflows in float16)."""
    import numpy as np
    import torch

    vae_dtype = vae.dtype
    if vae_dtype != torch.float32:
        vae.to(dtype=torch.float32)
    latents = {}
    with torch.no_grad():
        for i, example in enumerate(examples):
            for flip in flips:
                image = ImageOps.mirror(example.image) if flip else example.image
                pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (h, w, 3) in [-1, 1]
                pixels = pixels.permute(2, 0, 1)[None].to(device)  # (1, 3, h, w)
                mean = vae.encode(pixels).latent_dist.mean  # (1, 4, h/8, w/8)
                latents[(i, flip)] = (mean * vae.config.scaling_factor)[0].float()
    if vae_dtype != torch.float32:
        vae.to(dtype=vae_dtype)
    return latents


def encode_captions(pipe: Any, captions: Sequence[str], device: str) -> dict[str, TextEmbedding]:
    """{caption: TextEmbedding} through the pipeline's own `encode_prompt` (both encoders on SDXL)."""
    import torch

    embeddings = {}
    with torch.no_grad():
        for caption in dict.fromkeys(captions):  # each distinct caption once, in order
            out = pipe.encode_prompt(caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
            pooled = out[2][0].float() if is_sdxl(pipe) else None  # SDXL: (embeds, neg, pooled, neg pooled)
            embeddings[caption] = TextEmbedding(out[0][0].float(), pooled)
    return embeddings


def time_ids(example: Example) -> list[int]:
    """SDXL's micro-conditioning: original (h, w), crop (top, left), target (h, w) (SDXL paper, 2.2)."""
    w, h = example.bucket
    return [*example.original_size, *example.crop_top_left, h, w]


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None
