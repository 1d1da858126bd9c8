"""The "Train LoRA" tab and its API: start a LoRA training run in the background, follow its loss
and sample images, stop it, resume a run cut short, and list the LoRA library.

Training is not a task of the task table: it makes a LoRA, not images. The run itself lives in
`studio.training.jobs.TrainingJobs`; this page only starts it and reads its record every 2 s.
Endpoints: /train_lora (-> job id), /train_status, /stop_training, /training_runs,
/resume_training (-> job id), /discard_training_run and /loras.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.deploy import on_zero_gpu
from studio.images import open_image
from studio.training.config import MAX_IMAGES, MIN_IMAGES
from studio.training.jobs import ACTIVE, RESUMABLE, ZERO_GPU_NOTICE, TrainingJobs
from studio.ui.lora_picker import library_records
from studio.ui.tab import status_html
from studio.ui.train_settings import advanced_settings, api_order, basic_settings, make_job, named_handler

LORA_COLUMNS = ["name", "trigger_word", "base_model", "rank", "steps", "date"]  # /loras's keys
LORA_HEADERS = ["Name", "Trigger word", "Base model", "Rank", "Steps", "Date"]  # the table's


def trainable_models(registry: Any) -> list[str]:
    """Base models that are full checkpoints (a distilled LoRA-on-a-base cannot be trained on)."""
    return [name for name in registry.names("base") if registry.get(name).lora is None]


def describe(record: dict) -> tuple[str, str]:
    """The status line's text and kind for a job record."""
    state, step, total = record["state"], record["step"], record["total"]
    if state == "queued":
        message = record["message"]  # who holds the GPU, or "generating class image i of n"
        return (message[:1].upper() + message[1:] if message else "Queued: waiting for the GPU…"), "waiting"
    if state == "running":
        eta = f" · about {record['eta_s']:.0f} s left" if record["eta_s"] is not None else ""
        loss = f" · loss {record['losses'][-1]:.4f}" if record["losses"] else ""
        return f"Step {step} of {total}{loss}{eta}", "running"
    if state == "done":
        return f"Done: LoRA {record['lora']!r} is in the library ({total} steps).", "info"
    if state == "stopped":
        return f"Stopped at step {step} of {total}; Resume continues it from there.", "stopped"
    return f"Training failed: {record['error']}", "error"


def run_notice(run: dict, count: int) -> str:
    """The sentence about an unfinished run, e.g. "The run 'my-dog' stopped at step 300 of 800
    when Studio closed."; `count` runs are unfinished in all."""
    where = f"step {run['step']} of {run['total']}"
    text = (f"The run '{run['name']}' stopped at {where} when Studio closed." if run["state"] == "interrupted"
            else f"The run '{run['name']}' was stopped at {where}.")
    more = f" {count - 1} more unfinished: pick one below." if count > 1 else ""
    return f"{text} Resume continues it from its last checkpoint; Discard deletes its folder.{more}"


def loss_frame(record: dict | None) -> pd.DataFrame:
    losses = record["losses"] if record else []
    return pd.DataFrame({"step": list(range(1, len(losses) + 1)), "loss": losses})


def short_date(text: str | None) -> str | None:
    """"2025-01-02T03:04:05+00:00" as "2025-01-02 03:04" for the table; other text as it is."""
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M") if text else text
    except ValueError:  # an uploaded file's own wording
        return text


def library_table(jobs: TrainingJobs) -> pd.DataFrame:
    table = pd.DataFrame(library_records(jobs.library), columns=LORA_COLUMNS)
    table["date"] = table["date"].map(short_date)
    return table.rename(columns=dict(zip(LORA_COLUMNS, LORA_HEADERS)))


