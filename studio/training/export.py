"""The finished LoRA as one safetensors file in diffusers' layout ("unet.<module>.lora_A.weight"),
loadable with `pipe.load_lora_weights`, carrying what Studio needs to list it in its metadata."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from studio.training.config import TrainConfig

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers reads the LoRA's rank and alpha


def lora_metadata(config: TrainConfig, steps: int, target_modules: list[str]) -> dict[str, str]:
    """safetensors metadata: all values strings, as the format requires."""
    adapter = {"unet.r": config.rank, "unet.lora_alpha": config.lora_alpha, "unet.target_modules": target_modules}
    return {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(adapter, sort_keys=True),
        "studio_lora": "1",
        "trigger_word": config.trigger_word,
        "base_model": config.model,
        "rank": str(config.rank),
        "alpha": str(config.lora_alpha),
        "steps": str(steps),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def save_lora_file(unet: Any, path: Path, metadata: dict[str, str]) -> Path:
    """Write the UNet's LoRA (peft adapter "default") to `path`, renamed into place when complete."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    weights = {f"unet.{k}": v.detach().cpu().float().contiguous() for k, v in layers.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(weights, tmp, metadata=metadata)
    tmp.replace(path)
    return path
