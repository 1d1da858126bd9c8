"""Settings inside PNGs: AUTOMATIC1111's `parameters` infotext and Studio's lossless JSON chunk.

Infotext (A1111 `modules/infotext_utils.py` format):

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.0, Seed: 42, Size: 1024x1024, Model: sdxl-base

Values holding a comma, colon or newline are written as JSON strings, as A1111 does. The `studio`
chunk holds the full request as JSON, so Studio restores its own images exactly; infotext is what
other tools read and what Studio falls back to for their images.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from PIL import Image, PngImagePlugin

from studio.pipelines.txt2img import REQUEST_FIELDS, Txt2ImgRequest
from studio.schedulers import SCHEDULERS

STUDIO_CHUNK, A1111_CHUNK = "studio", "parameters"
CHUNK_VERSION = 1
MAX_CHUNK_CHARS = 1_000_000  # refuse absurd metadata instead of parsing it

# "key: value" items; a value is a JSON string or runs to the next comma (A1111's re_param).
_PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(request: Txt2ImgRequest, seed: int) -> str:
    """A1111 `parameters` text for one image made with `request` and `seed`."""
    prompt, negative = request.styled_prompts()
    params = {
        "Steps": request.num_inference_steps,
        "Sampler": request.scheduler,
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": request.model,
        "Batch size": request.batch_size,
        "Generator": "Studio",
    }
    lines = [prompt, f"Negative prompt: {negative}" if negative else None,
             ", ".join(f"{k}: {_quote(v)}" for k, v in params.items())]
    return "\n".join(line for line in lines if line is not None)


def png_info(request: Txt2ImgRequest, seed: int, batch_index: int, details: dict) -> PngImagePlugin.PngInfo:
    """Both chunks for one image; `request` is the request as run (its seed resolved)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_CHUNK, infotext(request, seed))
    chunk = {"version": CHUNK_VERSION, "task": "txt2img", "request": asdict(request),
             "batch_index": batch_index, "seed": seed, "details": details}
    info.add_text(STUDIO_CHUNK, json.dumps(chunk, ensure_ascii=False, allow_nan=False))
    return info


def parse_infotext(text: str) -> dict[str, Any]:
    """Request fields found in A1111 infotext (only those both tools share)."""
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
    out: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    try:
        if "Steps" in params:
            out["num_inference_steps"] = int(params["Steps"])
        if "CFG scale" in params:
            out["guidance_scale"] = float(params["CFG scale"])
        if "Seed" in params:
            out["seed"] = int(params["Seed"])
        if "Size" in params:
            out["width"], out["height"] = (int(v) for v in params["Size"].split("x"))
    except ValueError as exc:
        raise ValueError(f"parameters text has a malformed value: {exc}") from None
    scheduler = _scheduler_from_a1111(params.get("Sampler", ""), params.get("Schedule type", ""))
    if scheduler:
        out["scheduler"] = scheduler
    if params.get("Model"):
        out["model"] = params["Model"]
    if params.get("Batch size", "").isdigit():
        out["batch_size"] = int(params["Batch size"])
    return out


def _scheduler_from_a1111(sampler: str, schedule: str) -> str | None:
    """Studio's sampler for A1111's "Sampler" (+ "Schedule type"); None when Studio has none.

    A1111 >= 1.9 writes "Sampler: DPM++ 2M, Schedule type: Karras"; older ones "DPM++ 2M Karras".
    """
    if schedule == "Karras" and f"{sampler} Karras" in SCHEDULERS:
        return f"{sampler} Karras"
    return sampler if sampler in SCHEDULERS else None


def read_png_settings(path: str) -> tuple[dict[str, Any], str]:
    """Request fields stored in a PNG, and where they came from ("studio" or "a1111")."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise ValueError(f"expected a PNG image, got {img.format}")
            chunks = dict(getattr(img, "text", {}) or {})
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable PNG image: {exc}") from None
    for name in (STUDIO_CHUNK, A1111_CHUNK):
        if len(chunks.get(name, "")) > MAX_CHUNK_CHARS:
            raise ValueError(f"the {name!r} metadata is over {MAX_CHUNK_CHARS} characters")
    if STUDIO_CHUNK in chunks:
        return _parse_studio_chunk(chunks[STUDIO_CHUNK]), "studio"
    if A1111_CHUNK in chunks:
        return parse_infotext(chunks[A1111_CHUNK]), "a1111"
    raise ValueError("this PNG carries no generation settings (no 'studio' or 'parameters' text chunk)")


def _parse_studio_chunk(text: str) -> dict[str, Any]:
    try:
        chunk = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"the 'studio' metadata is not valid JSON: {exc}") from None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("request"), dict):
        raise ValueError("the 'studio' metadata has no 'request' object")
    if chunk.get("version", 0) > CHUNK_VERSION:
        raise ValueError(f"the image was made by a newer Studio (metadata version {chunk['version']}, this one reads {CHUNK_VERSION})")
    request = chunk["request"]
    unknown = sorted(set(request) - set(REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"the 'studio' metadata has unknown request fields: {unknown}")
    return request


def _reject_constant(name: str):
    raise ValueError(f"JSON must not contain {name}")
