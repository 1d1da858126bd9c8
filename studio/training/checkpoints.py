"""Training checkpoints: one folder per step, written atomically, with no pickle anywhere.

<run>/checkpoint-<step>/ holds
  lora.safetensors       the trainable LoRA parameters, as "<component>.<parameter name>"
                         ("unet.down_blocks...", "text_encoder.encoder.layers...")
  optimizer.safetensors  the optimizer's tensors ("state.<param id>.<name>")
  optimizer.json         the rest of the optimizer's state_dict (param groups, non-tensor state:
                         AdamW's hyperparameters, Prodigy's step-size estimate d and its sums)
  scheduler.json         the LR scheduler's state_dict (numbers only)
  scaler.json            fp16 runs only: the gradient scaler's state_dict (scale, growth tracker)
  rng.safetensors        torch's CPU generator state (uint8) and, when present, each CUDA device's
  state.json             step, the config, the loss history
  manifest.json          written last: its presence means the checkpoint is complete
JSON has no infinity or nan (Prodigy's growth_rate is inf by default), so such floats are written
as {"float": "inf"} and read back as floats.
The folder is written as checkpoint-<step>.tmp, every file fsynced, then renamed: a crash leaves
either a complete checkpoint or a .tmp folder that `latest_checkpoint` ignores.
"""

from __future__ import annotations

import json
import math
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
    scaler: dict[str, Any] | None = None  # torch.amp.GradScaler state_dict (fp16 runs); None: no scaler


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
    if state.scaler is not None:
        files["scaler.json"] = lambda p: _write_json(p, state.scaler)
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
    state = _read_json(folder / "state.json")
    optimizer = unflatten_optimizer(load_file(folder / "optimizer.safetensors"), _read_json(folder / "optimizer.json"))
    scaler = folder / "scaler.json"
    return CheckpointState(
        step=state["step"],
        lora=load_file(folder / "lora.safetensors"),
        optimizer=optimizer,
        scheduler=_read_json(folder / "scheduler.json"),
        rng=load_file(folder / "rng.safetensors"),
        config=state["config"],
        losses=state["losses"],
        scaler=_read_json(scaler) if scaler.is_file() else None,
    )


def load_config(folder: str | Path) -> dict[str, Any]:
    """The settings of the run that wrote checkpoint `folder` (its state.json only)."""
    return _read_json(Path(folder) / "state.json")["config"]


def _plain(tensors: dict[str, Any]) -> dict[str, Any]:
    """CPU, contiguous, unshared copies: what safetensors accepts."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_encode_floats(data), indent=1, allow_nan=False))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(), object_hook=_decode_float)


def _encode_floats(value: Any) -> Any:
    """`value` with every inf, -inf or nan float replaced by {"float": "inf"} (or "-inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, dict):
        return {k: _encode_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_floats(v) for v in value]
    return value


def _decode_float(obj: dict) -> Any:
    return float(obj["float"]) if obj.keys() == {"float"} else obj


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
