"""Presets users share: a versioned, strictly validated JSON format, stored as files or in a link.

A preset names a model, a style, the text-to-image settings and the camera (later issues add
ControlNet, LoRA, upscaling and panorama sections). Validation is strict: unknown keys, wrong
types ("20" or true for an integer), NaN/Infinity, out-of-range values, oversized or non-UTF-8
files and newer schema versions are errors that name the problem; nothing is coerced.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.models.registry import Registry
from studio.pipelines.txt2img import CAMERA_FIELDS, MAX_SEED, Txt2ImgRequest
from studio.schedulers import check_scheduler_name

SCHEMA_VERSION = 1
MAX_PRESET_BYTES = 1_000_000
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "presets"
NOT_PRESETS = {"models.json"}  # the model registry shares the shipped folder
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Style(_Strict):
    name: str = Field("", max_length=64)
    prompt: str = Field("{prompt}", max_length=4000)  # the user's prompt goes where {prompt} is
    negative_prompt: str = Field("", max_length=4000)

    @field_validator("prompt")
    @classmethod
    def _has_placeholder(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError(f"must contain the placeholder {{prompt}}, got {v!r}")
        return v


Size = Annotated[int, Field(ge=0, le=8192)]


class Txt2ImgSettings(_Strict):
    # null prompts leave the user's own prompts in place when the preset is applied
    prompt: str | None = Field(None, max_length=20000)
    negative_prompt: str | None = Field(None, max_length=20000)
    width: int = Field(ge=64, le=2048, multiple_of=8)
    height: int = Field(ge=64, le=2048, multiple_of=8)
    num_inference_steps: int = Field(ge=1, le=150)
    guidance_scale: float = Field(ge=0, le=30)
    scheduler: str
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    batch_size: int = Field(1, ge=1, le=8)
    # SDXL micro-conditioning: [height, width] / [top, left]; null = the image's own size
    original_size: tuple[Size, Size] | None = None
    crops_coords_top_left: tuple[Size, Size] = (0, 0)
    target_size: tuple[Size, Size] | None = None
    negative_original_size: tuple[Size, Size] | None = None
    negative_crops_coords_top_left: tuple[Size, Size] | None = None
    negative_target_size: tuple[Size, Size] | None = None
    micro_conditioning_power: float = Field(0.0, ge=0, le=8)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        check_scheduler_name(v)
        return v


class Camera(_Strict):
    """Camera controls (studio/camera.py); null turns a control off."""

    camera_pitch: float | None = Field(None, ge=-60, le=60)  # degrees, positive looking up
    focal_length_mm: float | None = Field(None, ge=8, le=800)  # full-frame equivalent
    aperture_f_number: float | None = Field(None, ge=0.7, le=64)
    focus_distance_m: float | None = Field(None, ge=0.1, le=10000)  # null: focus on the centre
    dof_mode: Literal["lens", "prompt"] = "lens"
    horizon_strength: float = Field(0.6, ge=0, le=2)


class Preset(_Strict):
    schema_version: Literal[1]
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)
    author: str = Field("", max_length=200)
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")  # a registry name, never a URL or path
    style: Style = Style()
    txt2img: Txt2ImgSettings
    camera: Camera = Camera()  # absent: every camera control off

    def settings(self) -> dict[str, Any]:
        """The widget values the preset fills, named as Txt2ImgRequest's fields (None: keep)."""
        return {**self.txt2img.model_dump(), **self.camera.model_dump(), "model": self.model,
                "style_prompt": self.style.prompt, "style_negative_prompt": self.style.negative_prompt}

    def to_request(self, prompt: str = "", negative_prompt: str = "") -> Txt2ImgRequest:
        """The request the preset makes; null prompts take the given ones."""
        s = self.settings()
        s["prompt"] = prompt if s["prompt"] is None else s["prompt"]
        s["negative_prompt"] = negative_prompt if s["negative_prompt"] is None else s["negative_prompt"]
        return Txt2ImgRequest(**s)


