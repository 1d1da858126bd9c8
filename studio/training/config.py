"""The settings of one LoRA training run, each default chosen for one face or product learned in
roughly 500-1000 steps from 3-30 photos."""

from __future__ import annotations

import math
from dataclasses import dataclass

from studio.fields import text_problem

MIN_IMAGES, MAX_IMAGES = 3, 30  # fewer cannot separate subject from background; more is a fine-tune
OPTIMIZERS = ("adamw", "prodigy")
TEXTS = ("model", "trigger_word", "name", "instance_prompt", "sample_prompt", "class_prompt", "optimizer",
         "mixed_precision")
MIXED_PRECISIONS = ("auto", "bf16", "fp16", "no")


@dataclass(frozen=True)
class TrainConfig:
    model: str  # registry name of the base model (SDXL or SD1.5 family, role "base")
    trigger_word: str  # the rare token that will mean the subject, e.g. "sks"
    name: str = "lora"  # the output file is <run>/<name>.safetensors
    # "{trigger}" is replaced by the trigger word; a caption given for an image replaces the prompt.
    instance_prompt: str = "a photo of {trigger}"
    # Rank 16 holds one identity comfortably (DreamBooth-LoRA reports use 4-32); a higher rank
    # mostly memorises the photos' backgrounds. alpha = rank makes the LoRA scale 1, so the
    # learning rate does not have to be retuned when the rank changes.
    rank: int = 16
    alpha: float | None = None  # None: equal to `rank`
    # 1e-4 with AdamW is the learning rate of diffusers' DreamBooth-LoRA scripts; the subject
    # appears after a few hundred steps without burning in the photos' colours.
    learning_rate: float = 1e-4
    # 800 steps = 40-270 passes over 3-20 photos: enough for a face, before it starts copying poses.
    max_train_steps: int = 800
    batch_size: int = 1  # 1 fits a 24 GB GPU at SDXL's 1 MP; the photos are few anyway
    gradient_accumulation: int = 1  # raise to emulate bigger batches on small GPUs
    seed: int = 0  # fixes the LoRA's start, the data order, flips, noise and timesteps
    resolution: int | None = None  # pixel area; None: the model's default width x height
    # Mirroring doubles the views of a symmetric subject. Turn it off for text, logos and
    # asymmetric subjects (a parting, a watch on one wrist), which the LoRA would learn mirrored.
    random_flip: bool = True
    # Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    # Weighting Strategy"): caps the weight of low-noise timesteps, which converges faster;
    # gamma = 5 is the paper's choice. None: plain MSE.
    min_snr_gamma: float | None = 5.0
    checkpoint_every: int = 100  # 8 checkpoints per default run: little lost to a crash
    # Preview images, rendered only when the caller asks for them (`train(on_sample=...)`):
    # 4 previews per default run show the subject appear without slowing training much.
    sample_every: int = 200
    num_samples: int = 2  # two seeds tell the subject apart from one seed's luck; each is a full generation
    sample_prompt: str = "a photo of {trigger}"  # the previews' prompt; "{trigger}" is replaced
    sample_steps: int = 25  # 25 Euler steps are near-converged for SDXL and SD1.5: a fair preview in seconds
    # Prior preservation (DreamBooth, Ruiz et al. 2023, section 3.3): images of the subject's class
    # ("a photo of a dog"), made by the base model, trained alongside the photos so the class as a
    # whole does not drift towards the subject. Empty: off.
    class_prompt: str = ""
    num_class_images: int = 100  # diffusers' DreamBooth scripts default to 100 (the paper uses ~200 per 1000 steps)
    prior_loss_weight: float = 1.0  # the paper's and diffusers' default: class loss counts as much as the photos'
    class_steps: int = 30  # the class images are kept for the whole run, so they get a full-quality generation
    # Text-encoder LoRA: helps a subject whose trigger word alone does not carry it (faces of
    # people the model has never seen), at the cost of memory and a faster drift into copying.
    train_text_encoder: bool = False
    # diffusers' scripts give the text encoders the UNet's rate unless told otherwise; half of it
    # is common practice for text-encoder LoRAs, which overfit sooner than the UNet's. With Prodigy
    # this field is unused: Prodigy needs one rate for every parameter group (`learning_rate`).
    text_encoder_lr: float = 5e-5
    # "adamw", or "prodigy" (Mishchenko & Defazio 2023), which estimates its step size itself: with
    # it `learning_rate` is a multiplier of that estimate and should be 1.0, as its authors advise.
    optimizer: str = "adamw"
    # CUDA only (CPU always trains in float32): "auto" is bf16 where the GPU supports it (the
    # range of fp32, no loss scaling), else fp16 with a gradient scaler; "no" trains in float32.
    mixed_precision: str = "auto"
    # CUDA only: recompute activations in the backward pass, trading ~20 % speed for the memory
    # that lets SDXL at 1 MP train on a 24 GB GPU.
    gradient_checkpointing: bool = True

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def prompt(self) -> str:
        return self.instance_prompt.replace("{trigger}", self.trigger_word)

    @property
    def samples_prompt(self) -> str:
        return self.sample_prompt.replace("{trigger}", self.trigger_word)

    @property
    def prior_preservation(self) -> bool:
        return bool(self.class_prompt.strip())

    def validate(self, num_images: int | None = None) -> None:
        """Raise ValueError naming the field, the expected range and the value received."""
        for name in TEXTS:  # first: the checks below call string methods on them
            _is_text(name, getattr(self, name))
        _in_range("rank", self.rank, 1, 128)
        alpha = self.alpha
        if alpha is not None and not (_is_finite(alpha) and 0 < alpha <= 1024):
            raise ValueError(f"alpha must be in (0, 1024] or None, got {self.alpha!r}")
        _in_range("max_train_steps", self.max_train_steps, 1, 20000)
        _in_choices("optimizer", self.optimizer, OPTIMIZERS)
        # Prodigy's rate is a multiplier of its own estimate (1.0 advised); AdamW's is the step size.
        _in_interval("learning_rate", self.learning_rate, 10.0 if self.optimizer == "prodigy" else 1e-2)
        if self.train_text_encoder:
            _in_interval("text_encoder_lr", self.text_encoder_lr, 1e-2)
        _in_range("batch_size", self.batch_size, 1, 64)
        _in_range("gradient_accumulation", self.gradient_accumulation, 1, 64)
        _in_range("checkpoint_every", self.checkpoint_every, 1, 20000)
        _in_range("sample_every", self.sample_every, 1, 20000)
        _in_range("num_samples", self.num_samples, 1, 8)
        _in_range("sample_steps", self.sample_steps, 1, 150)
        if not self.sample_prompt.strip():
            raise ValueError(f"sample_prompt must not be empty, got {self.sample_prompt!r}")
        if self.prior_preservation:
            _in_range("num_class_images", self.num_class_images, 1, 1000)
            _in_range("class_steps", self.class_steps, 1, 150)
            _in_interval("prior_loss_weight", self.prior_loss_weight, 10.0)
        _in_choices("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        not_bool = [f for f in ("train_text_encoder", "gradient_checkpointing", "random_flip")
                    if not isinstance(getattr(self, f), bool)]
        if not_bool:
            raise ValueError(f"{not_bool[0]} must be True or False, got {getattr(self, not_bool[0])!r}")
        _in_range("seed", self.seed, 0, 2**31 - 1)
        if self.resolution is not None:
            _in_range("resolution", self.resolution, 64 * 64, 2048 * 2048)
        if self.min_snr_gamma is not None and not (_is_finite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be a positive number or None, got {self.min_snr_gamma!r}")
        if not (1 <= len(self.trigger_word) <= 64) or not self.trigger_word.strip():
            raise ValueError(f"trigger_word must be 1 to 64 characters, not only whitespace, got {self.trigger_word!r}")
        if "{trigger}" not in self.instance_prompt:
            raise ValueError(f"instance_prompt must contain '{{trigger}}', got {self.instance_prompt!r}")
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ValueError(f"name must be a plain file name, got {self.name!r}")
        if num_images is not None:
            _in_range("images", num_images, MIN_IMAGES, MAX_IMAGES, what="count")


def _is_finite(value: object) -> bool:
    """A finite int or float (an int is checked as it is: a 400-digit one would overflow as a float)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (isinstance(value, int) or math.isfinite(value)))


def _is_text(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {value!r:.100}")
    problem = text_problem(value)
    if problem:
        raise ValueError(f"{field} must be text without NUL characters or lone surrogates; it {problem}")


def _in_range(field: str, value: object, low: int, high: int, what: str = "an integer") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be {what} in [{low}, {high}], got {value!r}")


def _in_interval(field: str, value: object, high: float) -> None:
    """A finite number in (0, high]."""
    if not (_is_finite(value) and 0 < value <= high):
        raise ValueError(f"{field} must be a finite number in (0, {high:g}], got {value!r}")


def _in_choices(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
