"""The Train LoRA tab's settings: the photos and the common settings, then an "Advanced" accordion
(samples, prior preservation, text-encoder LoRA, optimizer, batches); and the TrainConfig, photos
and captions that their values (from the page or an API caller) make.

The widgets show TrainConfig's defaults, and `/train_lora`'s keywords are the same names with the
same defaults (Gradio takes an API parameter's default from its widget's initial value).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from studio.images import open_image
from studio.training.config import MAX_IMAGES, MIN_IMAGES, TrainConfig
from studio.ui.tab import upload_path
from studio.ui.widgets import integral, optional_number

DEFAULTS = TrainConfig(model="", trigger_word="")  # the page's defaults are the config's
OPTIMIZERS = [("AdamW", "adamw"), ("Prodigy", "prodigy")]
# Prodigy estimates the step size itself and expects a learning rate of 1 (Mishchenko & Defazio
# 2023, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"); AdamW takes the config's.
OPTIMIZER_LR = {"adamw": DEFAULTS.learning_rate, "prodigy": 1.0}
INTEGERS = ("max_train_steps", "rank", "seed", "batch_size", "sample_every", "num_samples", "checkpoint_every",
            "num_class_images", "gradient_accumulation")
FLOATS = ("learning_rate", "text_encoder_lr", "prior_loss_weight")


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
    if text is not None and not isinstance(text, str):
        raise ValueError(f"captions must be text, one caption a line, got {text!r:.100}")
    if not text or not text.strip():
        return None
    lines = [line.strip() or None for line in text.rstrip().splitlines()]
    if len(lines) > count:
        raise ValueError(f"captions must be at most one line per photo ({count}), got {len(lines)} lines")
    return lines + [None] * (count - len(lines))


def make_job(values: dict[str, Any]) -> tuple[TrainConfig, list, list[str | None] | None]:
    """(config, photos, captions) from the settings' values, as the page's widgets give them or raw
    as an API caller sent them; ValueError names what is wrong."""
    photos = open_images(upload_paths(values["images"]))
    captions = parse_captions(values["captions"], len(photos))
    settings = {k: v for k, v in values.items() if k not in ("images", "captions")}
    settings["trigger_word"] = settings["trigger_word"] or ""
    settings["min_snr_gamma"] = optional_number(settings["min_snr_gamma"])  # empty: plain MSE
    for name in (*INTEGERS, *FLOATS):  # "4" and 4.0 are 4; the rest is refused by validation, by name
        settings[name] = integral(optional_number(settings[name]))
    return TrainConfig(**settings), photos, captions


def upload_paths(files: Any) -> list[str]:
    """The photos' paths from a list of uploads (FileData dicts from an API caller, paths from the
    page), each inside Gradio's upload folder (studio.ui.tab.upload_path)."""
    if files is None:
        return []
    if not isinstance(files, list):
        raise ValueError(f"images must be a list of uploaded image files, got {files!r:.100}")
    return [upload_path(f, "images") for f in files]


def basic_settings(models: list[str], default_model: str) -> dict[str, Any]:
    """The photos and the settings every run sets: widgets by name."""
    d = lambda name: getattr(DEFAULTS, name)  # noqa: E731
    images = gr.File(label=f"Photos ({MIN_IMAGES}-{MAX_IMAGES})", file_count="multiple", file_types=["image"],
                     type="filepath", elem_id="train-images")
    captions = gr.Textbox("", label="Captions (optional)", lines=3, elem_id="train-captions",
                          info="One per line, in the photos' order; an empty line uses the instance prompt")
    with gr.Row():
        trigger_word = gr.Textbox(label="Trigger word", placeholder="sks", elem_id="train-trigger",
                                  info="A rare word that will mean your subject")
        name = gr.Textbox(label="Name", value=d("name"), elem_id="train-name",
                          info="The LoRA's name in the library and its run's")
    instance_prompt = gr.Textbox(label="Instance prompt", value=d("instance_prompt"), elem_id="train-prompt",
                                 info="'{trigger}' is replaced by the trigger word")
    model = gr.Dropdown(models, value=default_model if default_model in models else models[0], label="Base model",
                        elem_id="train-model")
    with gr.Row():
        max_train_steps = gr.Number(d("max_train_steps"), precision=0, label="Steps", info="1-20000",
                                    elem_id="train-steps")
        learning_rate = gr.Number(d("learning_rate"), label="Learning rate", info="AdamW 1e-4; Prodigy 1",
                                  elem_id="train-lr")
        rank = gr.Number(d("rank"), precision=0, label="Rank", info="1-128", elem_id="train-rank")
    return dict(images=images, trigger_word=trigger_word, instance_prompt=instance_prompt,
                max_train_steps=max_train_steps, rank=rank, learning_rate=learning_rate, model=model, name=name,
                captions=captions)


