"""What training reads every step, computed once: VAE latents per (photo, mirrored) and text
embeddings per caption. The VAE and text encoders are frozen, so recomputing them each step
would only cost time. When the text encoders are trained (text-encoder LoRA) only their token
ids are cached, and `encode_tokens` runs them every step: the same function makes the cache, so
both paths give the same embeddings for the same weights."""

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
    """{caption: TextEmbedding} for each distinct caption, the text encoders frozen."""
    import torch

    embeddings = {}
    with torch.no_grad():
        for caption, ids in tokenize_captions(pipe, captions).items():
            hidden, pooled = encode_tokens(pipe, [i[None] for i in ids], device)
            embeddings[caption] = TextEmbedding(hidden[0].float(), None if pooled is None else pooled[0].float())
    return embeddings


def tokenize_captions(pipe: Any, captions: Sequence[str]) -> dict[str, tuple]:
    """{caption: one (77,) token-id tensor per tokenizer}, padded and truncated as diffusers'
    `encode_prompt` does (77 tokens: CLIP's context)."""
    tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
    return {caption: tuple(t(caption, padding="max_length", max_length=t.model_max_length, truncation=True,
                             return_tensors="pt").input_ids[0] for t in tokenizers)
            for caption in dict.fromkeys(captions)}  # each distinct caption once, in order


def encode_tokens(pipe: Any, ids: Sequence[Any], device: str) -> tuple[Any, Any | None]:
    """(hidden states (B, 77, D), SDXL's pooled embedding (B, P) or None) of token ids (one (B, 77)
    tensor per text encoder), as diffusers' `encode_prompt` computes them: SD1.5 reads the last
    layer (after the final norm); SDXL concatenates both encoders' penultimate layers and pools
    with the second encoder's projection. (Like `encode_prompt` we pass no attention mask: CLIP
    text encoders are trained without one.)"""
    import torch

    if not is_sdxl(pipe):
        return pipe.text_encoder(ids[0].to(device))[0], None
    hidden, pooled = [], None
    for encoder, tokens in zip((pipe.text_encoder, pipe.text_encoder_2), ids):
        out = encoder(tokens.to(device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds (B, P)
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def time_ids(example: Example) -> list[int]:
    """SDXL's micro-conditioning: original (h, w), crop (top, left), target (h, w) (SDXL paper, 2.2)."""
    w, h = example.bucket
    return [*example.original_size, *example.crop_top_left, h, w]


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None
