"""Scheduler (sampler) names users know from A1111/Fooocus, mapped to diffusers schedulers.

Each name is a diffusers scheduler class plus the config overrides that make it that sampler; the
scheduler is always built with `from_config` from the model's own scheduler config, so the
model's training betas and timestep spacing are kept.
"""

from __future__ import annotations

from typing import Any

# name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    # Distilled few-step models: SDXL-Lightning wants Euler on "trailing" timesteps (ComfyUI's
    # sgm_uniform), LCM-LoRA its own consistency sampler.
    "Euler trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "LCM": ("LCMScheduler", {}),
}


def check_scheduler_name(name: str) -> None:
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {name!r}")


def make_scheduler(name: str, base_config: dict):
    """A new scheduler `name` built from a model's original scheduler config."""
    import diffusers

    check_scheduler_name(name)
    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)
