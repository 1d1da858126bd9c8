"""Settings inside PNGs: AUTOMATIC1111's `parameters` infotext and Studio's lossless JSON chunk.

Infotext (A1111 `modules/infotext_utils.py` format):

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.0, Seed: 42, Size: 1024x1024, Model: sdxl-base

Which request fields appear, under which key, follows their declaration (`Spec.infotext`);
width and height share "Size" as "WxH". Values holding a comma, colon or newline are written as
JSON strings, as A1111 does. The `studio` chunk holds the task and its full request as JSON, so
Studio restores its own images exactly; infotext is what other tools read and what Studio falls
back to for their images.
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image, PngImagePlugin

from studio.fields import specs
from studio.images import MAX_INPUT_PIXELS
from studio.loras import format_lora_list, lora_tags, parse_lora_tags
from studio.schedulers import SCHEDULERS
from studio.tasks import TASKS, task

STUDIO_CHUNK, A1111_CHUNK = "studio", "parameters"
CHUNK_VERSION = 2  # 2: the task is recorded (version 1 chunks are text-to-image)
MAX_CHUNK_CHARS = 1_000_000  # refuse absurd metadata instead of parsing it

# A1111 writes its settings in this order; keys it does not know follow.
A1111_ORDER = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "Denoising strength",
               "Batch size"]

# Keys A1111 writes only for one kind of job: they decide the task
TELLTALE = {"ControlNet 0": "controlnet", "Mask blur": "inpaint"}

# "key: value" items; a value is a JSON string or runs to the next comma (A1111's re_param).
_PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext_params(request: Any, seed: int, steps_done: int | None = None) -> dict[str, Any]:
    """The settings line's items for one image, in declaration order. A stopped run records the
    steps it really did (A1111 has no other key for them)."""
    params: dict[str, Any] = {}
    unused = getattr(request, "unused_fields", lambda: ())()  # settings this run did not use
    for name, spec in specs(type(request)).items():
        if spec.infotext is None or name in unused:
            continue
        value = getattr(request, name)
        if name == "seed":
            value = seed
        elif name == "num_inference_steps" and steps_done is not None:
            value = steps_done
        if spec.infotext in params:  # width and height: "WxH"
            params[spec.infotext] = f"{params[spec.infotext]}x{value}"
        else:
            params[spec.infotext] = value
    extras = getattr(request, "infotext_extras", None)  # e.g. the ControlNet extension's unit lines
    params.update(extras() if extras else {})
    ordered = sorted(params, key=lambda k: A1111_ORDER.index(k) if k in A1111_ORDER else len(A1111_ORDER))
    return {**{k: params[k] for k in ordered}, "Generator": "Studio"}


def infotext(request: Any, seed: int, steps_done: int | None = None) -> str:
    """A1111 `parameters` text for one image made with `request` and `seed`. LoRAs are written
    A1111's way, as <lora:name:weight> tags at the end of the prompt."""
    tags = ""
    if hasattr(request, "lora_stack"):
        request, stack = request.with_lora_stack()
        tags = lora_tags(stack)
    prompt, negative = request.styled_prompts()
    prompt = " ".join(p for p in (prompt, tags) if p)
    params = infotext_params(request, seed, steps_done)
    lines = [prompt, f"Negative prompt: {negative}" if negative else None,
             ", ".join(f"{k}: {_quote(v)}" for k, v in params.items())]
    return "\n".join(line for line in lines if line is not None)


def png_info(result: Any, index: int) -> PngImagePlugin.PngInfo:
    """Both chunks for image `index` of `result` (whose request is the request as run)."""
    seed = result.seeds[index]
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_CHUNK, infotext(result.request, seed, result.steps_done if result.interrupted else None))
    chunk = {"version": CHUNK_VERSION, "task": result.request.TASK, "request": result.request.record(),
             "batch_index": index, "seed": seed, "steps_done": result.steps_done,
             "interrupted": result.interrupted, "details": result.details.to_json()}
    info.add_text(STUDIO_CHUNK, json.dumps(chunk, ensure_ascii=False, allow_nan=False))
    return info


def _infotext_keys(task_name: str) -> dict[str, list[str]]:
    """A1111 key -> the task's fields written under it ("Size" -> [width, height])."""
    keys: dict[str, list[str]] = {}
    for name, spec in specs(task(task_name).request).items():
        if spec.infotext:
            keys.setdefault(spec.infotext, []).append(name)
    return keys


