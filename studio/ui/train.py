"""The "Train LoRA" tab and its API: start a LoRA training run in the background, follow its loss,
stop it, and list the LoRA library.

Training is not a task of the task table: it makes a LoRA, not images. The run itself lives in
`studio.training.jobs.TrainingJobs`; this page only starts it and reads its record every 2 s.
Endpoints: /train_lora (-> job id), /train_status, /stop_training and /loras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.images import open_image
from studio.loras import TRIGGER_KEYS
from studio.training.config import MAX_IMAGES, MIN_IMAGES, TrainConfig
from studio.training.jobs import ACTIVE, ZERO_GPU_NOTICE, TrainingJobs, on_zero_gpu
from studio.ui.tab import status_html

DEFAULTS = TrainConfig(model="", trigger_word="")  # the page's defaults are the config's
LORA_COLUMNS = ["name", "trigger_word", "base_model", "rank", "steps", "date"]
STATE_KINDS = {"queued": "waiting", "running": "running", "done": "info", "stopped": "stopped", "failed": "error"}


def trainable_models(registry: Any) -> list[str]:
    """Base models that are full checkpoints (a distilled LoRA-on-a-base cannot be trained on)."""
    return [name for name in registry.names("base") if registry.get(name).lora is None]


def open_images(paths: list[str] | None) -> list:
    """The uploaded photos as RGB images; a file that is not an image is named in the error."""
    images = []
    for path in paths or []:
        try:
            images.append(open_image(path))
        except ValueError as exc:
            raise ValueError(f"images: {Path(path).name}: {exc}") from None
    return images


def parse_captions(text: str | None, count: int) -> list[str | None] | None:
    """One caption per line, matched to the `count` photos by order; an empty or missing line
    keeps the instance prompt, and more lines than photos are an error."""
    if not text or not text.strip():
        return None
    lines = [line.strip() or None for line in text.rstrip().splitlines()]
    if len(lines) > count:
        raise ValueError(f"captions must be at most one line per photo ({count}), got {len(lines)} lines")
    return lines + [None] * (count - len(lines))


def library_records(jobs: TrainingJobs) -> list[dict]:
    """Every LoRA of the library with what its file says about it."""
    records = []
    for entry in jobs.library.list():
        meta = entry.metadata
        trigger = next((meta[k] for k in TRIGGER_KEYS if meta.get(k)), None)
        records.append({"name": entry.name, "trigger_word": trigger, "base_model": meta.get("base_model"),
                        "rank": meta.get("rank"), "steps": meta.get("steps"), "date": meta.get("date")})
    return records


def describe(record: dict) -> tuple[str, str]:
    """The status line's text and kind for a job record."""
    state, step, total = record["state"], record["step"], record["total"]
    if state == "queued":
        return record["message"] or "Queued: waiting for the GPU…", "waiting"
    if state == "running":
        eta = f" · about {record['eta_s']:.0f} s left" if record["eta_s"] is not None else ""
        loss = f" · loss {record['losses'][-1]:.4f}" if record["losses"] else ""
        return f"Step {step} of {total}{loss}{eta}", "running"
    if state == "done":
        return f"Done: LoRA {record['lora']!r} is in the library ({total} steps).", "info"
    if state == "stopped":
        return f"Stopped at step {step} of {total}; train again with the same settings to continue.", "stopped"
    return f"Training failed: {record['error']}", "error"


def loss_frame(record: dict | None) -> pd.DataFrame:
    losses = record["losses"] if record else []
    return pd.DataFrame({"step": list(range(1, len(losses) + 1)), "loss": losses})


