"""Device decisions: small pure functions of a `DeviceInfo`, whose probe the model manager takes
as an argument, so tests can pretend to have a 24 GB GPU or an 8 GB one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from studio.models.registry import FamilyVram

GB = 1024**3
Offload = Literal["none", "model", "sequential"]


@dataclass(frozen=True)
class DeviceInfo:
    device: Literal["cuda", "mps", "cpu"]
    free_bytes: int  # free accelerator memory; for "cpu" the available RAM
    ram_bytes: int  # available system RAM


def probe_device() -> DeviceInfo:
    """The real probe: CUDA, then Apple MPS, then CPU."""
    import psutil
    import torch

    ram = psutil.virtual_memory().available
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return DeviceInfo("cuda", free, ram)
    if torch.backends.mps.is_available():
        return DeviceInfo("mps", ram, ram)  # unified memory
    return DeviceInfo("cpu", ram, ram)


def choose_dtype(info: DeviceInfo) -> str:
    """fp16 on accelerators (half the memory, tensor cores), fp32 on CPU where fp16 is slow."""
    return "float16" if info.device in ("cuda", "mps") else "float32"


def choose_offload(info: DeviceInfo, vram_gb: FamilyVram) -> Offload:
    """Whole pipeline on the GPU if it fits, else model offload, else sequential offload.

    `vram_gb` is the family's need from the registry (`families.<name>.vram_gb`)."""
    if info.device != "cuda":
        return "none"  # CPU needs no offload; MPS shares memory with the CPU
    free_gb = info.free_bytes / GB
    return "none" if free_gb >= vram_gb.full else "model" if free_gb >= vram_gb.model_offload else "sequential"


def memory_budget(info: DeviceInfo, offload: Offload) -> int:
    """Bytes of weights the manager may keep loaded at once (the LRU's capacity)."""
    if info.device == "cuda" and offload == "none":
        return int(info.free_bytes * 0.8)  # leave room for activations and the VAE decode
    return int(info.ram_bytes * 0.6)  # offloaded and CPU weights live in system RAM
