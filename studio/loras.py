"""The LoRA library: safe checks of uploaded LoRA files, a folder of them, and A1111's prompt tags.

Security rule: a user's file is never unpickled. Uploads must be safetensors, and we read the
safetensors header by hand (no torch, no loader) so a pickle or a malformed file is refused
before anything could execute or allocate from it. UI-free and GPU-free: the UI layer turns
the ValueErrors raised here into messages, and the ModelManager does the actual loading.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# safetensors dtype -> bytes per element (sub-byte float formats are not used by LoRAs).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# Cross-attention width -> the family it usually means, to make a mismatch message actionable.
KNOWN_WIDTHS = {2048: "SDXL", 768: "SD1.5", 1024: "SD2.x"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # no "/" or leading ".", so no traversal
SUFFIX = ".safetensors"
MAX_WEIGHT = 4.0  # A1111 users go past 1 and below 0; beyond +-4 is always a typo
TRIGGER_KEYS = ("modelspec.trigger_phrase", "trigger_word", "trigger_words")

LORA_KEY = re.compile(r"lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up")
DOWN_KEY = re.compile(r"(?:lora_A|lora\.down|lora_down)\.weight$")
# diffusers (".attn2.to_k.", old ".attn2.processor.to_k_lora.") and kohya ("_attn2_to_k.").
CROSS_ATTN_KEY = re.compile(r"attn2[._](?:processor\.)?to_k")
UNET_PREFIXES = ("unet.", "lora_unet_")
TEXT_ENCODER_PREFIXES = ("text_encoder", "lora_te")
TAG = re.compile(r"<lora:([^:>]*)(?::([^>]*))?>")
NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")  # plain decimals: no nan, inf, 1_0 or exponents


# 1. The safetensors header, parsed by hand.

def _reject_duplicate_keys(pairs: list) -> dict:
    # json keeps the last of a repeated key; other readers may keep the first, so refuse the ambiguity.
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"header repeats a key: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    return dict(pairs)


def _check_tensor(name: str, entry, data_size: int) -> tuple[int, int]:
    """Validate one tensor entry; return its (begin, end) in the data section."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r} must have exactly dtype, shape and data_offsets, got {entry!r:.200}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"tensor {name!r} has unknown dtype {dtype!r}; expected one of {sorted(DTYPE_SIZES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r} shape must be a list of non-negative ints, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise ValueError(f"tensor {name!r} ends at byte {end} but the data section has {data_size}: file truncated")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise ValueError(f"tensor {name!r} has {end - begin} bytes, but {dtype} {shape} needs "
                         f"{math.prod(shape) * DTYPE_SIZES[dtype]}")
    return begin, end


def _check_layout(spans: list[tuple[int, int, str]], data_size: int) -> None:
    """Tensors must tile the data section exactly, as safetensors itself requires: no overlap, gap or tail."""
    position = 0
    for begin, end, name in sorted(spans):
        if begin < position:
            raise ValueError(f"tensor {name!r} at bytes [{begin}, {end}] overlaps the tensor before it")
        if begin > position:
            raise ValueError(f"tensor {name!r} starts at byte {begin}, leaving a gap after byte {position}")
        position = end
    if position != data_size:
        raise ValueError(f"tensors cover {position} bytes but the data section has {data_size}")


def read_safetensors_header(path, max_header_bytes: int = 100_000_000) -> dict:
    """The validated header of a safetensors file: {"__metadata__": {str: str}, name: {dtype, shape, data_offsets}}."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        # Checked first: these are what a renamed .ckpt/.pt/.bin looks like, and must never reach a loader.
        if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
            raise ValueError(f"{path.name} is a pickle/PyTorch checkpoint, not safetensors; Studio never unpickles uploads")
        if len(head) < 8:
            raise ValueError(f"{path.name} has {size} bytes, too short to be safetensors (8-byte length, then a header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > max_header_bytes:
            raise ValueError(f"{path.name} declares a {header_len}-byte header (at most {max_header_bytes}): not safetensors")
        if header_len > size - 8:
            raise ValueError(f"{path.name} declares a {header_len}-byte header but has only {size - 8} bytes after the "
                             "length: truncated or not safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):  # a bad file, not a bad argument: ValueError like the rest
        raise ValueError(  # noqa: TRY004
            f"{path.name} header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path.name} __metadata__ must map strings to strings, got {metadata!r:.200}")
    data_size = size - 8 - header_len
    spans = [(*_check_tensor(name, entry, data_size), name) for name, entry in header.items()]
    _check_layout(spans, data_size)
    return {"__metadata__": metadata, **header}


# 2. Is it a UNet LoRA that fits this model?

@dataclass(frozen=True)
class LoraInfo:
    rank: int  # the largest rank of its down (A) matrices; ranks may differ per layer
    num_keys: int  # tensors in the file, LoRA matrices and alphas alike
    has_text_encoder: bool  # also trains the text encoder(s)
    metadata: dict = field(default_factory=dict)  # the file's __metadata__ (str -> str)
    trigger: str | None = None  # trigger word from the metadata, if the trainer recorded one


def _describe_width(width: int) -> str:
    return f"looks like {KNOWN_WIDTHS[width]}" if width in KNOWN_WIDTHS else "no known family"


def check_lora(path, cross_attention_dim: int, family: str) -> LoraInfo:
    """Check that `path` is a safetensors UNet LoRA whose cross-attention input width is `cross_attention_dim`."""
    path = Path(path)
    header = read_safetensors_header(path)
    metadata = header.pop("__metadata__")
    unet_keys = [k for k in header if k.startswith(UNET_PREFIXES) and LORA_KEY.search(k)]
    downs = [k for k in unet_keys if DOWN_KEY.search(k)]
    if not downs:
        raise ValueError(f"{path.name} does not look like a UNet LoRA: no 'unet.' or 'lora_unet_' keys with "
                         f"lora_A/lora_B, lora.down/lora.up or lora_down/lora_up (first keys: {sorted(header)[:3]})")
    flat = [k for k in downs if len(header[k]["shape"]) < 2]
    if flat:  # a down matrix is (rank, in_features) or, for convolutions, (rank, in, kh, kw)
        raise ValueError(f"{path.name}: LoRA down matrix {flat[0]!r} has shape {header[flat[0]]['shape']}, expected 2+ dims")
    # The text encoder's width is what a LoRA's attn2.to_k reads, so it tells which family it was trained on.
    cross = [header[k]["shape"] for k in downs if CROSS_ATTN_KEY.search(k)]
    if not cross:
        raise ValueError(f"{path.name} has no cross-attention (attn2.to_k) LoRA weights, so Studio cannot check "
                         f"that it fits {family}")
    widths = sorted({shape[-1] for shape in cross})
    if widths != [cross_attention_dim]:
        found = ", ".join(f"{w} ({_describe_width(w)})" for w in widths)
        raise ValueError(f"{path.name} is a LoRA for a model whose cross-attention width is {found} "
                         f"(SDXL uses 2048, SD1.5 768), but {family} has {cross_attention_dim}")
    trigger = next((metadata[k] for k in TRIGGER_KEYS if metadata.get(k)), None)
    return LoraInfo(rank=max(header[k]["shape"][0] for k in downs), num_keys=len(header),
                    has_text_encoder=any(k.startswith(TEXT_ENCODER_PREFIXES) for k in header),
                    metadata=metadata, trigger=trigger)


# 3. The library folder: one <name>.safetensors per LoRA.

@dataclass(frozen=True)
class LoraEntry:
    name: str
    path: Path
    metadata: dict


def check_name(name: str) -> str:
    """Return `name` if it is a valid LoRA name, else raise ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"LoRA name must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
                         f"digit, got {name!r:.100}")
    return name


