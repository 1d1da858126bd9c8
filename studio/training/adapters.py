"""The trainable LoRA adapters (Hu et al. 2021) of a run: on the UNet's attention projections and,
with `train_text_encoder`, on the text encoders' self-attention, through peft as diffusers'
DreamBooth-LoRA scripts add them."""

from __future__ import annotations

from typing import Any

from studio.training.config import TrainConfig

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection of the UNet
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # every self-attention projection of CLIP
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # the pipeline's attribute names (SD1.5 has the first only)


def trained_components(pipe: Any, config: TrainConfig) -> list[str]:
    """The pipeline components that get a LoRA, UNet first: the order of parameters everywhere
    (optimizer groups, checkpoints, the exported file)."""
    texts = [n for n in TEXT_ENCODERS if getattr(pipe, n, None) is not None] if config.train_text_encoder else []
    return ["unet", *texts]


def targets(component: str) -> list[str]:
    return UNET_TARGETS if component == "unet" else TEXT_TARGETS


def add_lora(module: Any, config: TrainConfig, target_modules: list[str], seed: int) -> None:
    """Give `module` a trainable LoRA (rank and alpha of `config`) initialised from `seed`.

    peft starts B at zero, so the adapted model starts out exactly as the base model; A is
    random, seeded here without touching the caller's random state."""
    import torch
    from peft import LoraConfig

    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=target_modules)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.add_adapter(lora)
    for p in module.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable weights in fp32 even on an fp16 model: small updates survive
    module.train()


def add_loras(pipe: Any, config: TrainConfig) -> dict[str, Any]:
    """{component: module} for every trained component, each with its LoRA added. The UNet's
    LoRA is seeded by `config.seed`, the text encoders' by the next seeds."""
    modules = {}
    for offset, name in enumerate(trained_components(pipe, config)):
        modules[name] = getattr(pipe, name)
        add_lora(modules[name], config, targets(name), config.seed + offset)
    return modules


def lora_parameters(modules: dict[str, Any]) -> dict[str, Any]:
    """{"<component>.<parameter name>": parameter} of the trainable parameters, in training order."""
    return {f"{component}.{name}": p for component, module in modules.items()
            for name, p in module.named_parameters() if p.requires_grad}


def enable_gradient_checkpointing(modules: dict[str, Any]) -> None:
    """Recompute activations in the backward pass instead of storing them (diffusers' and
    transformers' own switches)."""
    for name, module in modules.items():
        if name == "unet":
            module.enable_gradient_checkpointing()
        else:
            module.gradient_checkpointing_enable()
