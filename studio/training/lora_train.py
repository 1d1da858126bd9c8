"""DreamBooth-LoRA training of an SDXL or SD1.5 UNet's attention (Ruiz et al. 2023, DreamBooth;
Hu et al. 2021, LoRA): `train(config, images, captions, models, run_dir)`.

Exact resume rests on three facts: batch k's examples and mirrors come from (seed, k) alone
(`data.batch_at`), its noise and timesteps from (seed, k) alone (`objective.draw_noise`), and a
checkpoint holds every other piece of state (LoRA weights, AdamW moments, scheduler, RNG, step).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.buckets import buckets
from studio.models.device import choose_dtype
from studio.models.loading import load_from_pretrained
from studio.results import StepCallback, StepEvent
from studio.training import objective
from studio.training.cache import encode_captions, encode_latents
from studio.training.checkpoints import (
    CheckpointState,
    latest_checkpoint,
    load_checkpoint,
    remove_incomplete,
    save_checkpoint,
)
from studio.training.config import TrainConfig
from studio.training.data import Example, batch_at, prepare_examples
from studio.training.export import lora_metadata, save_lora_file

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection of the UNet
# Settings that may change between a run and its resume without changing its batches or weights.
RESUMABLE_CHANGES = ("max_train_steps", "checkpoint_every", "sample_every")


@dataclass
class TrainResult:
    state: str  # "done" or "stopped"
    steps_done: int
    losses: list[float]  # per optimizer step, from step 1 (resumed runs included)
    lora_path: Path | None  # the finished LoRA file; None when stopped


@dataclass
class _Run:
    """What the training loop works on (built once, after the caches)."""

    config: TrainConfig
    unet: Any
    noise_scheduler: Any  # DDPM with the model's training betas and prediction type
    examples: list[Example]
    latents: dict  # (index, mirrored) -> (C, h, w)
    texts: dict  # caption -> TextEmbedding
    device: str
    optimizer: Any = None
    lr_scheduler: Any = None
    losses: list[float] = field(default_factory=list)


def train(config: TrainConfig, images: Sequence[Any], captions: Sequence[str | None] | None, models: Any,
          run_dir: str | Path, on_step: StepCallback | None = None, resume: bool = True) -> TrainResult:
    """Train a LoRA on `images` (PIL, 3-30) of one subject; checkpoints and the final
    <run_dir>/<name>.safetensors go to `run_dir`. With `resume`, a complete checkpoint there is
    continued from. `on_step` hears each step's loss; returning True stops after a checkpoint."""
    # 0. Check inputs
    config.validate(len(images))
    entry = models.registry.get(config.model)
    if entry.role != "base" or entry.lora is not None:
        raise ValueError(f"model must be a full base checkpoint, got {config.model!r} (role {entry.role!r}"
                         f"{', a LoRA' if entry.lora is not None else ''})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = on_step or (lambda event: None)
    total = config.max_train_steps

    # 1. Take the whole GPU: every loaded model is freed for the run's duration
    on_wait = lambda message: report(StepEvent(0, total, message=message))
    with models.lease(None, exclusive=True, purpose="training a LoRA", on_wait=on_wait):
        # 2. Load the base model through the one loading path
        device = models.device_info.device
        pipe = load_from_pretrained(models.source(entry), entry, choose_dtype(models.device_info))
        pipe.to(device)
        # 3. The photos cut to buckets at the model's area, then latents and text embeddings cached
        examples = prepare_examples(images, captions, config.prompt, bucket_sizes(config, entry))
        run = _prepare(config, pipe, examples, device)
        del pipe  # the VAE and text encoders are done with; the run keeps the UNet only
        # 4. Continue from the newest complete checkpoint, if asked and there is one
        start = _restore(run, run_dir) if resume else 0
        # 5. The loop: one optimizer step per iteration, a checkpoint every `checkpoint_every`
        for step in range(start + 1, total + 1):
            loss = _optimizer_step(run, step - 1)
            run.losses.append(loss)
            # a Stop at the last step changes nothing: the run is complete and its LoRA is written
            stop = bool(report(StepEvent(step, total, message=f"loss {loss:.4f}"))) and step < total
            if stop or step % config.checkpoint_every == 0:
                save_checkpoint(run_dir, step, _snapshot(run, step))
            if stop:
                return TrainResult("stopped", step, list(run.losses), None)
        # 6. The finished LoRA, with its trigger word and base model in the file's metadata
        path = save_lora_file(run.unet, run_dir / f"{config.name}.safetensors",
                              lora_metadata(config, total, TARGET_MODULES))
        return TrainResult("done", total, list(run.losses), path)


def bucket_sizes(config: TrainConfig, entry: Any) -> list[tuple[int, int]]:
    """The aspect buckets at the run's area (default: the model's default width x height)."""
    area = config.resolution or entry.defaults.width * entry.defaults.height
    return sorted(set(buckets(area, multiple=64, min_side=entry.size_range[0]).values()))


def _prepare(config: TrainConfig, pipe: Any, examples: list[Example], device: str) -> _Run:
    """Freeze the model, cache what is frozen, add the LoRA and build the optimizer."""
    import torch
    from diffusers import DDPMScheduler

    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    flips = [False, True] if config.random_flip else [False]
    latents = encode_latents(pipe.vae, examples, flips, device)
    texts = encode_captions(pipe, [e.caption for e in examples], device)
    unet = _add_lora(pipe.unet, config, device)
    run = _Run(config, unet, DDPMScheduler.from_config(pipe.scheduler.config), examples, latents, texts, device)
    params = [p for p in unet.parameters() if p.requires_grad]
    run.optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    # Constant LR, no warmup (as diffusers' DreamBooth-LoRA scripts): LoRA's B starts at zero, so
    # the first steps start from the unchanged base model and cannot wreck it.
    run.lr_scheduler = torch.optim.lr_scheduler.ConstantLR(run.optimizer, factor=1.0, total_iters=0)
    return run


def _add_lora(unet: Any, config: TrainConfig, device: str) -> Any:
    """The UNet with a trainable LoRA on its attention projections, initialised from `config.seed`."""
    import torch
    from peft import LoraConfig

    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=TARGET_MODULES)
    with torch.random.fork_rng(devices=[]):  # LoRA's A is random: seed it without touching the caller's RNG
        torch.manual_seed(config.seed)
        unet.add_adapter(lora)
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable weights in fp32 even on an fp16 model: small updates survive
    if device == "cuda":
        unet.enable_gradient_checkpointing()  # trades compute for activation memory (SDXL at 1 MP)
    unet.train()
    return unet


