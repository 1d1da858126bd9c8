"""Training checkpoints: one folder per step, written atomically, with no pickle anywhere.

<run>/checkpoint-<step>/ holds
  lora.safetensors       the trainable LoRA parameters, by their UNet parameter names
  optimizer.safetensors  the optimizer's tensors ("state.<param id>.<name>")
  optimizer.json         the rest of the optimizer's state_dict (param groups, non-tensor state)
  scheduler.json         the LR scheduler's state_dict (numbers only)
  rng.safetensors        torch's CPU generator state (uint8) and, when present, each CUDA device's
  state.json             step, the config, the loss history
  manifest.json          written last: its presence means the checkpoint is complete
The folder is written as checkpoint-<step>.tmp, every file fsynced, then renamed: a crash leaves
either a complete checkpoint or a .tmp folder that `latest_checkpoint` ignores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"


@dataclass
class CheckpointState:
    step: int  # optimizer steps done
    lora: dict[str, Any]  # UNet parameter name -> tensor
    optimizer: dict[str, Any]  # torch optimizer state_dict
    scheduler: dict[str, Any]  # torch LR scheduler state_dict
    rng: dict[str, Any]  # "torch_cpu" and "cuda_<i>" -> uint8 tensors
    config: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, Any], dict]:
    """An optimizer state_dict as (tensors for safetensors, everything else for JSON)."""
    import torch

    tensors, rest = {}, {}
    for pid, values in state_dict["state"].items():
        rest[str(pid)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                rest[str(pid)][name] = value
    return tensors, {"state": rest, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Any], meta: dict) -> dict:
    """The inverse of flatten_optimizer."""
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for key, tensor in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, step: int, state: CheckpointState) -> Path:
    """Write `state` as <run_dir>/checkpoint-<step>/ atomically; returns that folder."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final, tmp = run_dir / f"checkpoint-{step}", run_dir / f"checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crash at this very step
    tmp.mkdir(parents=True)
    opt_tensors, opt_rest = flatten_optimizer(state.optimizer)
    files = {
        "lora.safetensors": lambda p: save_file(_plain(state.lora), p),
        "optimizer.safetensors": lambda p: save_file(opt_tensors, p),
        "optimizer.json": lambda p: _write_json(p, opt_rest),
        "scheduler.json": lambda p: _write_json(p, state.scheduler),
        "rng.safetensors": lambda p: save_file(_plain(state.rng), p),
        "state.json": lambda p: _write_json(p, {"step": step, "config": state.config, "losses": state.losses}),
    }
    for name, write in files.items():
        write(tmp / name)
        _fsync(tmp / name)
    _write_json(tmp / MANIFEST, {"step": step, "files": sorted(files)})  # last: marks completeness
    _fsync(tmp / MANIFEST)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)  # an older copy of this step (a rerun)
    os.replace(tmp, final)
    _fsync(run_dir)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (manifest present, no .tmp suffix), or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := CHECKPOINT_NAME.match(p.name)) and (p / MANIFEST).is_file()]
    return max(found)[1] if found else None


def remove_incomplete(run_dir: str | Path) -> None:
    """Delete the .tmp folders a crash left behind."""
    for p in Path(run_dir).glob("checkpoint-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(folder: str | Path) -> CheckpointState:
    """Read a checkpoint written by save_checkpoint (safetensors and JSON only)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    optimizer = unflatten_optimizer(load_file(folder / "optimizer.safetensors"),
                                    json.loads((folder / "optimizer.json").read_text()))
    return CheckpointState(
        step=state["step"],
        lora=load_file(folder / "lora.safetensors"),
        optimizer=optimizer,
        scheduler=json.loads((folder / "scheduler.json").read_text()),
        rng=load_file(folder / "rng.safetensors"),
        config=state["config"],
        losses=state["losses"],
    )


def _plain(tensors: dict[str, Any]) -> dict[str, Any]:
    """CPU, contiguous, unshared copies: what safetensors accepts."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=False))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