def parse_infotext(text: str) -> tuple[str, dict[str, Any]]:
    """(task, request fields) found in A1111 infotext: only what both tools share. The task is
    the first whose keys cover every key found ("Denoising strength" means image-to-image)."""
    lines = text.strip().split("\n")
    if not lines or "Steps:" not in lines[-1]:
        raise ValueError("parameters text has no settings line (expected 'Steps: …, Sampler: …' last)")
    params = {k: (json.loads(v) if v.startswith('"') else v.strip()) for k, v in _PARAM.findall(lines[-1])}
    body, marker = "\n".join(lines[:-1]), "Negative prompt: "
    prompt, negative = body, ""
    if body.startswith(marker):
        prompt, negative = "", body[len(marker):]
    elif f"\n{marker}" in body:
        prompt, negative = body.split(f"\n{marker}", 1)
    if any(k.startswith("Hires") for k in params):
        params.pop("Denoising strength", None)  # A1111's hires fix: a text-to-image setting Studio lacks
    known = set().union(*(_infotext_keys(t) for t in TASKS))
    found = {k for k in params if k in known}
    telltale = [t for key, t in TELLTALE.items() if key in params and t in TASKS]
    name = telltale[0] if telltale else next((t for t in TASKS if found <= set(_infotext_keys(t))), "txt2img")
    out: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    if "loras" in specs(task(name).request):
        out.update(_loras_from_prompt(prompt))
    extras = getattr(task(name).request, "parse_infotext_extras", None)
    out.update(extras(params) if extras else {})
    declared = specs(task(name).request)
    for key, names in _infotext_keys(name).items():
        if key in params:
            out.update(_parse_value(key, names, params, declared))
    return name, out


def _loras_from_prompt(prompt: str) -> dict[str, str]:
    """The prompt without its <lora:name:weight> tags, and the tags as the `loras` field."""
    try:
        rest, stack = parse_lora_tags(prompt)
    except ValueError:
        # A tag Studio cannot read (another tool's name syntax): the prompt keeps it as written,
        # and generating from it says what is wrong with it.
        return {}
    return {"prompt": rest, "loras": format_lora_list(stack)} if stack else {}


def _parse_value(key: str, names: list[str], params: dict[str, str], declared: dict[str, Any]) -> dict[str, Any]:
    value = params[key]
    if names == ["scheduler"]:  # A1111's sampler + schedule type; skipped when Studio has none
        scheduler = _scheduler_from_a1111(value, params.get("Schedule type", ""))
        return {"scheduler": scheduler} if scheduler else {}
    parts = value.split("x") if len(names) > 1 else [value]
    if len(parts) != len(names):
        raise ValueError(f"parameters text has a malformed value: {key}: {value!r}")
    out = {}
    for name, part in zip(names, parts):
        try:
            out[name] = {"int": int, "float": float}.get(declared[name].kind, str)(part)
        except ValueError:
            raise ValueError(f"parameters text has a malformed value: {key}: {value!r}") from None
    return out


def _scheduler_from_a1111(sampler: str, schedule: str) -> str | None:
    """Studio's sampler for A1111's "Sampler" (+ "Schedule type"); None when Studio has none.

    A1111 >= 1.9 writes "Sampler: DPM++ 2M, Schedule type: Karras"; older ones "DPM++ 2M Karras".
    """
    if schedule == "Karras" and f"{sampler} Karras" in SCHEDULERS:
        return f"{sampler} Karras"
    return sampler if sampler in SCHEDULERS else None


def read_png_settings(path: str, max_pixels: int = MAX_INPUT_PIXELS) -> tuple[str, dict[str, Any], str]:
    """(task, request fields, source) stored in a PNG; source is "studio" or "a1111"."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise ValueError(f"expected a PNG image, got {img.format}")
            if img.width * img.height > max_pixels:  # `.text` decodes every pixel (chunks may follow them)
                raise ValueError(f"the image is {img.width}×{img.height}; Studio reads settings from PNGs of at "
                                 f"most {max_pixels / 1e6:,.0f} megapixels")
            chunks = dict(getattr(img, "text", {}) or {})
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable PNG image: {exc}") from None
    for name in (STUDIO_CHUNK, A1111_CHUNK):
        if len(chunks.get(name, "")) > MAX_CHUNK_CHARS:
            raise ValueError(f"the {name!r} metadata is over {MAX_CHUNK_CHARS} characters")
    if STUDIO_CHUNK in chunks:
        return (*_parse_studio_chunk(chunks[STUDIO_CHUNK]), "studio")
    if A1111_CHUNK in chunks:
        return (*parse_infotext(chunks[A1111_CHUNK]), "a1111")
    raise ValueError("this PNG carries no generation settings (no 'studio' or 'parameters' text chunk)")


def _parse_studio_chunk(text: str) -> tuple[str, dict[str, Any]]:
    try:
        chunk = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"the 'studio' metadata is not valid JSON: {exc}") from None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("request"), dict):
        raise ValueError("the 'studio' metadata has no 'request' object")
    version = chunk.get("version", 0)
    if not isinstance(version, int) or version > CHUNK_VERSION:
        raise ValueError(f"the image was made by a newer Studio (metadata version {version!r}, "
                         f"this one reads {CHUNK_VERSION})")
    name = chunk.get("task", "txt2img")  # version 1 had text-to-image only
    if name not in TASKS:
        raise ValueError(f"the 'studio' metadata names an unknown task {name!r}; expected one of {list(TASKS)}")
    request = chunk["request"]
    recorded = {n for n, s in specs(task(name).request).items() if s.record}
    unknown = sorted(set(request) - recorded)
    if unknown:
        raise ValueError(f"the 'studio' metadata has unknown {name} request fields: {unknown}")
    return name, request


def _reject_constant(name: str):
    raise ValueError(f"JSON must not contain {name}")
