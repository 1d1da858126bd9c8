"""LoRA training in the background: `TrainingJobs.start(config, images, captions) -> job id`, then
`status(job_id)` to follow it and `stop(job_id)` to end it at its next step.

Each job runs `lora_train.train` in a thread of its own. The GPU is shared through the manager's
exclusive lease, so a job queues behind running generations and they queue behind it. A finished
LoRA goes into the library under its name.

A run lives in <runs_dir>/<name>/, or <runs_dir>/<owner>/<name>/ when each visitor has their own
(studio.owners; every method takes the caller's `owner`, None when shared), and outlives the
process that started it:
  images/0000.png …             the photos as PNGs we encoded (never the uploaded files)
  job.json                      config, captions and the run's state; rewritten atomically when the
                                state changes, at checkpoints and at samples (not every step)
  samples/step-000200-0.png …   the sample images rendered during the run
  checkpoint-<step>/            the trainer's checkpoints
A run that job.json says is queued or running when a TrainingJobs is created was cut short when
the last process ended: it becomes "interrupted", and `resume(name)` trains it again from its
photos, captions and config, which continues from its newest complete checkpoint.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.deploy import on_zero_gpu
from studio.loras import CROSS_ATTN_KEY, DOWN_KEY, LoraLibrary, check_name, read_safetensors_header
from studio.models.pool import pinned
from studio.owners import Owners
from studio.outputs import save_png
from studio.results import StepEvent
from studio.training.config import TrainConfig
from studio.training.lora_train import train
from studio.training.runs import (
    IMAGES,
    RECORD_FILE,
    SAMPLES,
    SAVED_FIELDS,
    checkpoint_step,
    config_from_record,
    load_images,
    now_text,
    read_record,
    sample_prompt,
    save_images,
    write_json,
)

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")  # a job in these states may still change
RESUMABLE = ("interrupted", "stopped")  # a run in these states can be trained on from its checkpoint
ZERO_GPU_NOTICE = ("Training needs a dedicated GPU: this Space runs on ZeroGPU, which lends a GPU for a few seconds "
                   "per call, not for a training run. Duplicate the Space on dedicated GPU hardware, or run Studio "
                   "on your own machine, to train; LoRA files can still be added to the library below.")


@dataclass
class JobRecord:
    """What a caller can know about one job (`status` returns it as a dict)."""

    job_id: str
    name: str  # the LoRA's name in the library, and its run folder's
    model: str
    # queued -> running -> done | stopped | failed; a run cut short by the process's end is
    # "interrupted" on disk (see `runs`): no job of this process has it
    state: str = "queued"
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)  # one per optimizer step, resumed steps included
    eta_s: float | None = None  # seconds left at the mean step time of this session's steps
    message: str | None = None  # while queued: who holds the GPU, or which class image is being made
    error: str | None = None  # when failed
    lora: str | None = None  # when done: the library name of the new LoRA
    samples: list[str] = field(default_factory=list)  # PNG paths of the latest sample images
    sample_step: int | None = None  # the step those samples were rendered at
    sample_prompt: str | None = None  # the prompt they were rendered from, trigger word filled in


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
        self._saved: dict[str, dict] = {}  # job id -> what job.json keeps besides the record: config, captions
        self._stops: dict[str, threading.Event] = {}
        self._owners: dict[str, str | None] = {}  # job id -> whose run folder it writes
        self._lock = threading.Lock()
        self._mark_interrupted()

    # -- starting, following and stopping jobs

    def start(self, config: TrainConfig, images: Sequence[Any], captions: Sequence[str | None] | None = None,
              owner: str | None = None) -> str:
        """Check the settings, save the photos, captions and config in the run folder, then start
        training in the background; returns the job id."""
        # 1. Check inputs before any GPU work: a bad setting is an error now, not a failed job later
        self._check(config, images, captions)
        # 2. One job per name at a time: two would write the same run folder
        job_id = self._claim(config, captions, len(images), owner)
        # 3. The photos and the record on disk, so that a restart can resume the run
        try:
            save_images(self.run_dir(config.name, owner), images)
            self._save(job_id)
        except BaseException:
            self._forget(job_id)
            raise
        # 4. Train in a thread of its own
        self._launch(job_id, config, list(images), captions)
        return job_id

    def status(self, job_id: str) -> dict:
        with self._lock:
            record = self._records.get(job_id) if isinstance(job_id, str) else None  # a dict is unhashable
            if record is None:
                raise ValueError(f"no training job {job_id!r:.100}")
            return asdict(record)  # a copy: the thread goes on changing the record

    def stop(self, job_id: str) -> None:
        """Ask job `job_id` to stop: at its next step it writes a checkpoint and ends as "stopped"."""
        with self._lock:
            if not isinstance(job_id, str) or job_id not in self._records:
                raise ValueError(f"no training job {job_id!r:.100}")
            self._stops[job_id].set()

    # -- runs on disk: listing, resuming, discarding

    def run_dir(self, name: str, owner: str | None = None) -> Path:
        """The run folder of `name`; refuses names (or links) that would lead outside the owner's runs folder."""
        base = Owners.folder(self.runs_dir, owner)
        path = base / check_name(name)
        if path.resolve().parent != base.resolve():
            if owner is not None:  # a visitor is not shown the server's folders
                raise ValueError(f"run {name!r} resolves outside your runs folder")
            raise ValueError(f"run {name!r} resolves to {path.resolve()}, outside the runs folder {self.runs_dir}")
        return path

    def runs(self, owner: str | None = None) -> list[dict]:
        """Every run of `owner` with a record on disk, newest first: name, model, state, step, total,
        updated, and the job_id of this process's job while one trains it."""
        with self._lock:
            active = {r.name: asdict(r) for job_id, r in self._records.items()
                      if r.state in ACTIVE and self._owners.get(job_id) == owner}
        base, found = Owners.folder(self.runs_dir, owner), []
        for path in base.glob(f"*/{RECORD_FILE}") if base.is_dir() else []:
            try:
                saved = read_record(path.parent)
            except ValueError as exc:
                log.warning("skipping training run %s: %s", path.parent, exc)
                continue
            current = active.get(saved["name"], saved)  # memory is newer than disk while training
            found.append({"name": saved["name"], "model": saved["model"], "state": current["state"],
                          "step": current["step"], "total": current["total"], "updated": saved["updated"],
                          "job_id": current.get("job_id")})
        return sorted(found, key=lambda run: run["updated"], reverse=True)

    def resume(self, name: str, owner: str | None = None) -> str:
        """Train an interrupted or stopped run again from its saved photos, captions and config;
        the trainer continues from its newest complete checkpoint. Returns the new job's id."""
        run_dir = self.run_dir(name, owner)
        saved = read_record(run_dir)
        if saved["state"] not in RESUMABLE:
            raise ValueError(f"run {name!r} is {saved['state']}; only an interrupted or stopped run can be resumed")
        config, captions, images = config_from_record(saved["config"]), saved["captions"], load_images(run_dir)
        if len(images) != saved["images"]:
            raise ValueError(f"run {name!r} should have {saved['images']} photos in {run_dir / IMAGES}, "
                             f"has {len(images)}")
        self._check(config, images, captions)
        done = checkpoint_step(run_dir)
        job_id = self._claim(config, captions, len(images), owner)
        # what the page shows until the trainer reports: the checkpoint's step, losses and the last samples
        samples = [str(run_dir / p) for p in saved["samples"] if (run_dir / p).is_file()]
        self._update(job_id, step=done, losses=saved["losses"][:done], samples=samples,
                     sample_step=saved["sample_step"] if samples else None)
        try:
            self._save(job_id)
        except BaseException:
            self._forget(job_id)
            raise
        self._launch(job_id, config, images, captions)
        return job_id

    def discard(self, name: str, owner: str | None = None) -> None:
        """Delete run `name`'s folder (photos, checkpoints, samples); its LoRA, if any, stays in the library."""
        run_dir = self.run_dir(name, owner)
        read_record(run_dir)  # only a run folder, never another one that happens to sit in runs_dir
        with self._lock:  # held while deleting, so that no job can claim the name meanwhile
            busy = [r for job_id, r in self._records.items()
                    if r.name == name and r.state in ACTIVE and self._owners.get(job_id) == owner]
            if busy:
                raise ValueError(f"run {name!r} is being trained by job {busy[0].job_id}; stop it first")
            shutil.rmtree(run_dir)

    # -- the library

    def add_upload(self, upload_path: str | Path, name: str, model: str) -> str:
        """Add an uploaded LoRA file to the library as `name`, once its header shows it is a LoRA for
        `model`'s family and width (it is never loaded or unpickled to find out); returns the name."""
        from studio.models.library import model_width

        check_name(name)
        base = self.manager.registry.get(model)
        self.library.add(upload_path, name, model_width(self.manager, base), base.family)
        return name

    # -- inside

    def _check(self, config: TrainConfig, images: Sequence[Any], captions: Sequence[str | None] | None) -> None:
        if on_zero_gpu():
            raise ValueError(ZERO_GPU_NOTICE)
        config.validate()
        check_name(config.name)  # the library's rule, stricter than the run folder's
        entry = self.manager.registry.get(config.model)
        if entry.role != "base" or entry.lora is not None:
            raise ValueError(f"model must be a full base model, got {config.model!r}")
        config.validate(len(images))  # the photo count last: a bad setting is named even without photos
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"captions must be one per image ({len(images)}), got {len(captions)}")

    def _claim(self, config: TrainConfig, captions: Sequence[str | None] | None, num_images: int,
               owner: str | None) -> str:
        """A new job's record, unless another job trains the same name; returns its id."""
        job_id = secrets.token_hex(8)
        # The library is one for all: a visitor may not overwrite a LoRA their own runs did not make
        taken = self.library.path(config.name).exists()
        if owner is not None and taken and not self.run_dir(config.name, owner).is_dir():
            raise ValueError(f"a LoRA named {config.name!r} is already in the library; pick another name")
        with self._lock:
            busy = [(i, r) for i, r in self._records.items() if r.name == config.name and r.state in ACTIVE]
            if busy:  # one LoRA name, one job at a time; another visitor's job id is not theirs to see
                other = busy[0][0]
                if self._owners.get(other) != owner:
                    raise ValueError(f"name {config.name!r} is being trained by someone else; pick another name")
                raise ValueError(f"name {config.name!r} is being trained by job {other}; stop it or pick another name")
            self._records[job_id] = JobRecord(job_id, config.name, config.model, total=config.max_train_steps,
                                              sample_prompt=sample_prompt(config))
            self._saved[job_id] = {"config": asdict(config), "captions": None if captions is None else list(captions),
                                   "images": num_images}
            self._stops[job_id] = threading.Event()
            self._owners[job_id] = owner
        return job_id

    def _forget(self, job_id: str) -> None:
        with self._lock:
            for table in (self._records, self._saved, self._stops, self._owners):
                table.pop(job_id, None)

    def _launch(self, job_id: str, config: TrainConfig, images: list, captions: Sequence[str | None] | None) -> None:
        threading.Thread(target=self._work, args=(job_id, config, images, captions),
                         name=f"train-{config.name}", daemon=True).start()

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._records[job_id]
            for key, value in changes.items():
                setattr(record, key, value)

    def _save(self, job_id: str, **changes: Any) -> None:
        """Write the job's record, with `changes`, as <run>/job.json (config, captions, state; sample
        paths relative to the run folder)."""
        with self._lock:
            record, saved = {**asdict(self._records[job_id]), **changes}, self._saved[job_id]
            owner = self._owners[job_id]
        run_dir = self.run_dir(record["name"], owner)
        run_dir.mkdir(parents=True, exist_ok=True)
        data = {**{k: record[k] for k in SAVED_FIELDS}, **saved, "updated": now_text(),
                "samples": [str(Path(p).relative_to(run_dir)) for p in record["samples"]]}
        write_json(run_dir / RECORD_FILE, data)

    def _mark_interrupted(self) -> None:
        """Runs whose record says queued or running were cut short when the last process ended (no
        job of this new one has them): mark them interrupted at their newest complete checkpoint."""
        shared, owned = (self.runs_dir.glob(f"{'*/' * depth}{RECORD_FILE}") for depth in (1, 2))
        for path in [*shared, *owned] if self.runs_dir.is_dir() else []:
            try:
                saved = read_record(path.parent)
                if saved["state"] in ACTIVE:
                    step = checkpoint_step(path.parent)
                    write_json(path, {**saved, "state": "interrupted", "step": step,
                                      "losses": saved["losses"][:step], "updated": now_text()})
                    log.info("training run %r was interrupted at step %d; it can be resumed", saved["name"], step)
            except (OSError, ValueError) as exc:  # one damaged run must not stop the app
                log.warning("cannot check training run %s: %s", path.parent, exc)

    def _work(self, job_id: str, config: TrainConfig, images: list, captions: Sequence[str | None] | None) -> None:
        stop = self._stops[job_id]
        run_dir = self.run_dir(config.name, self._owners[job_id])
        first: list[tuple[int, float]] = []  # (step, time) of this session's first step, for the ETA

        def on_step(event: StepEvent) -> bool:
            if event.step == 0:  # not training yet: waiting for the GPU, or making class images
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
                started = record.state != "running"
                record.state, record.step, record.total, record.eta_s, record.message = (
                    "running", event.step, event.total, eta, None)
                # a resumed run reports from its checkpoint's step: earlier losses come with the result
                if loss is not None and len(record.losses) == event.step - 1:
                    record.losses.append(loss)
            if started or event.step % config.checkpoint_every == 0:  # the trainer checkpoints this step
                self._save(job_id)
            return stop.is_set()

        def on_sample(step: int, samples: list) -> None:
            paths = [save_png(image, run_dir / SAMPLES, f"step-{step:06d}-{i}.png") for i, image in enumerate(samples)]
            self._update(job_id, samples=[str(p) for p in paths], sample_step=step)
            self._save(job_id)

        try:
            with pinned(self.manager):  # "cuda" is the manager's GPU (--gpus) in this thread
                result = self._run(config, images, captions, self.manager, run_dir, on_step=on_step,
                                   on_sample=on_sample)
            if result.state == "done":
                path = Path(result.lora_path)
                self.library.add(path, config.name, cross_attention_width(path), self._family(config.model),
                                 replace=True)
            end = dict(state=result.state, step=result.steps_done, losses=list(result.losses), eta_s=0.0,
                       message=None, lora=config.name if result.state == "done" else None)
        except Exception as exc:  # the job's end, reported in its record (and the log) rather than lost
            log.exception("training job %s (%s) failed", job_id, config.name)
            end = dict(state="failed", error=str(exc) or type(exc).__name__, eta_s=None, message=None)
        try:
            self._save(job_id, **end)  # on disk first: whoever sees the end in memory finds it on disk too
        except OSError:  # the record in memory is still right; only a restart would not know the end
            log.exception("cannot write the record of training job %s (%s)", job_id, config.name)
        self._update(job_id, **end)

    def _family(self, model: str) -> str:
        return self.manager.registry.get(model).family
