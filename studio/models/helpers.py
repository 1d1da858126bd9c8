"""Small helper models a job may need besides its pipeline: the depth estimator (lens blur, depth
hints; ~25M parameters) and line-art annotators (~4M). Each is loaded once per manager, on first
use inside a held lease, and kept outside the LRU (an exclusive job frees them)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from studio.models.device import choose_dtype

log = logging.getLogger(__name__)


def depth_estimator(manager: Any) -> tuple[str, Any]:
    """(registry name, transformers depth-estimation pipeline)."""
    from studio.models.depth import load_depth_estimator

    return helper_model(manager, "depth", manager.registry.depth(manager.depth_model), load_depth_estimator,
                        "The lens blur and depth hints need this depth model; without it, set depth of field "
                        "to 'prompt words only' and give depth hints ready-made.")


def annotator(manager: Any, kind: str) -> tuple[str, Any]:
    """(registry name, annotator) of `kind` ("lineart")."""
    from studio.models.annotators import load_lineart

    entry = manager.registry.annotator(kind, (manager.annotator_models or {}).get(kind))
    return helper_model(manager, kind, entry, load_lineart,
                        f"Drawing {kind} hints needs this annotator; without it, give a ready {kind} image as the "
                        "hint instead.")


def helper_model(manager: Any, key: str, entry: Any, load: Callable[[str, str, str], Any], why: str) -> tuple[str, Any]:
    """(name, model) of helper `key`, loaded with `load(source, device, dtype)` unless held already."""
    from studio.models.manager import ModelUnavailable

    held = manager._helpers.get(key)
    if held is None or held[0] != entry.name:
        try:
            source = manager.source(entry)
        except ModelUnavailable as exc:
            raise ModelUnavailable(f"{exc}. {why}") from exc
        info = manager.device_info
        held = manager._helpers[key] = (entry.name, load(source, info.torch_device, choose_dtype(info)))
        log.info("loaded %s model %s", key, entry.name)
    return held
