"""A training run's folder on disk, <runs_dir>/<name>/ (see studio/training/jobs.py for its layout):
atomic JSON, the photos as our own PNGs, the job record, the newest checkpoint's step."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.images import open_image
from studio.outputs import save_png
from studio.training.checkpoints import latest_checkpoint
from studio.training.config import TrainConfig

log = logging.getLogger(__name__)
RECORD_FILE = "job.json"
IMAGES = "images"
SAMPLES = "samples"
# The record's fields kept in job.json (the rest: job_id and eta_s belong to one process's job)
SAVED_FIELDS = ("name", "model", "state", "step", "total", "losses", "error", "lora", "sample_step", "sample_prompt")
RECORD_KEYS = (*SAVED_FIELDS, "config", "captions", "images", "samples", "updated")  # every job.json has these


def write_json(path: Path, data: Any) -> None:
    """Write `data` as path atomically: a complete file or the previous one, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_images(run_dir: Path, images: Sequence[Any]) -> None:
    """The photos as <run_dir>/images/0000.png …: written to a fresh folder that then replaces the
    old one, so a run never mixes the photos of two starts."""
    new, final = run_dir / f"{IMAGES}.new", run_dir / IMAGES
    shutil.rmtree(new, ignore_errors=True)  # a leftover of a crash while saving
    for i, image in enumerate(images):
        save_png(image.convert("RGB"), new, f"{i:04d}.png")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(new, final)


def load_images(run_dir: Path) -> list:
    """The photos save_images wrote, in their order."""
    return [open_image(p) for p in sorted((run_dir / IMAGES).glob("[0-9][0-9][0-9][0-9].png"))]


def read_record(run_dir: Path) -> dict:
    """A run's job.json; ValueError when there is none, or it cannot be read or lacks a field."""
    try:
        saved = json.loads((run_dir / RECORD_FILE).read_text())
    except FileNotFoundError:
        raise ValueError(f"no training run named {run_dir.name!r}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"the record of run {run_dir.name!r} cannot be read: {exc}") from None
    missing = [key for key in RECORD_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise ValueError(f"the record of run {run_dir.name!r} lacks {', '.join(missing)}")
    return saved


def checkpoint_step(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (its folder is checkpoint-<step>), or 0."""
    folder = latest_checkpoint(run_dir)
    return int(folder.name.rsplit("-", 1)[1]) if folder is not None else 0


def config_from_record(saved: dict) -> TrainConfig:
    """The TrainConfig a job.json holds (settings this version lacks are left out)."""
    known = {f.name for f in fields(TrainConfig)}
    dropped = sorted(set(saved) - known)
    if dropped:
        log.warning("the saved run settings %s are not settings of this Studio; they are left out", dropped)
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except TypeError as exc:  # a required setting missing: a damaged record
        raise ValueError(f"the saved run settings cannot be read: {exc}") from None


def sample_prompt(config: TrainConfig) -> str | None:
    """The prompt the run's sample images are rendered from (None before the trainer samples)."""
    template = getattr(config, "sample_prompt", None)
    return template.replace("{trigger}", config.trigger_word) if template else None


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
