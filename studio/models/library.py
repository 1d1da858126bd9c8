"""LoRAs from the user's library (studio.loras.LoraLibrary) in a lease: checked against the model
they would run on before the job waits in line, from file headers and config files only (nothing
is loaded, nothing unpickled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.loras import LoraLibrary, check_lora, read_safetensors_header
from studio.models.lease import LIBRARY_PREFIX
from studio.models.registry import ModelEntry, Registry


def check_library_lora(registry: Registry, lora_dir: Path | None, name: str, base: ModelEntry,
                       width: int | None) -> str:
    """Check that library LoRA `name` exists and fits model `base`, whose cross-attention width is
    `width` (None: unknown, so only the file's soundness is checked); returns its adapter name.
    Raises ValueError saying what is wrong."""
    library = LoraLibrary(lora_dir) if lora_dir is not None else None
    path = library.path(name) if library is not None else None
    if path is None or not path.is_file():
        registry_loras = [m.name for m in registry.models if m.lora is not None and m.family == base.family]
        in_library = [e.name for e in library.list()] if library is not None else []
        where = f"in the LoRA library {in_library}" if library is not None else "(no LoRA library folder is set)"
        raise ValueError(f"unknown LoRA {name!r}; expected a registry LoRA for {base.name!r} {registry_loras} "
                         f"or one {where}")
    try:
        if width is None:  # the model's config is not on disk: check the file is sound, not its width
            read_safetensors_header(path)
        else:
            check_lora(path, width, base.family)
    except ValueError as exc:
        raise ValueError(f"LoRA {name!r} cannot be used with model {base.name!r}: {exc}") from None
    return LIBRARY_PREFIX + name


def cross_attention_dim(model_folder: Path | None) -> int | None:
    """The width of a model's text conditioning, from `unet/config.json` in its folder (built-in
    model or Hugging Face cache); None when the config is not there or the width varies per block."""
    config = Path(model_folder) / "unet" / "config.json" if model_folder is not None else None
    if config is None or not config.is_file():
        return None
    width = json.loads(config.read_text())["cross_attention_dim"]
    widths = set(width) if isinstance(width, list) else {width}
    return widths.pop() if len(widths) == 1 else None


FAMILY_WIDTHS = {"sdxl": 2048, "sd15": 768}  # the text-conditioning width of each family's real models


def model_width(manager: Any, base: ModelEntry) -> int:
    """The cross-attention width LoRAs for `base` must have: read from its UNet config when its files
    are here (a built-in model, or the Hub cache), else the family's (the real models' width)."""
    from studio.models.loading import cached_snapshot

    if base.lora is not None:  # a LoRA-based model (a draft): its LoRAs fit the model it sits on
        base = manager.registry.get(base.lora.base)
    folder = Path(manager.source(base)) if base.builtin else cached_snapshot(base)
    width = cross_attention_dim(folder) or FAMILY_WIDTHS.get(base.family)
    if width is None:
        raise ValueError(f"cannot tell which LoRAs fit {base.name!r}: its files are not here and its family "
                         f"{base.family!r} has no known width")
    return width
