"""The settings of one LoRA training run, each default chosen for one face or product learned in
roughly 500-1000 steps from 3-30 photos."""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_IMAGES, MAX_IMAGES = 3, 30  # fewer cannot separate subject from background; more is a fine-tune


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
    sample_every: int = 200  # for the UI's preview images (the core does not sample)
    # The text encoders stay frozen: the trigger word's embedding is enough for one subject and
    # training them roughly doubles memory and overfits sooner.
    train_text_encoder: bool = False

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def prompt(self) -> str:
        return self.instance_prompt.replace("{trigger}", self.trigger_word)

    def validate(self, num_images: int | None = None) -> None:
        """Raise ValueError naming the field, the expected range and the value received."""
        _in_range("rank", self.rank, 1, 128)
        if self.alpha is not None and not (math.isfinite(self.alpha) and 0 < self.alpha <= 1024):
            raise ValueError(f"alpha must be in (0, 1024] or None, got {self.alpha!r}")
        _in_range("max_train_steps", self.max_train_steps, 1, 20000)
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and 0 < self.learning_rate <= 1e-2):
            raise ValueError(f"learning_rate must be a finite number in (0, 0.01], got {self.learning_rate!r}")
        _in_range("batch_size", self.batch_size, 1, 64)
        _in_range("gradient_accumulation", self.gradient_accumulation, 1, 64)
        _in_range("checkpoint_every", self.checkpoint_every, 1, 20000)
        _in_range("sample_every", self.sample_every, 1, 20000)
        _in_range("seed", self.seed, 0, 2**31 - 1)
        if self.resolution is not None:
            _in_range("resolution", self.resolution, 64 * 64, 2048 * 2048)
        if self.min_snr_gamma is not None and not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be a positive number or None, got {self.min_snr_gamma!r}")
        if not (1 <= len(self.trigger_word) <= 64) or not self.trigger_word.strip():
            raise ValueError(f"trigger_word must be 1 to 64 characters, not only whitespace, got {self.trigger_word!r}")
        if "{trigger}" not in self.instance_prompt:
            raise ValueError(f"instance_prompt must contain '{{trigger}}', got {self.instance_prompt!r}")
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ValueError(f"name must be a plain file name, got {self.name!r}")
        if self.train_text_encoder:
            raise ValueError("train_text_encoder must be False (text-encoder LoRA is not supported), got True")
        if num_images is not None:
            _in_range("images", num_images, MIN_IMAGES, MAX_IMAGES, what="count")


def _in_range(field: str, value: object, low: int, high: int, what: str = "an integer") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be {what} in [{low}, {high}], got {value!r}")
