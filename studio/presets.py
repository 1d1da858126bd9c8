"""Presets users share: a versioned, strictly validated JSON format, stored as files or in a link.

A preset belongs to one task (`"task"`, text-to-image when absent) and holds that task's recorded
request fields in sections that follow the field groups: the model at the top level, "style",
the task's own section ("txt2img", "img2img") and shared ones such as "camera". The schema of
each task's presets is generated from its request declaration (studio/fields.py), so a field's
range is written once. Validation is strict: unknown keys, wrong types ("20" or true for an
integer), NaN/Infinity, out-of-range values, oversized or non-UTF-8 files and newer schema
versions are errors that name the problem; nothing is coerced.

null means: for the prompts and the model, keep what the user has; for steps, guidance, sampler
and size, the model's own default; for camera controls, off.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from studio.fields import Spec, defaults, section_of, specs
from studio.tasks import TASKS, task

SCHEMA_VERSION = 2  # 2: presets of any task ("task"); version 1 files are text-to-image presets
MAX_PRESET_BYTES = 1_000_000
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "presets"
NOT_PRESETS = {"models.json", "styles.json"}  # the model registry and styles share the shipped folder
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class PresetBase(_Strict):
    schema_version: Literal[1, 2]
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)
    author: str = Field("", max_length=200)

    def settings(self) -> dict[str, Any]:
        """The request fields the preset fills, by field name (None: see the module docstring)."""
        request_type = task(self.task).request
        out = {}
        for name, spec in specs(request_type).items():
            if spec.record:
                section = section_of(request_type, name)
                holder = self if section == "" else getattr(self, section)
                value = getattr(holder, spec.key or name)
                out[name] = tuple(value) if isinstance(value, list) else value
        return out


def _annotation(spec: Spec) -> Any:
    """The pydantic type of a declared field (its range, length, choices)."""
    if spec.kind == "int":
        base = Annotated[int, Field(ge=spec.lo, le=spec.hi, multiple_of=spec.multiple_of)]
    elif spec.kind == "float":
        base = Annotated[float, Field(ge=spec.lo, le=spec.hi)]
    elif spec.kind == "bool":
        base = bool
    elif spec.kind == "choice":
        base = Literal[spec.choices]
    elif spec.kind == "pair":
        side = Annotated[int, Field(ge=spec.lo, le=spec.hi)]
        base = tuple[side, side]
    else:
        base = Annotated[str, Field(max_length=spec.hi, pattern=spec.pattern)]
    return base | None if spec.optional or spec.from_model or spec.keep_if_null else base


@functools.cache
def preset_model(task_name: str) -> type[PresetBase]:
    """The preset schema of a task, generated from its request declaration."""
    request_type = task(task_name).request
    declared = defaults(request_type)
    sections: dict[str, dict[str, Any]] = {"": {}}
    for name, spec in specs(request_type).items():
        if not spec.record:
            continue
        default = None if spec.from_model or spec.keep_if_null else declared[name]
        sections.setdefault(section_of(request_type, name), {})[spec.key or name] = (_annotation(spec), default)
    top = sections.pop("")
    for section, fields in sections.items():
        model = create_model(f"{task_name}_{section}", __base__=_Strict, **fields)
        top[section] = (model, model())
    return create_model(f"{task_name}_preset", __base__=PresetBase, task=(Literal[task_name], task_name), **top)


def preset_from_request(request: Any, name: str, description: str = "", author: str = "",
                        include_prompts: bool = True) -> PresetBase:
    """The preset that restores `request` (validated like any preset)."""
    request_type = type(request)
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "task": request_type.TASK, "name": name,
                           "description": description, "author": author}
    for field_name, spec in specs(request_type).items():
        if not spec.record:
            continue
        value = getattr(request, field_name)  # pairs stay tuples: strict validation of a dict wants them
        if not include_prompts and field_name in ("prompt", "negative_prompt"):
            value = None
        section = section_of(request_type, field_name)
        (doc if section == "" else doc.setdefault(section, {}))[spec.key or field_name] = value
    return parse_preset(doc)


def _reject_constant(name: str):
    raise ValueError(f"NaN and Infinity are not allowed in a preset, found {name}")


def _load_json(data: bytes | str) -> tuple[Any, str]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_PRESET_BYTES:
        raise ValueError(f"a preset must be at most {MAX_PRESET_BYTES} bytes, got {len(raw)}")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant), text
    except UnicodeDecodeError as exc:
        raise ValueError(f"a preset must be UTF-8 text: {exc}") from None
    except RecursionError:
        raise ValueError("a preset must not be nested this deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"a preset must be JSON: {exc}") from None


def parse_preset(data: bytes | str | dict, registry: Any = None) -> PresetBase:
    """Validate a preset from file bytes, JSON text or a dict; raise ValueError saying what is wrong."""
    text = None
    if isinstance(data, (bytes, str)):
        data, text = _load_json(data)
    if not isinstance(data, dict):
        raise ValueError(f"a preset must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ValueError(f"this preset needs schema_version {version}; this Studio reads up to "
                         f"{SCHEMA_VERSION}: update Studio to use it")
    task_name = data.get("task", "txt2img")
    if not isinstance(task_name, str) or task_name not in TASKS:  # a list is not even hashable
        raise ValueError(f"invalid preset: task must be one of {list(TASKS)}, got {task_name!r:.80}")
    model = preset_model(task_name)
    try:
        # JSON text is validated as JSON (strict mode then takes arrays for pairs); dicts as Python.
        preset = model.model_validate(data) if text is None else model.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None
    if registry is not None:
        check_preset(preset, registry)
    return preset


def _describe(exc: ValidationError) -> str:
    problems = [f"{'.'.join(map(str, e['loc'])) or 'preset'}: {e['msg']} (got {e.get('input')!r:.80})"
                for e in exc.errors()[:5]]
    return "invalid preset: " + "; ".join(problems)


def merge_settings(request_type: type, current: dict[str, Any], settings: dict[str, Any],
                   registry: Any) -> dict[str, Any]:
    """`current` request values with a preset's (or a PNG's) `settings` applied, nulls resolved."""
    every = specs(request_type)
    unknown = sorted(set(settings) - set(every))
    if unknown:
        raise ValueError(f"{unknown} are not {request_type.TASK} settings")
    merged = dict(current)
    model_defaults = registry.get(settings.get("model") or current["model"]).defaults
    for name, value in settings.items():
        if value is None and every[name].keep_if_null:
            continue  # the user's own prompt and model stay
        if value is None and every[name].from_model:
            value = getattr(model_defaults, name)
        merged[name] = value
    return merged


def preset_request(preset: PresetBase, registry: Any, prompt: str = "", negative_prompt: str = "") -> Any:
    """The request a preset makes on its own (over its model's defaults; null prompts take the
    given ones). Not validated; an input image is not part of it."""
    request_type = task(preset.task).request
    current = {**defaults(request_type), "model": preset.model or registry.default, "prompt": prompt,
               "negative_prompt": negative_prompt}
    return request_type(**merge_settings(request_type, current, preset.settings(), registry))


def check_preset(preset: PresetBase, registry: Any) -> None:
    """The preset's model and settings must suit this registry (sizes within the family's range)."""
    preset_request(preset, registry).validate(registry, inputs=False)


def preset_json(preset: PresetBase) -> str:
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


def save_preset(preset: PresetBase, folder: Path) -> Path:
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


def load_preset(path: Path, registry: Any = None) -> PresetBase:
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise ValueError(f"a preset must be at most {MAX_PRESET_BYTES} bytes, got {path.stat().st_size}")
    return parse_preset(path.read_bytes(), registry)


def share_token(preset: PresetBase) -> str:
    """A compact URL-safe token for a share link (?preset=<token>): zlib-compressed JSON."""
    raw = json.dumps(preset.model_dump(), separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def preset_from_token(token: str, registry: Any = None) -> PresetBase:
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
