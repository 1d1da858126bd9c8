"""How a run's numbers are updated: the optimizer (AdamW or Prodigy) over the LoRA parameters, and
on CUDA the mixed precision (autocast in bf16 or fp16, fp16 with a gradient scaler)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from studio.training.config import TrainConfig


def autocast_dtype(mixed_precision: str, device: str, bf16_supported: bool) -> str | None:
    """The dtype the forward pass runs in under autocast, or None for no autocast.

    Only CUDA autocasts: on CPU bf16 matmuls are slower than fp32 and fp16 ones barely exist, and
    MPS keeps what it did before (an fp16 model, fp32 LoRA weights). "auto" takes bf16 where the
    GPU has it (Ampere and later): fp32's range, so no loss scaling; else fp16."""
    if device != "cuda" or mixed_precision == "no":
        return None
    if mixed_precision == "auto":
        return "bfloat16" if bf16_supported else "float16"
    return {"bf16": "bfloat16", "fp16": "float16"}[mixed_precision]


def weight_dtype(autocast: str | None, device: str, default: str) -> str:
    """The dtype the frozen model is loaded in: on CUDA the autocast dtype (half the memory of
    fp32), float32 without autocast; elsewhere `default` (the app's choice for that device)."""
    if device != "cuda":
        return default
    return autocast or "float32"


def autocast(dtype: str | None) -> Any:
    """The context the forward pass runs in."""
    import torch

    return torch.autocast("cuda", dtype=getattr(torch, dtype)) if dtype else contextlib.nullcontext()


def grad_scaler(dtype: str | None) -> Any | None:
    """fp16's small range underflows small gradients to zero; the scaler multiplies the loss
    before the backward pass and divides the gradients after (skipping steps that overflowed).
    bf16 and fp32 need none."""
    import torch

    return torch.amp.GradScaler("cuda") if dtype == "float16" else None


def backward(loss: Any, scaler: Any | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def step(optimizer: Any, scaler: Any | None) -> None:
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)  # unscales the gradients; skips the step if any is inf or nan
    scaler.update()


def build_optimizer(config: TrainConfig, unet_params: Sequence[Any], text_params: Sequence[Any]) -> Any:
    """AdamW or Prodigy over the UNet's LoRA parameters and, when trained, the text encoders'
    (a second parameter group)."""
    import torch

    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        # Prodigy estimates one step size for all groups and refuses groups with different rates,
        # so the text encoders share `learning_rate`, as in diffusers' scripts. The other settings
        # are the ones diffusers' DreamBooth scripts use with Prodigy: warm-up safeguard and bias
        # correction (both advised by Prodigy's authors for diffusion), weight decay 0.01.
        groups = [{"params": list(unet_params)}] + ([{"params": list(text_params)}] if text_params else [])
        return Prodigy(groups, lr=config.learning_rate, weight_decay=0.01, safeguard_warmup=True,
                       use_bias_correction=True)
    groups = [{"params": list(unet_params), "lr": config.learning_rate}]
    if text_params:
        groups.append({"params": list(text_params), "lr": config.text_encoder_lr})
    return torch.optim.AdamW(groups, lr=config.learning_rate)
