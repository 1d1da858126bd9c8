"""The model registry: model families, which models users can pick, where they come from, defaults.

It is data (`presets/models.json`) validated by pydantic; unknown keys and bad values are errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from studio.schedulers import check_scheduler_name

DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "presets" / "models.json"
BUILTIN_PREFIX = "builtin:"
Task = Literal["txt2img", "img2img", "inpaint"]
ControlType = Literal["depth", "canny", "lineart", "tile", "inpaint"]  # what a ControlNet's hint image shows
LEASABLE_ROLES = ("base", "inpaint")  # roles a job can lease as its model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FamilyVram(_Strict):
    """Free VRAM (GB) the family needs in fp16, weights plus a full-size decode."""

    full: float = Field(gt=0)  # to run entirely on the GPU
    model_offload: float = Field(gt=0)  # with whole-model CPU offload; below it, layer by layer

    @model_validator(mode="after")
    def _ordered(self):
        if self.model_offload > self.full:
            raise ValueError(f"vram_gb.model_offload ({self.model_offload}) must not exceed vram_gb.full ({self.full})")
        return self


class FamilyWeights(_Strict):
    """Size (GB) of a checkpoint's fp16 weights, to plan memory before anything is downloaded."""

    base: float = Field(gt=0)  # a full pipeline (also used for inpainting checkpoints)
    controlnet: float = Field(gt=0)


class Family(_Strict):
    """What an architecture (SDXL, SD 1.5) supports and needs; every model names its family."""

    label: str
    tasks: list[Task] = Field(min_length=1)
    min_size: int = Field(ge=64, multiple_of=8)  # image side limits in pixels
    max_size: int = Field(le=4096, multiple_of=8)
    native_area: int = Field(gt=0)  # the pixel count it was trained at; size buckets aim for it
    vram_gb: FamilyVram
    weights_gb: FamilyWeights
    micro_conditioning: bool  # SDXL's size and crop conditioning (original_size, target_size, ...)

    @model_validator(mode="after")
    def _sizes(self):
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        return self


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
    """A LoRA file: a distilled model (SDXL-Lightning, LCM-LoRA) or a stackable style. It is loaded
    as an adapter on an already-loaded model of its family, never as a second full model."""

    base: str  # registry name of the base model it was trained on
    weight_name: str = "pytorch_lora_weights.safetensors"  # the file inside the repo
    scale: float = Field(1.0, ge=0.0, le=2.0)  # its weight when it is leased as the model


