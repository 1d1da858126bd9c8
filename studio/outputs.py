"""Saving images: atomic PNG writes into the outputs folder, named by time and seed."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import PngImagePlugin


def output_name(seed: int, now: datetime | None = None) -> str:
    """A file name made of the time, the seed and a random tag: never of prompt text."""
    now = now or datetime.now()
    return f"{now:%H%M%S}-{seed}-{secrets.token_hex(3)}.png"


def save_png(image: Any, folder: Path, name: str, metadata: dict[str, Any]) -> Path:
    """Write `image` as folder/name atomically (temp file + rename) with a `studio` JSON chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("studio", json.dumps(metadata, sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / name


def save_result_images(images: list, seeds: list[int], metadata: dict, outputs_dir: Path) -> list[Path]:
    """Save a batch under outputs_dir/YYYY-MM-DD/, each PNG carrying its own seed."""
    folder = Path(outputs_dir) / f"{datetime.now():%Y-%m-%d}"
    return [
        save_png(image, folder, output_name(seed), {**metadata, "seed": seed, "batch_index": i})
        for i, (image, seed) in enumerate(zip(images, seeds))
    ]