def build_train_tab(jobs: TrainingJobs, registry: Any, default_model: str) -> None:
    models = trainable_models(registry)
    gr.Markdown(f"Teach a model one subject from {MIN_IMAGES}-{MAX_IMAGES} photos of it. The result is a LoRA "
                "in the library: add `<lora:name:1>` and the trigger word to a prompt to use it.")
    if on_zero_gpu():
        gr.Markdown(f"**{ZERO_GPU_NOTICE}**", elem_id="train-zero-gpu")
    with gr.Row():
        with gr.Column():
            images = gr.File(label=f"Photos ({MIN_IMAGES}-{MAX_IMAGES})", file_count="multiple",
                             file_types=["image"], type="filepath", elem_id="train-images")
            captions = gr.Textbox(label="Captions (optional)", lines=3, elem_id="train-captions",
                                  info="One per line, in the photos' order; an empty line uses the instance prompt")
            with gr.Row():
                trigger_word = gr.Textbox(label="Trigger word", placeholder="sks", elem_id="train-trigger",
                                          info="A rare word that will mean your subject")
                name = gr.Textbox(label="Name", value=DEFAULTS.name, elem_id="train-name",
                                  info="The LoRA's name in the library; the same name and settings resume a run")
            instance_prompt = gr.Textbox(label="Instance prompt", value=DEFAULTS.instance_prompt,
                                         elem_id="train-prompt", info="'{trigger}' is replaced by the trigger word")
            model = gr.Dropdown(models, value=default_model if default_model in models else models[0],
                                label="Base model", elem_id="train-model")
            with gr.Row():
                rank = gr.Number(DEFAULTS.rank, precision=0, label="Rank", info="1-128", elem_id="train-rank")
                learning_rate = gr.Number(DEFAULTS.learning_rate, label="Learning rate", info="(0, 0.01]",
                                          elem_id="train-lr")
                max_train_steps = gr.Number(DEFAULTS.max_train_steps, precision=0, label="Steps", info="1-20000",
                                            elem_id="train-steps")
            with gr.Row():
                batch_size = gr.Number(DEFAULTS.batch_size, precision=0, label="Batch size", info="1-64",
                                       elem_id="train-batch")
                seed = gr.Number(DEFAULTS.seed, precision=0, label="Seed", elem_id="train-seed")
                min_snr_gamma = gr.Number(DEFAULTS.min_snr_gamma, label="Min-SNR γ", elem_id="train-snr",
                                          info="Empty: plain MSE")
            random_flip = gr.Checkbox(DEFAULTS.random_flip, label="Random flip", elem_id="train-flip",
                                      info="Off for text, logos and asymmetric subjects")
            with gr.Row():
                train_button = gr.Button("Train", variant="primary", elem_id="train-start",
                                         interactive=not on_zero_gpu())
                stop_button = gr.Button("Stop", elem_id="train-stop")
        with gr.Column():
            status = gr.HTML(status_html("Upload photos and press Train."), elem_id="train-status")
            plot = gr.LinePlot(loss_frame(None), x="step", y="loss", title="Loss", elem_id="train-loss")
            loras = gr.Dataframe(pd.DataFrame(library_records(jobs), columns=LORA_COLUMNS), headers=LORA_COLUMNS,
                                 label="LoRA library", interactive=False, elem_id="train-loras")
            upload_panel(jobs, registry, default_model, loras)
    job_id = gr.State("")  # this page's latest job
    shown = gr.State("")  # the finished job whose LoRA the table already shows
    timer = gr.Timer(2.0)

    # -- the API: /train_lora, /train_status, /stop_training, /loras
    def start(images: list, trigger_word: str, instance_prompt: str = DEFAULTS.instance_prompt,
              max_train_steps: int = DEFAULTS.max_train_steps, rank: int = DEFAULTS.rank,
              learning_rate: float = DEFAULTS.learning_rate, seed: int = DEFAULTS.seed,
              model: str = models[0], name: str = DEFAULTS.name, batch_size: int = DEFAULTS.batch_size,
              captions: str = "", min_snr_gamma: float | None = DEFAULTS.min_snr_gamma,
              random_flip: bool = DEFAULTS.random_flip) -> str:
        """Raises ValueError for a bad setting; returns the new job's id."""
        photos = open_images(images)
        config = TrainConfig(model=model, trigger_word=trigger_word or "", name=name,
                             instance_prompt=instance_prompt, rank=rank, learning_rate=learning_rate,
                             max_train_steps=max_train_steps, batch_size=batch_size, seed=seed,
                             min_snr_gamma=min_snr_gamma, random_flip=bool(random_flip))
        return jobs.start(config, photos, parse_captions(captions, len(photos)))

    def train_lora(images, trigger_word, instance_prompt, max_train_steps, rank, learning_rate, seed, model, name,
                   batch_size) -> str:
        """Start training a LoRA on 3-30 photos in the background; returns the job id for /train_status."""
        try:
            return start(images, trigger_word, instance_prompt, max_train_steps, rank, learning_rate, seed, model,
                         name, batch_size)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def train_status(job_id: str) -> dict:
        """A job's state (queued, running, done, stopped, failed), step, total, losses, ETA, error and LoRA name."""
        try:
            return jobs.status(job_id)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def stop_training(job_id: str) -> None:
        """Stop a job at its next step; it keeps a checkpoint, so the same settings continue it later."""
        try:
            jobs.stop(job_id)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def list_loras() -> list[dict]:
        """The LoRA library: name, trigger word, base model, rank, steps and date of each LoRA."""
        return library_records(jobs)

    api_button = gr.Button(visible=False)
    api_job = gr.Textbox(visible=False)
    api_inputs = [images, trigger_word, instance_prompt, max_train_steps, rank, learning_rate, seed, model, name,
                  batch_size]
    api_button.click(train_lora, api_inputs, api_job, api_name="train_lora", show_progress="hidden")
    gr.api(train_status, api_name="train_status", queue=False)
    gr.api(stop_training, api_name="stop_training", queue=False)
    gr.api(list_loras, api_name="loras", queue=False)

    # -- the page: errors are a message in the status line
    def on_train(*values):
        try:
            new_job = start(*values)
        except ValueError as exc:
            return gr.skip(), status_html(str(exc), "error")
        return new_job, status_html("Starting…", "waiting")

    def on_tick(current: str, done_shown: str):
        if not current:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        record = jobs.status(current)
        if record["state"] not in ACTIVE and done_shown == current:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()  # the end is already on the page
        text, kind = describe(record)
        html = status_html(text, kind, record["step"], record["total"]) if kind == "running" else status_html(text, kind)
        finished = record["state"] not in ACTIVE and done_shown != current
        table = pd.DataFrame(library_records(jobs), columns=LORA_COLUMNS) if finished else gr.skip()
        return html, loss_frame(record), table, current if finished else gr.skip()

    train_button.click(on_train, [*api_inputs, captions, min_snr_gamma, random_flip], [job_id, status],
                       api_visibility="private", queue=False)
    stop_button.click(lambda current: jobs.stop(current) if current else None, job_id, None,
                      api_visibility="private", queue=False)
    timer.tick(on_tick, [job_id, shown], [status, plot, loras, shown], api_visibility="private", queue=False,
               show_progress="hidden")