def advanced_settings(learning_rate: gr.Number) -> dict[str, Any]:
    """The "Advanced" accordion's widgets by name; choosing an optimizer sets `learning_rate`."""
    d = lambda name: getattr(DEFAULTS, name)  # noqa: E731
    with gr.Accordion("Advanced", open=False, elem_id="train-advanced"):
        with gr.Row():
            sample_every = gr.Number(d("sample_every"), precision=0, label="Sample every", info="steps",
                                     elem_id="train-sample-every")
            num_samples = gr.Number(d("num_samples"), precision=0, label="Samples", info="images each time",
                                    elem_id="train-num-samples")
            checkpoint_every = gr.Number(d("checkpoint_every"), precision=0, label="Checkpoint every",
                                         info="steps: what a crash can lose", elem_id="train-checkpoint-every")
        sample_prompt = gr.Textbox(label="Sample prompt", value=d("sample_prompt"), elem_id="train-sample-prompt",
                                   info="What the samples show; '{trigger}' is replaced by the trigger word")
        class_prompt = gr.Textbox(label="Prior preservation: class prompt", value=d("class_prompt"),
                                  placeholder="a photo of a dog", elem_id="train-class-prompt",
                                  info="The base model paints this class first, and training keeps it: the "
                                       "LoRA learns your dog, not that every dog is yours. Empty: off")
        with gr.Row():
            num_class_images = gr.Number(d("num_class_images"), precision=0, label="Class images",
                                         elem_id="train-class-images")
            prior_loss_weight = gr.Number(d("prior_loss_weight"), label="Prior loss weight",
                                          elem_id="train-prior-weight")
        with gr.Row(equal_height=True):
            train_text_encoder = gr.Checkbox(d("train_text_encoder"), label="Text-encoder LoRA",
                                             info="Also adapts the text encoder: closer likeness, more memory",
                                             elem_id="train-text-encoder")
            text_encoder_lr = gr.Number(d("text_encoder_lr"), label="Text-encoder learning rate",
                                        elem_id="train-te-lr")
        with gr.Row():
            optimizer = gr.Dropdown(OPTIMIZERS, value=d("optimizer"), label="Optimizer", elem_id="train-optimizer")
            gradient_accumulation = gr.Number(d("gradient_accumulation"), precision=0, label="Gradient accumulation",
                                              info="1-64", elem_id="train-accumulation")
            batch_size = gr.Number(d("batch_size"), precision=0, label="Batch size", info="1-64",
                                   elem_id="train-batch")
        with gr.Row(equal_height=True):
            seed = gr.Number(d("seed"), precision=0, label="Seed", elem_id="train-seed")
            min_snr_gamma = gr.Textbox("" if d("min_snr_gamma") is None else f"{d('min_snr_gamma'):g}",
                                       label="Min-SNR γ", placeholder="off", info="Empty: plain MSE",
                                       elem_id="train-snr")
            random_flip = gr.Checkbox(d("random_flip"), label="Random flip", elem_id="train-flip",
                                      info="Off for text, logos and asymmetric subjects")
    # Prodigy wants a learning rate of 1, AdamW the config's: choosing one sets the box
    optimizer.input(lambda chosen: OPTIMIZER_LR[chosen], optimizer, learning_rate, api_visibility="private",
                    queue=False)
    return dict(seed=seed, batch_size=batch_size, min_snr_gamma=min_snr_gamma, random_flip=random_flip,
                sample_every=sample_every, num_samples=num_samples, checkpoint_every=checkpoint_every,
                sample_prompt=sample_prompt,
                class_prompt=class_prompt, num_class_images=num_class_images, prior_loss_weight=prior_loss_weight,
                train_text_encoder=train_text_encoder, text_encoder_lr=text_encoder_lr, optimizer=optimizer,
                gradient_accumulation=gradient_accumulation)


def api_order(basic: dict[str, Any], advanced: dict[str, Any]) -> dict[str, Any]:
    """Every setting's widget by name, in /train_lora's parameter order (its first ten as they always were)."""
    widgets = {**basic, **advanced}
    first = ["images", "trigger_word", "instance_prompt", "max_train_steps", "rank", "learning_rate", "seed", "model",
             "name", "batch_size"]
    return {name: widgets[name] for name in [*first, *(n for n in widgets if n not in first)]}


def named_handler(fn: Callable[[dict[str, Any], Any], Any], names: list[str], api_name: str, doc: str) -> Callable:
    """`fn(values: dict, request)` as a Gradio handler whose parameters are `names`: the API's keywords."""
    def handler(*args):
        *values, request = args
        return fn(dict(zip(names, values)), request)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names]
                                              + [inspect.Parameter("request", kind, default=None, annotation=gr.Request)])
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__, handler.__doc__ = api_name, doc
    return handler