class _Downloadable(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    label: str
    repo_id: str  # a Hub repo id, or builtin:<tiny model>

    @property
    def builtin(self) -> str | None:
        """The tiny model kind for built-in entries, else None."""
        return self.repo_id[len(BUILTIN_PREFIX):] if self.repo_id.startswith(BUILTIN_PREFIX) else None


class ModelEntry(_Downloadable):
    family: str  # a key of the registry's `families`
    # base: a full model (or, with `lora`, a distilled model on one); inpaint: an inpainting
    # checkpoint; controlnet and lora: added to a base per job; vae: a replacement VAE
    role: Literal["base", "inpaint", "controlnet", "lora", "vae"]
    variant: str | None = None  # weight variant used in half precision ("fp16")
    vae: str | None = None  # registry name of a VAE to use in half precision
    min_size: int | None = None  # overrides the family's limits (tiny models work at 64 px)
    max_size: int | None = None
    defaults: ModelDefaults = ModelDefaults()
    lora: LoraSource | None = None  # set: repo_id holds a LoRA applied on lora.base
    draft: str | None = None  # the fast model live previews use (None: this model itself)
    # ControlNets only: the hint images it understands. A ControlNet-Union model (`union`) is one
    # model for several types, the type chosen per call by its model card's mode index (`control_modes`).
    control_types: list[ControlType] | None = Field(None, min_length=1)
    union: bool = False
    control_modes: dict[ControlType, int] | None = None  # control type -> `control_mode` index
    _family: Family | None = PrivateAttr(None)  # resolved by the Registry that holds this entry

    @property
    def size_range(self) -> tuple[int, int]:
        """(smallest, largest) image side in pixels: this model's override, else its family's."""
        if self._family is None:
            raise RuntimeError(f"model {self.name!r} was not validated in a Registry, so its family's sizes are unknown")
        return (self.min_size or self._family.min_size, self.max_size or self._family.max_size)

    @model_validator(mode="after")
    def _control(self):
        if self.role != "controlnet":
            if self.control_types is not None or self.union or self.control_modes is not None:
                raise ValueError(f"model {self.name!r}: only ControlNets (role 'controlnet') may have control_types, "
                                 f"union or control_modes, not role {self.role!r}")
            return self
        if self.control_types is None:
            raise ValueError(f"ControlNet {self.name!r} needs control_types (some of {list(get_args(ControlType))})")
        if len(set(self.control_types)) != len(self.control_types):
            raise ValueError(f"ControlNet {self.name!r}: control_types must not repeat, got {self.control_types}")
        if self.union != (self.control_modes is not None):
            raise ValueError(f"ControlNet {self.name!r}: a union model (union: true) needs control_modes, and only "
                             f"a union model may have them; got union={self.union} and control_modes={self.control_modes}")
        if self.control_modes is not None:
            if set(self.control_modes) != set(self.control_types):
                raise ValueError(f"ControlNet {self.name!r}: control_modes must map exactly the control_types "
                                 f"{sorted(self.control_types)}, got {sorted(self.control_modes)}")
            if any(mode < 0 for mode in self.control_modes.values()):
                raise ValueError(f"ControlNet {self.name!r}: control_modes must be indexes >= 0, got {self.control_modes}")
        return self


class DepthEntry(_Downloadable):
    """A metric depth-estimation model (transformers), for the lens blur."""

    role: Literal["depth"] = "depth"


class AnnotatorEntry(_Downloadable):
    """A learned detector that draws a ControlNet hint from a photo (controlnet-aux's lineart)."""

    role: Literal["annotator"] = "annotator"
    kind: Literal["lineart"]


class Registry(_Strict):
    schema_version: Literal[1]
    default: str
    families: dict[str, Family]
    models: list[ModelEntry]
    depth_models: list[DepthEntry] = []  # the first is the default
    annotators: list[AnnotatorEntry] = []  # the first of each kind is its default

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.name for m in [*self.models, *self.depth_models, *self.annotators]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique, repeated: {duplicates}")
        for m in self.models:
            if m.family not in self.families:
                raise ValueError(f"model {m.name!r}: family {m.family!r} must be one of {sorted(self.families)}")
            m._family = self.families[m.family]  # so that entry.size_range needs no registry
        if self.get(self.default).role != "base":
            raise ValueError(f"default model must have role 'base', {self.default!r} does not")
        for m in self.models:
            self._check_links(m)
        return self

    def _check_links(self, m: ModelEntry) -> None:
        """The names an entry refers to exist and have the right role and family."""
        if m.vae is not None and self.get(m.vae).role != "vae":
            raise ValueError(f"model {m.name!r}: vae {m.vae!r} must name an entry with role 'vae'")
        if m.role == "lora" and m.lora is None:
            raise ValueError(f"model {m.name!r}: role 'lora' needs a `lora` source")
        if m.lora is not None and m.role not in ("base", "lora"):
            raise ValueError(f"model {m.name!r}: only base and lora entries may have a `lora` source, not role {m.role!r}")
        if m.lora is not None:
            base = self.get(m.lora.base)
            if base.role != "base" or base.lora is not None or base.family != m.family:
                raise ValueError(f"model {m.name!r}: lora.base {m.lora.base!r} must be a full base model of family {m.family!r}")
        if m.draft is not None and self.get(m.draft).role != "base":
            raise ValueError(f"model {m.name!r}: draft {m.draft!r} must name a base model")

    def get(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise ValueError(f"unknown model {name!r}; expected one of {[m.name for m in self.models]}")

    def family(self, name: str) -> Family:
        if name not in self.families:
            raise ValueError(f"unknown model family {name!r}; expected one of {sorted(self.families)}")
        return self.families[name]

    def tasks(self, entry: ModelEntry) -> list[str]:
        """The tasks a job can lease `entry` for: its family's, and an inpainting checkpoint only inpaints."""
        tasks = self.family(entry.family).tasks
        if entry.role == "base":
            return list(tasks)
        return ["inpaint"] if entry.role == "inpaint" and "inpaint" in tasks else []

    def names(self, role: str = "base", task: str | None = None) -> list[str]:
        """Names of the models with `role`, and when `task` is given, only those that can do it."""
        return [m.name for m in self.models if m.role == role and (task is None or task in self.tasks(m))]

    def controlnets(self, family: str, control_type: str | None = None) -> list[ModelEntry]:
        """The ControlNets for `family` that understand `control_type` (any type when None):
        single-condition ones first, then union models, each in file order."""
        self.family(family)
        fits = [m for m in self.models if m.role == "controlnet" and m.family == family
                and (control_type is None or control_type in m.control_types)]
        return [m for m in fits if not m.union] + [m for m in fits if m.union]

    def depth(self, name: str | None = None) -> DepthEntry:
        """Depth model `name`, or the default one."""
        for m in self.depth_models:
            if name is None or m.name == name:
                return m
        raise ValueError(f"unknown depth model {name!r}; expected one of {[m.name for m in self.depth_models]}")

    def annotator(self, kind: str, name: str | None = None) -> AnnotatorEntry:
        """Annotator `name`, which must be of `kind`, or the first one of `kind`."""
        of_kind = [a for a in self.annotators if a.kind == kind]
        for a in of_kind:
            if name is None or a.name == name:
                return a
        raise ValueError(f"unknown {kind} annotator {name!r}; expected one of {[a.name for a in of_kind]}")


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> Registry:
    """Read and validate a registry file; raises ValueError with the offending field."""
    text = Path(path).read_text(encoding="utf-8")
    return Registry.model_validate(json.loads(text))
