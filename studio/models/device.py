"""Device decisions: small pure functions of a `DeviceInfo`, whose probe the model manager takes
as an argument, so tests can pretend to have a 24 GB GPU or an 8 GB one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from studio.deploy import on_zero_gpu
from studio.models.registry import FamilyVram

GB = 1024**3
Offload = Literal["none", "model", "sequential"]


@dataclass(frozen=True)
class DeviceInfo:
    device: Literal["cuda", "mps", "cpu"]
    free_bytes: int  # free accelerator memory; for "cpu" the available RAM
    ram_bytes: int  # available system RAM
    index: int = 0  # which GPU, for "cuda" (--gpus)

    @property
    def torch_device(self) -> str:
        """The device as torch names it: "cuda:1", "mps", "cpu"."""
        return f"cuda:{self.index}" if self.device == "cuda" else self.device


# ZeroGPU lends one "large" slice of an H200 per call: 69.5 GiB (the `spaces` package's
# zero/configs.json; the Hub's docs say 70 GB).
ZERO_GPU_BYTES = 74_625_056_768


def zero_gpu_info(ram: int) -> DeviceInfo:
    """ZeroGPU's device, known without touching CUDA: the Space's process has no GPU until a
    decorated call borrows one, and initialising CUDA there breaks every later call.
    STUDIO_ZERO_GPU_DEVICE=cpu runs the calls on the CPU (tests, a trial on a machine without a GPU)."""
    if os.environ.get("STUDIO_ZERO_GPU_DEVICE", "cuda") == "cpu":
        return DeviceInfo("cpu", ram, ram)
    return DeviceInfo("cuda", ZERO_GPU_BYTES, ram)


def probe_device(index: int = 0) -> DeviceInfo:
    """The real probe: ZeroGPU's slice on a ZeroGPU Space, else CUDA GPU `index`, then Apple MPS,
    then CPU."""
    import psutil

    ram = psutil.virtual_memory().available
    if on_zero_gpu():
        return zero_gpu_info(ram)
    import torch

    if torch.cuda.is_available():
        if index >= torch.cuda.device_count():
            raise ValueError(f"GPU {index} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        free, _total = torch.cuda.mem_get_info(index)
        return DeviceInfo("cuda", free, ram, index)
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
