"""The finished LoRA as one safetensors file in diffusers' layout, as its DreamBooth-LoRA scripts
save it: "unet.<module>.lora.down.weight" and, with a text-encoder LoRA,
"text_encoder.<module>.lora_linear_layer.down.weight" (and "text_encoder_2." on SDXL), loadable
with `pipe.load_lora_weights`, carrying what Studio needs to list it in its metadata."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from studio.training.config import TrainConfig

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers reads the LoRA's rank and alpha


def lora_metadata(config: TrainConfig, steps: int, target_modules: dict[str, list[str]]) -> dict[str, str]:
    """safetensors metadata: all values strings, as the format requires. `target_modules` maps each
    trained component ("unet", "text_encoder", ...) to its LoRA's target modules."""
    adapter = {}
    for component, targets in target_modules.items():  # diffusers reads "<component>.<LoraConfig field>"
        adapter.update({f"{component}.r": config.rank, f"{component}.lora_alpha": config.lora_alpha,
                        f"{component}.target_modules": targets})
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


def save_lora_file(modules: dict[str, Any], path: Path, metadata: dict[str, str]) -> Path:
    """Write the LoRAs (peft adapter "default") of `modules` ({component: module}, e.g. "unet",
    "text_encoder") to `path`, each under its component's prefix, renamed into place when complete."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    weights = {}
    for component, module in modules.items():
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
        weights.update({f"{component}.{k}": v.detach().cpu().float().contiguous() for k, v in layers.items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(weights, tmp, metadata=metadata)
    tmp.replace(path)
    return path
