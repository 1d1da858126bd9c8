"""The model registry: which models users can pick, where they come from, and their defaults.

It is data (`presets/models.json`) validated by pydantic; unknown keys and bad values are errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from studio.schedulers import check_scheduler_name

DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "presets" / "models.json"
BUILTIN_PREFIX = "builtin:"

# Image size limits and the native area the buckets aim for, per family.
FAMILY_SIZES = {
    "sdxl": {"min_size": 256, "max_size": 2048, "native_area": 1024 * 1024},
    "sd15": {"min_size": 256, "max_size": 2048, "native_area": 512 * 512},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelDefaults(_Strict):
    num_inference_steps: int = Field(30, ge=1, le=150)
    guidance_scale: float = Field(6.0, ge=0.0, le=30.0)
    scheduler: str = "Euler"
    width: int = Field(1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(1024, ge=64, le=2048, multiple_of=8)

    @model_validator(mode="after")
    def _known_scheduler(self):
        check_scheduler_name(self.scheduler)
        return self


class LoraSource(_Strict):
    """A distilled model shipped as a LoRA (SDXL-Lightning, LCM-LoRA): loaded as an adapter on the
    already-loaded `base`, never as a second full model."""

    base: str  # registry name of the base model it was distilled from
    weight_name: str = "pytorch_lora_weights.safetensors"  # the file inside the repo
    scale: float = Field(1.0, ge=0.0, le=2.0)


class _Downloadable(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    label: str
    repo_id: str  # a Hub repo id, or builtin:<tiny model>

    @property
    def builtin(self) -> str | None:
        """The tiny model kind for built-in entries, else None."""
        return self.repo_id[len(BUILTIN_PREFIX):] if self.repo_id.startswith(BUILTIN_PREFIX) else None


class ModelEntry(_Downloadable):
    family: Literal["sdxl", "sd15"]
    role: Literal["base", "inpaint", "controlnet", "vae"]
    variant: str | None = None  # weight variant used in half precision ("fp16")
    vae: str | None = None  # registry name of a VAE to use in half precision
    min_size: int | None = None  # overrides the family's limits (tiny models work at 64 px)
    max_size: int | None = None
    defaults: ModelDefaults = ModelDefaults()
    lora: LoraSource | None = None  # set: repo_id holds a LoRA applied on lora.base
    draft: str | None = None  # the fast model live previews use (None: this model itself)

    @property
    def size_range(self) -> tuple[int, int]:
        family = FAMILY_SIZES[self.family]
        return (self.min_size or family["min_size"], self.max_size or family["max_size"])


class DepthEntry(_Downloadable):
    """A metric depth-estimation model (transformers), for the lens blur."""

    role: Literal["depth"] = "depth"


class Registry(_Strict):
    schema_version: Literal[1]
    default: str
    models: list[ModelEntry]
    depth_models: list[DepthEntry] = []  # the first is the default

    def depth(self, name: str | None = None) -> DepthEntry:
        """Depth model `name`, or the default one."""
        for m in self.depth_models:
            if name is None or m.name == name:
                return m
        raise ValueError(f"unknown depth model {name!r}; expected one of {[m.name for m in self.depth_models]}")

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.name for m in [*self.models, *self.depth_models]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique, repeated: {duplicates}")
        if self.get(self.default).role != "base":
            raise ValueError(f"default model must have role 'base', {self.default!r} does not")
        for m in self.models:
            if m.vae is not None and self.get(m.vae).role != "vae":
                raise ValueError(f"model {m.name!r}: vae {m.vae!r} must name an entry with role 'vae'")
            if m.lora is not None and (self.get(m.lora.base).role != "base" or self.get(m.lora.base).lora
                                       or self.get(m.lora.base).family != m.family):
                raise ValueError(f"model {m.name!r}: lora.base {m.lora.base!r} must be a full base model of family {m.family!r}")
            if m.draft is not None and self.get(m.draft).role != "base":
                raise ValueError(f"model {m.name!r}: draft {m.draft!r} must name a base model")
        return self

    def get(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise ValueError(f"unknown model {name!r}; expected one of {[m.name for m in self.models]}")

    def names(self, role: str = "base") -> list[str]:
        return [m.name for m in self.models if m.role == role]


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> Registry:
    """Read and validate a registry file; raises ValueError with the offending field."""
    text = Path(path).read_text(encoding="utf-8")
    return Registry.model_validate(json.loads(text))