def _optimizer_step(run: _Run, k: int) -> float:
    """Optimizer step k (0-based): `gradient_accumulation` batches, one update; returns the mean loss."""
    accumulation = run.config.gradient_accumulation
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(accumulation):
        loss = _batch_loss(run, k * accumulation + micro)
        (loss / accumulation).backward()
        total += loss.item() / accumulation
    run.optimizer.step()
    run.lr_scheduler.step()
    return total


def _batch_loss(run: _Run, batch_index: int) -> Any:
    """The loss of batch `batch_index` of the run (its examples, noise and timesteps fixed by the seed)."""
    import torch

    c = run.config
    buckets_ = [e.bucket for e in run.examples]
    batch = batch_at(c.seed, batch_index, buckets_, c.batch_size, c.random_flip)
    x0, hidden, added = objective.assemble_batch(batch, run.examples, run.latents, run.texts)  # x0: (B, C, h, w)
    scheduler = run.noise_scheduler
    noise, t = objective.draw_noise(c.seed, batch_index, x0.shape, scheduler.config.num_train_timesteps)
    noise, t = noise.to(run.device), t.to(run.device)
    noisy = scheduler.add_noise(x0, noise, t)  # sqrt(a_bar) x0 + sqrt(1 - a_bar) noise
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device == "cuda" else contextlib.nullcontext())
    dtype = run.unet.dtype
    with autocast:
        added_cast = {k: v.to(dtype) for k, v in added.items()} if added else None
        prediction = run.unet(noisy.to(dtype), t, encoder_hidden_states=hidden.to(dtype),
                              added_cond_kwargs=added_cast).sample  # (B, C, h, w)
    target = objective.training_target(scheduler, x0, noise, t)
    weight = None
    if c.min_snr_gamma is not None:
        snr = objective.signal_to_noise(scheduler.alphas_cumprod.to(run.device), t)
        weight = objective.min_snr_weight(snr, c.min_snr_gamma, scheduler.config.prediction_type)
    return objective.diffusion_loss(prediction, target, weight)


def _lora_params(unet: Any) -> dict[str, Any]:
    return {name: p for name, p in unet.named_parameters() if p.requires_grad}


def _config_record(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def _snapshot(run: _Run, step: int) -> CheckpointState:
    """Everything a resume needs besides what (seed, step) determines."""
    import torch

    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return CheckpointState(step, _lora_params(run.unet), run.optimizer.state_dict(), run.lr_scheduler.state_dict(),
                           rng, _config_record(run.config), list(run.losses))


def _restore(run: _Run, run_dir: Path) -> int:
    """Load the newest complete checkpoint into `run`; returns its step (0 when there is none)."""
    import torch

    remove_incomplete(run_dir)
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return 0
    state = load_checkpoint(folder)
    _check_same_run(state.config, _config_record(run.config), folder)
    if state.step > run.config.max_train_steps:
        raise ValueError(f"max_train_steps must be at least the checkpoint's step {state.step}, "
                         f"got {run.config.max_train_steps}")
    with torch.no_grad():
        for name, p in _lora_params(run.unet).items():
            p.copy_(state.lora[name])
    run.optimizer.load_state_dict(state.optimizer)
    run.lr_scheduler.load_state_dict(state.scheduler)
    torch.set_rng_state(state.rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [state.rng[k] for k in sorted(k for k in state.rng if k.startswith("cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    run.losses = list(state.losses)
    return state.step


def _check_same_run(saved: dict, current: dict, folder: Path) -> None:
    """A checkpoint continues only the run it came from: every setting that shapes the batches or
    the weights must match."""
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise ValueError(f"{folder} was written by a run with other settings ({', '.join(changed)}); "
                         f"resume=False or another run folder starts afresh")
