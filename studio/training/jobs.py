"""LoRA training in the background: `TrainingJobs.start(config, images, captions) -> job id`, then
`status(job_id)` to follow it and `stop(job_id)` to end it at its next step.

Each job runs `lora_train.train` in a thread of its own. The GPU is shared through the manager's
exclusive lease, so a job queues behind running generations and they queue behind it. A run's
checkpoints live in <runs_dir>/<name>/: starting the same name with the same settings again
continues where an interrupted run stopped. A finished LoRA goes into the library under its name.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.loras import CROSS_ATTN_KEY, DOWN_KEY, LoraLibrary, check_name, read_safetensors_header
from studio.results import StepEvent
from studio.training.config import TrainConfig
from studio.training.lora_train import train

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")  # a job in these states may still change
ZERO_GPU_NOTICE = ("Training needs a dedicated GPU: this Space runs on ZeroGPU, which lends a GPU for a few seconds "
                   "per call, not for a training run. Duplicate the Space on dedicated GPU hardware, or run Studio "
                   "on your own machine, to train; LoRA files can still be added to the library below.")


def on_zero_gpu() -> bool:
    """Whether this is a Hugging Face ZeroGPU Space (which sets SPACES_ZERO_GPU)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


@dataclass
class JobRecord:
    """What a caller can know about one job (`status` returns it as a dict)."""

    job_id: str
    name: str  # the LoRA's name in the library
    model: str
    state: str = "queued"  # queued -> running -> done | stopped | failed
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)  # one per optimizer step, resumed steps included
    eta_s: float | None = None  # seconds left at the mean step time of this session's steps
    message: str | None = None  # while queued: who holds the GPU
    error: str | None = None  # when failed
    lora: str | None = None  # when done: the library name of the new LoRA


def cross_attention_width(path: Path) -> int:
    """The text-embedding width a LoRA file's attn2.to_k layers read (2048 SDXL, 768 SD1.5)."""
    header = read_safetensors_header(path)
    widths = {entry["shape"][-1] for key, entry in header.items()
              if DOWN_KEY.search(key) and CROSS_ATTN_KEY.search(key)}
    if len(widths) != 1:
        raise ValueError(f"{path.name} should have one cross-attention width, has {sorted(widths)}")
    return widths.pop()


class TrainingJobs:
    def __init__(self, manager: Any, lora_dir: Path, runs_dir: Path | None = None,
                 run: Callable[..., Any] = train):
        self.manager = manager
        self.library = LoraLibrary(lora_dir)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path(lora_dir).parent / "training"
        self._run = run  # the training function; tests may pass a fake
        self._records: dict[str, JobRecord] = {}
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, config: TrainConfig, images: Sequence[Any], captions: Sequence[str | None] | None = None) -> str:
        """Check the settings, then start training in the background; returns the job id."""
        # 1. Check inputs before any GPU work: a bad setting is an error now, not a failed job later
        if on_zero_gpu():
            raise ValueError(ZERO_GPU_NOTICE)
        config.validate(len(images))
        check_name(config.name)  # the library's rule, stricter than the run folder's
        entry = self.manager.registry.get(config.model)
        if entry.role != "base" or entry.lora is not None:
            raise ValueError(f"model must be a full base model, got {config.model!r}")
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"captions must be one per image ({len(images)}), got {len(captions)}")
        # 2. One job per name at a time: two would write the same run folder
        job_id = secrets.token_hex(8)
        with self._lock:
            busy = [r for r in self._records.values() if r.name == config.name and r.state in ACTIVE]
            if busy:
                raise ValueError(f"name {config.name!r} is being trained by job {busy[0].job_id}; stop it or pick another name")
            self._records[job_id] = JobRecord(job_id, config.name, config.model, total=config.max_train_steps)
            self._stops[job_id] = threading.Event()
        # 3. Train in a thread of its own
        threading.Thread(target=self._work, args=(job_id, config, list(images), captions),
                         name=f"train-{config.name}", daemon=True).start()
        return job_id

    def status(self, job_id: str) -> dict:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise ValueError(f"no training job {job_id!r}")
            return asdict(record)  # a copy: the thread goes on changing the record

    def stop(self, job_id: str) -> None:
        """Ask job `job_id` to stop: at its next step it writes a checkpoint and ends as "stopped"."""
        with self._lock:
            if job_id not in self._records:
                raise ValueError(f"no training job {job_id!r}")
            self._stops[job_id].set()

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._records[job_id]
            for key, value in changes.items():
                setattr(record, key, value)

    def _work(self, job_id: str, config: TrainConfig, images: list, captions: Sequence[str | None] | None) -> None:
        stop = self._stops[job_id]
        first: list[tuple[int, float]] = []  # (step, time) of this session's first step, for the ETA

        def on_step(event: StepEvent) -> bool:
            if event.step == 0:  # still waiting for the GPU
                self._update(job_id, message=event.message)
                return stop.is_set()
            now = time.monotonic()
            if not first:
                first.append((event.step, now))
            step0, t0 = first[0]
            eta = (now - t0) / (event.step - step0) * (event.total - event.step) if event.step > step0 else None
            loss = float(event.message.removeprefix("loss ")) if event.message else None
            with self._lock:
                record = self._records[job_id]
                record.state, record.step, record.total, record.eta_s, record.message = (
                    "running", event.step, event.total, eta, None)
                # a resumed run reports from its checkpoint's step: earlier losses come with the result
                if loss is not None and len(record.losses) == event.step - 1:
                    record.losses.append(loss)
            return stop.is_set()

        try:
            result = self._run(config, images, captions, self.manager, self.runs_dir / config.name, on_step=on_step)
            if result.state == "done":
                path = Path(result.lora_path)
                self.library.add(path, config.name, cross_attention_width(path), self._family(config.model),
                                 replace=True)
            self._update(job_id, state=result.state, step=result.steps_done, losses=list(result.losses), eta_s=0.0,
                         message=None, lora=config.name if result.state == "done" else None)
        except Exception as exc:  # the job's end, reported in its record (and the log) rather than lost
            log.exception("training job %s (%s) failed", job_id, config.name)
            self._update(job_id, state="failed", error=str(exc) or type(exc).__name__, eta_s=None, message=None)

    def add_upload(self, upload_path: str | Path, name: str, model: str) -> str:
        """Add an uploaded LoRA file to the library as `name`, once its header shows it is a LoRA for
        `model`'s family and width (it is never loaded or unpickled to find out); returns the name."""
        from studio.models.library import model_width

        check_name(name)
        base = self.manager.registry.get(model)
        self.library.add(upload_path, name, model_width(self.manager, base), base.family)
        return name

    def _family(self, model: str) -> str:
        return self.manager.registry.get(model).family
