"""The denoising objective of one training batch: noise, timesteps, target and the (min-SNR
weighted) MSE. Small pure functions on tensors; shapes in comments (B batch, C=4 latent channels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from studio.training.cache import TextEmbedding, time_ids
from studio.training.data import Example

# Stream 1 (the prior-preservation part of a batch) adds 2**63: seeds apart from stream 0's,
# which lie below 2**63. torch generators take seeds up to 2**64 - 1.
STREAM_OFFSET = 2**63


def batch_seed(seed: int, batch_index: int, stream: int = 0) -> int:
    """The seed of batch `batch_index`'s noise and timesteps: a function of (seed, batch) only, so
    a resumed run draws exactly what an uninterrupted one would, with no generator state stored."""
    return (seed * 2**32 + batch_index) % 2**63 + stream * STREAM_OFFSET


def draw_noise(seed: int, batch_index: int, shape: Sequence[int], num_train_timesteps: int,
               stream: int = 0) -> tuple[Any, Any]:
    """(noise (B, C, h, w), timesteps (B,)) for one batch; timesteps uniform in [0, T). Stream 0
    is the photos' part of the batch, stream 1 its class images' part."""
    import torch

    generator = torch.Generator().manual_seed(batch_seed(seed, batch_index, stream))
    noise = torch.randn(tuple(shape), generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    return noise, timesteps


def stack_texts(captions: Sequence[str], texts: dict[str, TextEmbedding]) -> tuple[Any, Any | None]:
    """Cached (hidden states (B, 77, D), pooled (B, P) or None) of `captions`."""
    import torch

    embeds = [texts[c] for c in captions]
    pooled = torch.stack([e.pooled for e in embeds]) if embeds[0].pooled is not None else None
    return torch.stack([e.hidden for e in embeds]), pooled


def assemble_batch(batch: Sequence[tuple[int, bool]], examples: Sequence[Example], latents: dict,
                   pooled: Any | None) -> tuple[Any, dict | None]:
    """(latents (B, C, h, w), SDXL's added_cond_kwargs (pooled text, micro-conditioning) or None)."""
    import torch

    x0 = torch.stack([latents[(i, flip)] for i, flip in batch])
    if pooled is None:
        return x0, None
    added = {"text_embeds": pooled,  # (B, P)
             "time_ids": torch.tensor([time_ids(examples[i]) for i, _ in batch], dtype=torch.float32,
                                      device=x0.device)}  # (B, 6)
    return x0, added


def signal_to_noise(alphas_cumprod: Any, timesteps: Any) -> Any:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), (B,)."""
    alpha_bar = alphas_cumprod[timesteps]
    return alpha_bar / (1 - alpha_bar)


def min_snr_weight(snr: Any, gamma: float, prediction_type: str) -> Any:
    """Loss weight per sample from Hang et al. 2023 (Min-SNR-gamma), (B,): min(SNR, gamma)/SNR for
    an epsilon target; for a v target the loss already carries SNR+1, hence min(SNR, gamma)/(SNR+1)."""
    import torch

    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(prediction: Any, target: Any, weight: Any | None) -> Any:
    """Mean squared error per sample, weighted when `weight` (B,) is given, averaged over the batch."""
    per_sample = ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
    return (per_sample * weight).mean() if weight is not None else per_sample.mean()


def training_target(noise_scheduler: Any, x0: Any, noise: Any, timesteps: Any) -> Any:
    """What the UNet learns to predict, by the model's prediction type: the noise, or v."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {kind!r}")