class LoraLibrary:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        """Where LoRA `name` lives; refuses names (or links) that would lead outside the folder."""
        path = (self.folder / (check_name(name) + SUFFIX)).resolve()
        if path.parent != self.folder.resolve():
            raise ValueError(f"LoRA {name!r} resolves to {path}, outside the library {self.folder}")
        return path

    def list(self) -> list[LoraEntry]:
        """Every LoRA in the folder, sorted by name; a damaged file raises rather than silently vanishing."""
        if not self.folder.is_dir():
            return []
        names = sorted(p.name[: -len(SUFFIX)] for p in self.folder.glob("*" + SUFFIX))
        entries = []
        for name in filter(NAME_PATTERN.match, names):  # others can't be asked for by name, so aren't LoRAs of ours
            path = self.path(name)
            entries.append(LoraEntry(name, path, read_safetensors_header(path)["__metadata__"]))
        return entries

    def add(self, upload_path, name: str, cross_attention_dim: int, family: str, replace: bool = False) -> Path:
        """Validate an uploaded LoRA and copy it in as `name`; returns its library path."""
        target = self.path(name)
        if target.exists() and not replace:
            raise ValueError(f"a LoRA named {name!r} already exists; pass replace=True to overwrite it")
        check_lora(upload_path, cross_attention_dim, family)  # refuse before writing anything
        self.folder.mkdir(parents=True, exist_ok=True)
        # Copy to a temp file beside the target and re-check the copy: what lands is exactly what was
        # checked, and os.replace makes it appear whole or not at all.
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with open(upload_path, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            check_lora(tmp, cross_attention_dim, family)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise ValueError(f"no LoRA named {name!r} in {self.folder}")
        path.unlink()


# 4. A1111's <lora:name:weight> prompt syntax, and the API's "name:weight, ..." list.

def _parse_weight(text: str | None, where: str) -> float:
    if text is None:
        return 1.0
    if not NUMBER.match(text.strip()) or abs(float(text)) > MAX_WEIGHT:
        raise ValueError(f"{where}: weight must be a number in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}], got {text!r}")
    return float(text)


def _check_unique(loras: list[tuple[str, float]]) -> list[tuple[str, float]]:
    names = [n for n, _ in loras]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"LoRA {', '.join(repeated)} is given more than once; give each LoRA one weight")
    return loras


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Split `<lora:name:weight>` tags out of a prompt: (the prompt without them, [(name, weight)] in order)."""
    loras = []
    for match in TAG.finditer(prompt):
        check_name(match.group(1))
        loras.append((match.group(1), _parse_weight(match.group(2), f"tag {match.group(0)!r}")))
    rest = TAG.sub(" ", prompt)
    if "<lora:" in rest:  # an unclosed tag would otherwise reach the text encoder as words
        raise ValueError(f"unclosed <lora:...> tag in prompt: {rest[rest.index('<lora:'):][:40]!r}")
    # Removing a tag leaves ", ," and double spaces: "a cat, <lora:x:0.5>, red" -> "a cat, red".
    rest = re.sub(r"\s*,(?:\s*,)+", ",", rest)
    rest = re.sub(r"[ \t]+,", ",", rest)
    rest = re.sub(r"[ \t]{2,}", " ", rest)
    return rest.strip(" \t\n,"), _check_unique(loras)


def lora_tags(loras: list[tuple[str, float]]) -> str:
    """Format [(name, weight)] as A1111 tags for infotext: "<lora:x:0.5> <lora:y:1.0>"."""
    for name, weight in loras:
        _parse_weight(repr(float(weight)), f"LoRA {check_name(name)!r}")
    return " ".join(f"<lora:{name}:{float(weight)!r}>" for name, weight in _check_unique(list(loras)))


def parse_lora_list(text: str) -> list[tuple[str, float]]:
    """Parse the API's `loras` string, "name:0.8, other" (weight defaults to 1.0)."""
    if not text.strip():
        return []
    loras = []
    for item in text.split(","):
        name, sep, weight = item.strip().partition(":")
        if not name:
            raise ValueError(f"loras: empty entry in {text!r}; expected 'name:weight, name:weight'")
        check_name(name)
        loras.append((name, _parse_weight(weight if sep else None, f"loras entry {item.strip()!r}")))
    return _check_unique(loras)


def format_lora_list(loras: list[tuple[str, float]]) -> str:
    """Format [(name, weight)] as the API's `loras` string, "x:0.5, y:1.0" (what parse_lora_list reads)."""
    for name, weight in loras:
        _parse_weight(repr(float(weight)), f"LoRA {check_name(name)!r}")
    return ", ".join(f"{name}:{float(weight)!r}" for name, weight in _check_unique(list(loras)))
