"""The loading path for every checkpoint, Hub repos and built-in tiny models alike, and the sizes
the model manager plans memory with. torch and diffusers are imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.models.device import GB
from studio.models.registry import AnnotatorEntry, DepthEntry, Family, ModelEntry

TASKS = ("txt2img", "img2img", "inpaint")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def hub_offline() -> bool:
    """True when the user switched the Hub off (huggingface_hub's own HF_HUB_OFFLINE switch)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(repo_id: str) -> None:
    """Raise if the Hugging Face Hub cannot be reached now (offline, no network).

    A repo the Hub refuses (unknown, gated) still proves the Hub is reachable; its download then
    fails with the Hub's own message."""
    if hub_offline():
        raise ConnectionError("HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(repo_id, timeout=5)
    except HfHubHTTPError:
        return


def _marker(entry: ModelEntry | DepthEntry | AnnotatorEntry) -> str:
    """The file whose presence proves a checkpoint is in the Hugging Face cache."""
    if isinstance(entry, AnnotatorEntry):
        from studio.models.annotators import hub_files

        return hub_files(entry.kind)[0]
    lora = getattr(entry, "lora", None)
    if lora is not None:
        return lora.weight_name
    return "model_index.json" if entry.role in ("base", "inpaint") else "config.json"


def cached_snapshot(entry: ModelEntry | DepthEntry | AnnotatorEntry) -> Path | None:
    """The folder of `entry` in the local Hugging Face cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.repo_id, _marker(entry))
    return Path(found).parent if isinstance(found, str) else None


def weights_bytes(folder: Path, variant: str | None = None, use_variant: bool = False) -> int:
    """Bytes of the weight files under `folder` that loading reads: those tagged `variant`
    ("unet/diffusion_pytorch_model.fp16.safetensors") when it is used, else the untagged ones."""
    files = [p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    tagged = [p for p in files if variant and f".{variant}." in p.name]
    plain = [p for p in files if p not in tagged]
    chosen = (tagged if use_variant else plain) or files
    return sum(p.stat().st_size for p in chosen)


def estimate_bytes(entry: ModelEntry, source: str, family: Family, dtype: str) -> int:
    """What loading `entry` from `source` will take, known before loading it: its weight files when
    they are on disk, else the family's typical size (the registry's `weights_gb`, fp16)."""
    use_variant = dtype == "float16"  # as in load_from_pretrained
    folder = Path(source) if Path(source).is_dir() else cached_snapshot(entry)
    if folder is not None:
        return weights_bytes(folder, entry.variant, use_variant)
    gb = family.weights_gb.controlnet if entry.role == "controlnet" else family.weights_gb.base
    return int(gb * GB * (1 if dtype == "float16" else 2))  # fp32 weights take twice the bytes


def load_from_pretrained(source: str, entry: ModelEntry, dtype: str, vae: Any = None) -> Any:
    """The one loading path: a pipeline for base and inpainting checkpoints, a ControlNetModel for
    ControlNets (a ControlNetUnionModel for union ones), each through diffusers' `from_pretrained`."""
    import diffusers
    import torch

    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, dtype)}
    if entry.variant and dtype == "float16":
        kwargs["variant"] = entry.variant
    if entry.role == "controlnet":
        model_class = diffusers.ControlNetUnionModel if entry.union else diffusers.ControlNetModel
        return model_class.from_pretrained(source, **kwargs)
    if entry.role not in ("base", "inpaint"):
        raise ValueError(f"model {entry.name!r} has role {entry.role!r}; only base, inpaint and controlnet checkpoints load")
    if vae is not None:
        kwargs["vae"] = vae
    auto = diffusers.AutoPipelineForInpainting if entry.role == "inpaint" else diffusers.AutoPipelineForText2Image
    return auto.from_pretrained(source, **kwargs)


def load_vae(source: str, dtype: str) -> Any:
    import diffusers
    import torch

    return diffusers.AutoencoderKL.from_pretrained(source, torch_dtype=getattr(torch, dtype))


def derive_pipeline(root: Any, task: str, controlnets: Sequence[Any] = ()) -> Any:
    """A pipeline for `task` (with these ControlNets) sharing every component of `root`.

    diffusers' `from_pipe` picks the class: SDXL + one ControlNet for txt2img is
    StableDiffusionXLControlNetPipeline, for img2img ...ControlNetImg2ImgPipeline, and so on.
    ControlNet-Union models need the SDXL union pipelines, named here, because the auto pipelines'
    `from_pipe` does not recognise them. The same module may come twice (two units of one model)."""
    import diffusers
    from diffusers.models.controlnets import (
        MultiControlNetModel,
        MultiControlNetUnionModel,
    )

    auto = {
        "txt2img": diffusers.AutoPipelineForText2Image,
        "img2img": diffusers.AutoPipelineForImage2Image,
        "inpaint": diffusers.AutoPipelineForInpainting,
    }[task]
    if not controlnets:
        return auto.from_pipe(root)
    unions = [isinstance(net, diffusers.ControlNetUnionModel) for net in controlnets]
    if not any(unions):
        controlnet = controlnets[0] if len(controlnets) == 1 else MultiControlNetModel(list(controlnets))
        return auto.from_pipe(root, controlnet=controlnet)
    if not all(unions):
        raise ValueError(f"ControlNet-Union models and single-condition ControlNets cannot share one pipeline, "
                         f"got {[type(net).__name__ for net in controlnets]}")
    if not isinstance(root, (diffusers.StableDiffusionXLPipeline, diffusers.StableDiffusionXLInpaintPipeline)):
        raise TypeError(f"ControlNet-Union models work with SDXL pipelines only, got {type(root).__name__}")
    union_pipeline = {
        "txt2img": diffusers.StableDiffusionXLControlNetUnionPipeline,
        "img2img": diffusers.StableDiffusionXLControlNetUnionImg2ImgPipeline,
        "inpaint": diffusers.StableDiffusionXLControlNetUnionInpaintPipeline,
    }[task]
    controlnet = controlnets[0] if len(controlnets) == 1 else MultiControlNetUnionModel(list(controlnets))
    return union_pipeline.from_pipe(root, controlnet=controlnet)


def pipeline_bytes(model: Any) -> int:
    """Bytes held by the parameters and buffers of a pipeline's modules, or of one module."""
    modules = model.components.values() if hasattr(model, "components") else [model]
    total = 0
    for module in modules:
        for tensor in [*getattr(module, "parameters", list)(), *getattr(module, "buffers", list)()]:
            total += tensor.numel() * tensor.element_size()
    return total