def build_train_tab(jobs: TrainingJobs, registry: Any, default_model: str, owners: Any, loaded: Any) -> None:
    """`owners` (studio.owners.Owners) says whose runs a request sees; `loaded` is the page-load event
    that tells it whose page this is."""
    models = trainable_models(registry)
    gr.Markdown(f"Teach a model one subject from {MIN_IMAGES}-{MAX_IMAGES} photos of it. The result is a LoRA "
                "in the library: pick it under the LoRAs box of any tab, and put the trigger word in the prompt.")
    if on_zero_gpu():
        gr.Markdown(f"**{ZERO_GPU_NOTICE}**", elem_id="train-zero-gpu")
    with gr.Row():
        with gr.Column():
            basic = basic_settings(models, default_model)
            with gr.Row():
                train_button = gr.Button("Train", variant="primary", elem_id="train-start",
                                         interactive=not on_zero_gpu())
                stop_button = gr.Button("Stop", elem_id="train-stop")
            settings = api_order(basic, advanced_settings(basic["learning_rate"]))
        with gr.Column():
            with gr.Group(visible=False, elem_id="train-runs") as notice:
                notice_text = gr.Markdown("", elem_id="train-runs-text")
                run_choice = gr.Dropdown([], label="Unfinished runs", visible=False, elem_id="train-runs-choice")
                with gr.Row():
                    resume_button = gr.Button("Resume", variant="primary", size="sm", elem_id="train-resume",
                                              interactive=not on_zero_gpu())
                    discard_button = gr.Button("Discard", size="sm", elem_id="train-discard")
            status = gr.HTML(status_html("Upload photos and press Train."), elem_id="train-status")
            plot = gr.LinePlot(loss_frame(None), x="step", y="loss", title="Loss", elem_id="train-loss")
            with gr.Column(visible=False) as sample_box:
                sample_caption = gr.Markdown("", elem_id="train-samples-caption")
                # Four fixed columns, one row high: fitted columns would blow two samples up to half-width
                # squares that the height crops
                samples = gr.Gallery(label="Samples", columns=4, fit_columns=False, height=190, object_fit="contain",
                                     interactive=False, format="png", elem_id="train-samples")
            loras = gr.Dataframe(library_table(jobs), headers=LORA_HEADERS, label="LoRA library", interactive=False,
                                 elem_id="train-loras")
            upload_panel(jobs, registry, default_model, loras)
    job_id = gr.State("")  # the job this page follows
    shown = gr.State("")  # the finished job whose end the page already shows
    shown_samples = gr.State("")  # "<job id>:<step>" of the samples shown
    timer = gr.Timer(2.0)

    # -- the API
    def train_lora(values: dict, request: gr.Request) -> str:
        try:
            config, photos, captions = make_job(values)
            return jobs.start(config, photos, captions, owners.of(request))
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def train_status(job_id: str) -> dict:
        """A job's state (queued, running, done, stopped, failed), step, total, losses, ETA, error, LoRA name,
        and its latest sample images (paths), their step and prompt."""
        return api_call(jobs.status, job_id)

    def stop_training(job_id: str) -> None:
        """Stop a job at its next step; it keeps a checkpoint, so /resume_training continues it later."""
        api_call(jobs.stop, job_id)

    def training_runs(request: gr.Request) -> list[dict]:
        """Your runs on disk, newest first: name, model, state (also "interrupted": cut short when Studio
        closed), step, total, updated, and job_id while this Studio trains it."""
        return jobs.runs(owners.of(request))

    def resume_training(name: str, request: gr.Request) -> str:
        """Train an interrupted or stopped run again from its saved photos and settings, from its last
        checkpoint; returns the job id for /train_status."""
        return api_call(jobs.resume, name, owners.of(request))

    def discard_training_run(name: str, request: gr.Request) -> None:
        """Delete a run's folder (photos, checkpoints, samples); a finished LoRA stays in the library."""
        api_call(jobs.discard, name, owners.of(request))

    def list_loras() -> list[dict]:
        """The LoRA library: name, trigger word, base model, rank, steps and date of each LoRA."""
        return library_records(jobs.library)

    names = list(settings)
    api_button, api_job = gr.Button(visible=False), gr.Textbox(visible=False)
    api_button.click(named_handler(train_lora, names, "train_lora",
                                   f"Start training a LoRA on {MIN_IMAGES}-{MAX_IMAGES} photos in the background; "
                                   "returns the job id for /train_status."),
                     list(settings.values()), api_job, api_name="train_lora", show_progress="hidden",
                     preprocess=False)  # raw values reach validation, whose errors name the field
    for fn in (train_status, stop_training, training_runs, resume_training, discard_training_run):
        gr.api(fn, api_name=fn.__name__, queue=False)
    gr.api(list_loras, api_name="loras", queue=False)

    # -- the page: errors are a message in the status line
    private = dict(api_visibility="private", queue=False, show_progress="hidden")

    def runs_notice(owner: str | None, selected: str | None = None) -> list:
        """Updates for [notice, notice_text, run_choice]: `owner`'s unfinished runs, `selected` first shown."""
        runs = [r for r in jobs.runs(owner) if r["state"] in RESUMABLE]
        if not runs:
            return [gr.update(visible=False), "", gr.update(choices=[], value=None, visible=False)]
        run = next((r for r in runs if r["name"] == selected), runs[0])
        return [gr.update(visible=True), run_notice(run, len(runs)),
                gr.update(choices=[r["name"] for r in runs], value=run["name"], visible=len(runs) > 1)]

    def follow(new_job: str, text: str) -> list:
        """Updates for [job_id, status, sample_box, plot] when the page follows a new job."""
        return [new_job, status_html(text, "waiting"), gr.update(visible=False), loss_frame(None)]

    def on_train(request: gr.Request, *values):
        try:
            config, photos, captions = make_job(dict(zip(names, values)))
            new_job = jobs.start(config, photos, captions, owners.of(request))
        except ValueError as exc:
            return gr.skip(), status_html(str(exc), "error"), gr.skip(), gr.skip()
        return follow(new_job, "Starting…")

    def on_resume(request: gr.Request, name: str | None):
        owner = owners.of(request)
        try:
            new_job = jobs.resume(name or "", owner)
        except ValueError as exc:
            return [gr.skip(), status_html(str(exc), "error"), gr.skip(), gr.skip(), *runs_notice(owner, name)]
        return [*follow(new_job, f"Resuming '{name}'…"), *runs_notice(owner)]

    def on_discard(request: gr.Request, name: str | None):
        owner = owners.of(request)
        try:
            jobs.discard(name or "", owner)
        except ValueError as exc:
            return [status_html(str(exc), "error"), *runs_notice(owner, name)]
        return [status_html(f"Discarded the run '{name}'.", "info"), *runs_notice(owner)]

    def on_load(request: gr.Request):
        """A page opened while one of its owner's runs trains follows it; unfinished runs are offered to resume."""
        owner = owners.of(request)
        active = [r["job_id"] for r in jobs.runs(owner) if r["job_id"]]
        return [active[0] if active else gr.skip(), *runs_notice(owner)]

    def pick_run(request: gr.Request, name: str | None):
        return runs_notice(owners.of(request), name)

    def on_tick(request: gr.Request, current: str, done_shown: str, samples_seen: str):
        skip = [gr.skip()] * len(ticked)  # one per output: Gradio refuses a shorter answer
        if not current:
            return skip
        try:
            record = jobs.status(current)
        except ValueError:  # a job of an earlier process: nothing to follow
            return skip
        finished = record["state"] not in ACTIVE
        if finished and done_shown == current:
            return skip  # the end is already on the page
        text, kind = describe(record)
        html = status_html(text, kind, record["step"], record["total"]) if kind == "running" else status_html(text, kind)
        seen = f"{current}:{record['sample_step']}"
        if record["samples"] and seen != samples_seen:  # our own PNGs, read once per new set
            sample_updates = [gr.update(visible=True), [open_image(p) for p in record["samples"]],
                              f"Samples at step {record['sample_step']}, prompt: *{record['sample_prompt']}*", seen]
        else:
            sample_updates = [gr.skip()] * 4
        end = [library_table(jobs), current, *runs_notice(owners.of(request))] if finished else [gr.skip()] * 5
        return [html, loss_frame(record), *sample_updates, *end]

    notice_parts = [notice, notice_text, run_choice]
    follows = [job_id, status, sample_box, plot]
    train_button.click(on_train, list(settings.values()), follows, **private)
    stop_button.click(lambda current: jobs.stop(current) if current else None, job_id, None, **private)
    resume_button.click(on_resume, run_choice, [*follows, *notice_parts], **private)
    discard_button.click(on_discard, run_choice, [status, *notice_parts], **private)
    run_choice.input(pick_run, run_choice, notice_parts, **private)
    loaded.then(on_load, None, [job_id, *notice_parts], **private)  # once the page's owner is known
    ticked = [status, plot, sample_box, samples, sample_caption, shown_samples, loras, shown, *notice_parts]
    timer.tick(on_tick, [job_id, shown, shown_samples], ticked, **private)


def api_call(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, its ValueError shown to an API caller as a plain message."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


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
        return status_html(f"Added {added!r}: use it as <lora:{added}:1>.", "info"), library_table(jobs)

    add.click(on_add, [upload, name, model], [status, table], api_visibility="private", queue=False)
    return panel
