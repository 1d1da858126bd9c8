"""DreamBooth-LoRA training of an SDXL or SD1.5 model (Ruiz et al. 2023, DreamBooth; Hu et al. 2021,
LoRA): `train(config, images, captions, models, run_dir)`. A LoRA on the UNet's attention and,
optionally, on the text encoders; optionally prior preservation with class images made by the
base model; preview samples every N steps when the caller asks for them.

Exact resume rests on three facts: batch k's examples and mirrors come from (seed, k) alone
(`data.batch_at`, `data.class_batch_at`), its noise and timesteps from (seed, k) alone
(`objective.draw_noise`), and a checkpoint holds every other piece of state (LoRA weights,
optimizer and gradient-scaler state, scheduler, RNG, step). Class images and previews draw from
generators of their own and leave all of that untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio.buckets import buckets
from studio.models.device import choose_dtype
from studio.models.loading import load_from_pretrained
from studio.results import StepCallback, StepEvent
from studio.training import objective, optim
from studio.training.adapters import (
    TEXT_ENCODERS,
    add_loras,
    enable_gradient_checkpointing,
    lora_parameters,
    targets,
)
from studio.training.cache import (
    encode_captions,
    encode_latents,
    encode_tokens,
    tokenize_captions,
)
from studio.training.checkpoints import save_checkpoint
from studio.training.config import TrainConfig
from studio.training.data import (
    Example,
    batch_at,
    class_batch_at,
    nearest_bucket,
    prepare_examples,
)
from studio.training.export import lora_metadata, save_lora_file
from studio.training.prior import class_settings, ensure_class_images
from studio.training.resume import check_resumable, restore, snapshot
from studio.training.samples import move, render_samples

# Called with (step, images) after the steps that render previews.
SampleCallback = Callable[[int, list[Image.Image]], None]


@dataclass
class TrainResult:
    state: str  # "done" or "stopped"
    steps_done: int
    losses: list[float]  # per optimizer step, from step 1 (resumed runs included)
    lora_path: Path | None  # the finished LoRA file; None when stopped


@dataclass
class Run:
    """What the training loop works on (built once, after the caches)."""

    config: TrainConfig
    pipe: Any  # the whole pipeline: its UNet (and text encoders) train, the rest renders previews
    modules: dict[str, Any]  # component -> module with a trainable LoRA, "unet" first
    noise_scheduler: Any  # DDPM with the model's training betas and prediction type
    examples: list[Example]
    latents: dict  # (index, mirrored) -> (C, h, w)
    class_examples: list[Example]  # prior preservation's class images; empty when it is off
    class_latents: dict  # as `latents`, for the class images
    texts: dict | None  # caption -> TextEmbedding, when the text encoders are frozen
    tokens: dict | None  # caption -> token ids per tokenizer, when they are trained
    device: str
    autocast: str | None = None  # "bfloat16" or "float16" on CUDA; None: no autocast
    scaler: Any = None  # torch.amp.GradScaler for fp16; None otherwise
    optimizer: Any = None
    lr_scheduler: Any = None
    losses: list[float] = field(default_factory=list)


def train(config: TrainConfig, images: Sequence[Any], captions: Sequence[str | None] | None, models: Any,
          run_dir: str | Path, on_step: StepCallback | None = None, resume: bool = True, *,
          on_sample: SampleCallback | None = None) -> TrainResult:
    """Train a LoRA on `images` (PIL, 3-30) of one subject; checkpoints and the final
    <run_dir>/<name>.safetensors go to `run_dir`. With `resume`, a complete checkpoint there is
    continued from. `on_step` hears each step's loss (and, at step 0, the class images being made);
    returning True stops after a checkpoint. `on_sample`, if given, gets `num_samples` preview
    images every `sample_every` steps and at the last step."""
    # 0. Check inputs
    config.validate(len(images))
    entry = models.registry.get(config.model)
    if entry.role != "base" or entry.lora is not None:
        raise ValueError(f"model must be a full base checkpoint, got {config.model!r} (role {entry.role!r}"
                         f"{', a LoRA' if entry.lora is not None else ''})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resumable(config, run_dir)
    report = on_step or (lambda event: None)
    total = config.max_train_steps

    # 1. Take the whole GPU: every loaded model is freed for the run's duration
    on_wait = lambda message: report(StepEvent(0, total, message=message))
    with models.lease(None, exclusive=True, purpose="training a LoRA", on_wait=on_wait):
        # 2. Load the base model through the one loading path, in the run's precision
        device = models.device_info.device
        autocast = optim.autocast_dtype(config.mixed_precision, device, _bf16_supported(device))
        dtype = optim.weight_dtype(autocast, device, choose_dtype(models.device_info))
        pipe = load_from_pretrained(models.source(entry), entry, dtype)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        sizes = bucket_sizes(config, entry)
        square, guidance = nearest_bucket((1, 1), sizes), entry.defaults.guidance_scale
        # 3. Prior preservation's class images, made by the base model before any LoRA (or read back)
        class_images: list = []
        if config.prior_preservation:
            settings = class_settings(config, square, guidance)
            class_images = ensure_class_images(pipe, config, settings, run_dir, report)
            if class_images is None:
                return TrainResult("stopped", 0, [], None)
        # 4. The photos cut to buckets, latents and text embeddings cached, the LoRAs added
        examples = prepare_examples(images, captions, config.prompt, sizes)
        class_examples = prepare_examples(class_images, None, config.class_prompt, sizes)
        run = _prepare(config, pipe, examples, device, class_examples, autocast)
        # 5. Continue from the newest complete checkpoint, if asked and there is one
        start = restore(run, run_dir) if resume else 0
        # 6. The loop: one optimizer step per iteration, a checkpoint every `checkpoint_every`
        for step in range(start + 1, total + 1):
            loss = _optimizer_step(run, step - 1)
            run.losses.append(loss)
            # a Stop at the last step changes nothing: the run is complete and its LoRA is written
            stop = bool(report(StepEvent(step, total, message=f"loss {loss:.4f}"))) and step < total
            if stop or step % config.checkpoint_every == 0:
                save_checkpoint(run_dir, step, snapshot(run, step))
            if stop:
                return TrainResult("stopped", step, list(run.losses), None)
            if on_sample is not None and (step % config.sample_every == 0 or step == total):
                on_sample(step, render_samples(pipe, run.modules, _idle(run), device, config, square, guidance))
        # 7. The finished LoRA, with its trigger word and base model in the file's metadata
        path = save_lora_file(run.modules, run_dir / f"{config.name}.safetensors",
                              lora_metadata(config, total, {c: targets(c) for c in run.modules}))
        return TrainResult("done", total, list(run.losses), path)


def bucket_sizes(config: TrainConfig, entry: Any) -> list[tuple[int, int]]:
    """The aspect buckets at the run's area (default: the model's default width x height)."""
    area = config.resolution or entry.defaults.width * entry.defaults.height
    return sorted(set(buckets(area, multiple=64, min_side=entry.size_range[0]).values()))


def _prepare(config: TrainConfig, pipe: Any, examples: list[Example], device: str,
             class_examples: Sequence[Example] = (), autocast: str | None = None) -> Run:
    """Freeze the model, cache what stays frozen, add the LoRAs and build the optimizer."""
    import torch
    from diffusers import DDPMScheduler

    for name in ("unet", "vae", *TEXT_ENCODERS):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    flips = [False, True] if config.random_flip else [False]
    latents = encode_latents(pipe.vae, examples, flips, device)
    class_latents = encode_latents(pipe.vae, class_examples, flips, device) if class_examples else {}
    # Trained text encoders change every step: then only their token ids can be cached.
    captions = [e.caption for e in [*examples, *class_examples]]
    texts = None if config.train_text_encoder else encode_captions(pipe, captions, device)
    tokens = tokenize_captions(pipe, captions) if config.train_text_encoder else None
    modules = add_loras(pipe, config)
    if device == "cuda" and config.gradient_checkpointing:
        enable_gradient_checkpointing(modules)  # trades compute for activation memory (SDXL at 1 MP)
    run = Run(config, pipe, modules, DDPMScheduler.from_config(pipe.scheduler.config), examples, latents,
              list(class_examples), class_latents, texts, tokens, device, autocast, optim.grad_scaler(autocast))
    params = lora_parameters(modules)
    run.optimizer = optim.build_optimizer(config, [p for n, p in params.items() if n.startswith("unet.")],
                                          [p for n, p in params.items() if not n.startswith("unet.")])
    # Constant LR, no warmup (as diffusers' DreamBooth-LoRA scripts): LoRA's B starts at zero, so
    # the first steps start from the unchanged base model and cannot wreck it.
    run.lr_scheduler = torch.optim.lr_scheduler.ConstantLR(run.optimizer, factor=1.0, total_iters=0)
    if device == "cuda":
        move(pipe, _idle(run), "cpu")  # parked in CPU memory; previews bring them back for a moment
    return run


def _idle(run: Run) -> list[str]:
    """The components training no longer needs: the VAE and the frozen text encoders."""
    return ["vae", *(n for n in TEXT_ENCODERS if getattr(run.pipe, n, None) is not None and n not in run.modules)]


def _bf16_supported(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


def _optimizer_step(run: Run, k: int) -> float:
    """Optimizer step k (0-based): `gradient_accumulation` batches, one update; returns the mean loss."""
    accumulation = run.config.gradient_accumulation
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(accumulation):
        loss = _batch_loss(run, k * accumulation + micro)
        optim.backward(loss / accumulation, run.scaler)
        total += loss.item() / accumulation
    optim.step(run.optimizer, run.scaler)
    run.lr_scheduler.step()
    return total


def _batch_loss(run: Run, batch_index: int) -> Any:
    """The loss of batch `batch_index` (its examples, noise and timesteps fixed by the seed). With
    prior preservation, DreamBooth's loss (Ruiz et al. 2023, eq. 2): the photos' loss plus
    `prior_loss_weight` times that of as many class images."""
    c = run.config
    batch = batch_at(c.seed, batch_index, [e.bucket for e in run.examples], c.batch_size, c.random_flip)
    loss = _part_loss(run, batch, run.examples, run.latents, batch_index, stream=0)
    if not run.class_examples:
        return loss
    # The class images are square and the photos' bucket may not be, so the two parts go through
    # the UNet one after the other instead of concatenated (as in diffusers' script, where all
    # images share one size); each part's min-SNR-weighted MSE is the same either way.
    chosen = class_batch_at(c.seed, batch_index, len(batch), c.batch_size, len(run.class_examples), c.random_flip)
    prior = _part_loss(run, chosen, run.class_examples, run.class_latents, batch_index, stream=1)
    return loss + c.prior_loss_weight * prior


def _part_loss(run: Run, batch: list[tuple[int, bool]], examples: list[Example], latents: dict,
               batch_index: int, stream: int) -> Any:
    """The (min-SNR weighted) denoising loss of `batch`, examples of `examples`; noise from `stream`."""
    c, scheduler, unet = run.config, run.noise_scheduler, run.modules["unet"]
    with optim.autocast(run.autocast):
        hidden, pooled = _text_conditioning(run, [examples[i].caption for i, _ in batch])
        x0, added = objective.assemble_batch(batch, examples, latents, pooled)  # x0: (B, C, h, w)
        noise, t = objective.draw_noise(c.seed, batch_index, x0.shape, scheduler.config.num_train_timesteps, stream)
        noise, t = noise.to(run.device), t.to(run.device)
        noisy = scheduler.add_noise(x0, noise, t)  # sqrt(a_bar) x0 + sqrt(1 - a_bar) noise
        dtype = unet.dtype
        added_cast = {k: v.to(dtype) for k, v in added.items()} if added else None
        prediction = unet(noisy.to(dtype), t, encoder_hidden_states=hidden.to(dtype),
                          added_cond_kwargs=added_cast).sample  # (B, C, h, w)
    target = objective.training_target(scheduler, x0, noise, t)
    weight = None
    if c.min_snr_gamma is not None:
        snr = objective.signal_to_noise(scheduler.alphas_cumprod.to(run.device), t)
        weight = objective.min_snr_weight(snr, c.min_snr_gamma, scheduler.config.prediction_type)
    return objective.diffusion_loss(prediction, target, weight)


def _text_conditioning(run: Run, captions: list[str]) -> tuple[Any, Any | None]:
    """(hidden states (B, 77, D), SDXL's pooled text (B, P) or None): cached, or from the text
    encoders as they are now when they are trained."""
    import torch

    if run.tokens is None:
        return objective.stack_texts(captions, run.texts)
    ids = [torch.stack(per_encoder) for per_encoder in zip(*(run.tokens[c] for c in captions))]  # (B, 77) each
    return encode_tokens(run.pipe, ids, run.device)
