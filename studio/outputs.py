"""Saving images: atomic PNG writes into the outputs folder, named by time and seed."""

from __future__ import annotations

import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import PngImagePlugin

from studio.metadata import png_info
from studio.results import Result


def output_name(seed: int, now: datetime | None = None) -> str:
    """A file name made of the time, the seed and a random tag: never of prompt text. The tag has
    64 random bits, so knowing someone's time and seed is not enough to fetch their image."""
    now = now or datetime.now()
    return f"{now:%H%M%S}-{seed}-{secrets.token_hex(8)}.png"


def save_png(image: Any, folder: Path, name: str, info: PngImagePlugin.PngInfo | None = None) -> Path:
    """Write `image` as folder/name atomically (temp file + rename), with text chunks `info`."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600); an image is as readable as any file here
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / name


def save_result_images(result: Result, outputs_dir: Path) -> list[Path]:
    """Save a batch under outputs_dir/YYYY-MM-DD/; each PNG carries the settings that remake it.

    Images that had a post-effect (the lens blur) are followed by their originals, saved beside
    them as <name>-sharp.png; then come the ControlNet hints when they were kept, saved as
    <first name>-hint-<unit>.png."""
    folder = Path(outputs_dir) / f"{datetime.now():%Y-%m-%d}"
    paths, sharp, hints = [], [], []
    try:
        for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
            info = png_info(result, i)
            paths.append(save_png(image, folder, output_name(seed), info))
            if result.originals:
                sharp.append(save_png(result.originals[i], folder, paths[-1].stem + "-sharp.png", info))
        for i, hint in enumerate(result.hints):
            hints.append(save_png(hint, folder, f"{paths[0].stem}-hint-{i + 1}.png"))
    except BaseException:  # a batch is saved whole or not at all (a full disk fails mid-batch)
        for path in paths + sharp + hints:
            path.unlink(missing_ok=True)
        raise
    return paths + sharp + hints


def save_canvas(result: Result, outputs_dir: Path, preview_side: int = 2048) -> list[Path]:
    """Save a large result (an upscale) whose image is `result.canvas`, an array on disk:
    [what the gallery shows, the full image (PNG, or a tiled BigTIFF past PNG's size), its deep-zoom
    .dzi]. The gallery gets a preview PNG (long side `preview_side`, carrying the same settings)
    when the image is larger. The scratch array is removed either way."""
    import json

    from studio.upscale.deepzoom import write_dzi
    from studio.upscale.files import discard, write_image

    folder = Path(outputs_dir) / f"{datetime.now():%Y-%m-%d}"
    stem, info, canvas = output_name(result.seed)[:-4], png_info(result, 0), result.canvas
    small = max(canvas.shape[:2]) <= preview_side
    try:
        full = write_image(canvas, folder, stem, pnginfo=info, description=json.dumps(result.summary()))
        dzi = write_dzi(canvas, folder, stem)
    finally:
        discard(canvas)
    shown = full if small and full.suffix == ".png" else save_png(result.images[0], folder, f"{stem}-preview.png", info)
    return [shown, full, dzi]
