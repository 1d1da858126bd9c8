"""What every pipeline returns, and the one step-callback contract they all accept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepEvent:
    step: int  # denoising steps done so far, 1-based
    total: int  # steps planned


# Called after every denoising step; returning True stops the run at that step (the images made
# so far are still returned, marked as interrupted). Progress bars and Stop buttons both use it.
StepCallback = Callable[[StepEvent], "bool | None"]


@dataclass
class Result:
    images: list[Any]  # PIL images
    seed: int  # seed of the first image; image i used seed + i
    metadata: dict[str, Any] = field(default_factory=dict)
    originals: list[Any] = field(default_factory=list)  # the images before a post-effect (e.g. lens blur)