def upload_name(path: str | None, name: str | None) -> str:
    """The library name of an uploaded file: the one typed, else the file's own (lowercase)."""
    if name and name.strip():
        return name.strip()
    return Path(path).stem.lower() if path else ""


def upload_panel(jobs: TrainingJobs, registry: Any, default_model: str, table: Any) -> Any:
    """Add a LoRA file (.safetensors only) to the library, checked against the model it is for."""
    bases = registry.names("base")
    with gr.Accordion("Add a LoRA file", open=False, elem_id="train-upload") as panel:
        upload = gr.File(label="LoRA (.safetensors)", file_types=[".safetensors"], type="filepath",
                         elem_id="train-upload-file")
        with gr.Row():
            name = gr.Textbox(label="Name", placeholder="the file's name", elem_id="train-upload-name",
                              info="Prompts call it <lora:name:1>")
            model = gr.Dropdown([(registry.get(n).label, n) for n in bases], label="For model",
                                value=default_model if default_model in bases else bases[0],
                                elem_id="train-upload-model")
        add = gr.Button("Add to library", elem_id="train-upload-add")
        status = gr.HTML("", elem_id="train-upload-status")

    def on_add(path: str | None, typed: str, model_name: str):
        if not path:
            return status_html("Choose a .safetensors file first.", "error"), gr.skip()
        try:
            added = jobs.add_upload(path, upload_name(path, typed), model_name)
        except ValueError as exc:
            return status_html(str(exc), "error"), gr.skip()
        records = pd.DataFrame(library_records(jobs), columns=LORA_COLUMNS)
        return status_html(f"Added {added!r}: use it as <lora:{added}:1>.", "info"), records

    add.click(on_add, [upload, name, model], [status, table], api_visibility="private", queue=False)
    return panel