def preset_from_request(request: Txt2ImgRequest, name: str, description: str = "", author: str = "",
                        style_name: str = "", include_prompts: bool = True) -> Preset:
    """The preset that restores `request` (validated like any preset)."""
    fields = asdict(request)
    if not include_prompts:
        fields["prompt"] = fields["negative_prompt"] = None
    model, style_prompt, style_negative = fields.pop("model"), fields.pop("style_prompt"), fields.pop("style_negative_prompt")
    camera = {k: fields.pop(k) for k in CAMERA_FIELDS}
    return parse_preset({
        "schema_version": SCHEMA_VERSION, "name": name, "description": description, "author": author,
        "model": model, "style": {"name": style_name, "prompt": style_prompt, "negative_prompt": style_negative},
        "txt2img": fields, "camera": camera,
    })


def _reject_constant(name: str):
    raise ValueError(f"NaN and Infinity are not allowed in a preset, found {name}")


def parse_preset(data: bytes | str | dict, registry: Registry | None = None) -> Preset:
    """Validate a preset from file bytes, JSON text or a dict; raise ValueError saying what is wrong."""
    text = None
    if isinstance(data, (bytes, str)):
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if len(raw) > MAX_PRESET_BYTES:
            raise ValueError(f"a preset must be at most {MAX_PRESET_BYTES} bytes, got {len(raw)}")
        try:
            text = raw.decode("utf-8")
            data = json.loads(text, parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise ValueError(f"a preset must be UTF-8 text: {exc}") from None
        except RecursionError:
            raise ValueError("a preset must not be nested this deeply") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"a preset must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a preset must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ValueError(f"this preset needs schema_version {version}; this Studio reads up to "
                         f"{SCHEMA_VERSION}: update Studio to use it")
    try:
        # JSON text is validated as JSON (strict mode then takes arrays for pairs); dicts as Python.
        preset = Preset.model_validate(data) if text is None else Preset.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None
    if registry is not None:
        check_preset_model(preset, registry)
    return preset


def _describe(exc: ValidationError) -> str:
    problems = [f"{'.'.join(map(str, e['loc'])) or 'preset'}: {e['msg']} (got {e.get('input')!r:.80})"
                for e in exc.errors()[:5]]
    return "invalid preset: " + "; ".join(problems)


def check_preset_model(preset: Preset, registry: Registry) -> None:
    if preset.model not in registry.names("base"):
        raise ValueError(f"preset model must be one of {registry.names('base')}, got {preset.model!r}")
    preset.to_request().validate(registry.get(preset.model))  # family size limits


def preset_json(preset: Preset) -> str:
    return json.dumps(preset.model_dump(), indent=2, ensure_ascii=False) + "\n"


def preset_path(folder: Path, name: str) -> Path:
    """The file for preset `name` in `folder`; names never reach outside it."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        raise ValueError(f"preset name must be 1-64 letters, digits, spaces, '_', '-' or '.', not "
                         f"starting with a symbol and without '..', got {name!r}")
    path = (folder / f"{name}.json").resolve()
    if path.parent != folder.resolve():
        raise ValueError(f"preset name must stay inside the presets folder, got {name!r}")
    return path


def save_preset(preset: Preset, folder: Path) -> Path:
    """Write `preset` to folder/<name>.json atomically (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = preset_path(folder, preset.name)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(preset_json(preset))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_presets(*folders: Path) -> dict[str, Path]:
    """Preset name -> file, later folders (the user's) overriding earlier ones (shipped)."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
            if path.name not in NOT_PRESETS:
                found[path.stem] = path
    return found


def load_preset(path: Path, registry: Registry | None = None) -> Preset:
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise ValueError(f"a preset must be at most {MAX_PRESET_BYTES} bytes, got {path.stat().st_size}")
    return parse_preset(path.read_bytes(), registry)


def share_token(preset: Preset) -> str:
    """A compact URL-safe token for a share link (?preset=<token>): zlib-compressed JSON."""
    raw = json.dumps(preset.model_dump(), separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def preset_from_token(token: str, registry: Registry | None = None) -> Preset:
    if not isinstance(token, str) or len(token) > 16_000 or not re.fullmatch(r"[A-Za-z0-9_\-]+", token):
        raise ValueError("the share link's preset is not a valid token")
    try:
        decompressor = zlib.decompressobj()
        raw = decompressor.decompress(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), MAX_PRESET_BYTES)
        if decompressor.unconsumed_tail:
            raise ValueError("too large")
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"the share link's preset cannot be decoded: {exc}") from None
    return parse_preset(raw, registry)
