"""Images made during a run with the pipeline's own `__call__`: the class images of prior
preservation (base model, before the LoRA is added) and the preview samples every N steps (the
training UNet, LoRA active). Neither touches the training's random state: each image has its own
seeded generator, and torch's global generators are forked around the call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from studio.training.config import TrainConfig


def generate(pipe: Any, prompt: str, seeds: Sequence[int], size: tuple[int, int], steps: int,
             guidance_scale: float) -> list[Image.Image]:
    """One image of `prompt` per seed at `size` (width, height). CPU generators: the same seed gives
    the same starting noise on any device."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(prompt, num_images_per_prompt=len(seeds), generator=generators, width=size[0], height=size[1],
                    num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pil").images


def render_samples(pipe: Any, trained: dict[str, Any], idle: Sequence[str], device: str, config: TrainConfig,
                   size: tuple[int, int], guidance_scale: float) -> list[Image.Image]:
    """`config.num_samples` previews of `config.sample_prompt` with the LoRA as trained so far.

    Seeds seed, seed + 1, ... at every step, so successive previews differ only by training. The
    trained modules are switched to eval mode for the call and back to train mode after; on CUDA
    the `idle` components (VAE, frozen text encoders), parked in CPU memory during training, come
    to the GPU for the call only."""
    seeds = [config.seed + i for i in range(config.num_samples)]
    parked = list(idle) if device == "cuda" else []
    move(pipe, parked, device)
    for module in trained.values():
        module.eval()
    try:
        return generate(pipe, config.samples_prompt, seeds, size, config.sample_steps, guidance_scale)
    finally:
        for module in trained.values():
            module.train()
        move(pipe, parked, "cpu")


def move(pipe: Any, components: Sequence[str], device: str) -> None:
    """Move pipeline components to `device`; moved off the GPU, their memory is given back."""
    import torch

    for name in components:
        getattr(pipe, name).to(device)
    if components and device == "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
