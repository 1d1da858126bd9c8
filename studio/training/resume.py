"""What a checkpoint holds of a training run, and how a run continues from one: the LoRA weights
of every trained component, the optimizer's, LR scheduler's and gradient scaler's states, torch's
RNG states and the losses so far. What (seed, step) determines (batches, noise) is not stored."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from studio.training.adapters import lora_parameters
from studio.training.checkpoints import (
    CheckpointState,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    remove_incomplete,
)
from studio.training.config import TrainConfig

if TYPE_CHECKING:
    from studio.training.lora_train import Run

# Settings that may change between a run and its resume without changing its batches or weights
# (gradient checkpointing recomputes the same activations, it does not change them).
RESUMABLE_CHANGES = ("max_train_steps", "checkpoint_every", "sample_every", "num_samples", "sample_prompt",
                     "sample_steps", "gradient_checkpointing")


def config_record(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def snapshot(run: Run, step: int) -> CheckpointState:
    """Everything a resume needs besides what (seed, step) determines."""
    import torch

    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return CheckpointState(step, lora_parameters(run.modules), run.optimizer.state_dict(),
                           run.lr_scheduler.state_dict(), rng, config_record(run.config), list(run.losses),
                           run.scaler.state_dict() if run.scaler is not None else None)


def restore(run: Run, run_dir: Path) -> int:
    """Load the newest complete checkpoint into `run`; returns its step (0 when there is none)."""
    import torch

    remove_incomplete(run_dir)
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return 0
    state = load_checkpoint(folder)
    check_same_run(state.config, config_record(run.config), folder)
    if state.step > run.config.max_train_steps:
        raise ValueError(f"max_train_steps must be at least the checkpoint's step {state.step}, "
                         f"got {run.config.max_train_steps}")
    params = lora_parameters(run.modules)
    if params.keys() != state.lora.keys():
        raise ValueError(f"{folder} holds other LoRA weights ({len(state.lora)}) than this run trains "
                         f"({len(params)}); resume=False or another run folder starts afresh")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state.lora[name])
    run.optimizer.load_state_dict(state.optimizer)
    run.lr_scheduler.load_state_dict(state.scheduler)
    if run.scaler is not None and state.scaler is not None:
        run.scaler.load_state_dict(state.scaler)
    torch.set_rng_state(state.rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [state.rng[k] for k in sorted((k for k in state.rng if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    run.losses = list(state.losses)
    return state.step


def check_resumable(config: TrainConfig, run_dir: Path) -> None:
    """Refuse, before any GPU work (class images included), to continue a checkpoint in `run_dir`
    that another run's settings wrote."""
    folder = latest_checkpoint(run_dir)
    if folder is not None:
        check_same_run(load_config(folder), config_record(config), folder)


def check_same_run(saved: dict, current: dict, folder: Path) -> None:
    """A checkpoint continues only the run it came from: every setting that shapes the batches or
    the weights must match. A setting the checkpoint lacks (it predates the setting) had its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k])
    if changed:
        raise ValueError(f"{folder} was written by a run with other settings ({', '.join(changed)}); "
                         f"resume=False or another run folder starts afresh")
