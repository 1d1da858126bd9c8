"""The class images of prior preservation (DreamBooth, Ruiz et al. 2023, section 3.3): made once by
the base model and kept as <run>/class_images/class-0000.png, ... so a resumed run reuses them.

Image i comes from its own seed (`class_seed`), so images made later (after a crash, or for a
larger `num_class_images`) are the ones an uninterrupted run would have made. settings.json
records what the images were made with; images made with other settings are deleted and made
again rather than silently trained on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from studio.images import open_image
from studio.results import StepEvent
from studio.training.config import TrainConfig
from studio.training.samples import generate

FOLDER = "class_images"
SETTINGS = "settings.json"
# Images per pipeline call: a few keep a GPU busy, and 4 at SDXL's 1 MP fit next to the model on 24 GB.
PER_CALL = 4


def class_image_path(run_dir: Path, i: int) -> Path:
    return run_dir / FOLDER / f"class-{i:04d}.png"


def class_seed(seed: int, i: int) -> int:
    """The seed of class image i: one-to-one in (seed, i) as i < 1000 (`num_class_images` <= 1000)."""
    return seed * 1000 + i


def class_settings(config: TrainConfig, size: tuple[int, int], guidance_scale: float) -> dict:
    """What the class images depend on."""
    return {"model": config.model, "class_prompt": config.class_prompt, "class_steps": config.class_steps,
            "seed": config.seed, "size": list(size), "guidance_scale": guidance_scale}


def ensure_class_images(pipe: Any, config: TrainConfig, settings: dict, run_dir: Path,
                        report: Callable[[StepEvent], Any]) -> list[Image.Image] | None:
    """The run's `num_class_images` class images, making those not on disk yet; None when `report`
    asks to stop (the images made so far are kept). While making them, `report` hears
    StepEvent(0, max_train_steps, message="generating class image <i> of <n>") before each call."""
    folder = run_dir / FOLDER
    _forget_other_settings(folder, settings)
    n = config.num_class_images
    missing = [i for i in range(n) if not class_image_path(run_dir, i).is_file()]
    for start in range(0, len(missing), PER_CALL):
        chunk = missing[start:start + PER_CALL]
        message = f"generating class image {chunk[0] + 1} of {n}"
        if report(StepEvent(0, config.max_train_steps, message=message)):
            return None
        seeds = [class_seed(config.seed, i) for i in chunk]
        images = generate(pipe, config.class_prompt, seeds, tuple(settings["size"]), config.class_steps,
                          settings["guidance_scale"])
        for i, image in zip(chunk, images):
            _write_png(image, class_image_path(run_dir, i))
    return [open_image(class_image_path(run_dir, i)) for i in range(n)]


def _forget_other_settings(folder: Path, settings: dict) -> None:
    """Delete class images made with other settings; record the current ones."""
    record = folder / SETTINGS
    if record.is_file() and json.loads(record.read_text()) == settings:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("class-*.png"):
        old.unlink()
    record.write_text(json.dumps(settings, indent=1))


def _write_png(image: Image.Image, path: Path) -> None:
    """Write `path` whole or not at all: a temporary file, flushed to disk, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        image.save(file, format="PNG")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
