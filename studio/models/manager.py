"""One owner for every GPU object: loading, sharing, placement, eviction and locking.

Decisions (device, dtype, offload mode, memory budget) are small pure functions of a
`DeviceInfo`, and the probe that produces it is injected, so tests can pretend to have a 24 GB
GPU or an 8 GB one. Pipelines for related tasks are derived with diffusers' `from_pipe`, which
shares the already-loaded components instead of loading them twice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from studio.models.registry import DepthEntry, ModelEntry, Registry

log = logging.getLogger(__name__)
GB = 1024**3
Offload = Literal["none", "model", "sequential"]
TASKS = ("txt2img", "img2img", "inpaint")

# Free VRAM (GB) a family needs to run fully on the GPU / with whole-model offload in fp16.
# Below the second figure only sequential (layer by layer) offload fits. SDXL's weights are
# about 7 GB in fp16 and a 1024 px decode peaks at a few GB more.
FAMILY_VRAM_GB = {"sdxl": (12.0, 6.0), "sd15": (6.0, 3.0)}


class ModelUnavailable(RuntimeError):
    """The model is neither built in, nor cached, nor downloadable right now."""


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


def choose_offload(info: DeviceInfo, family: str) -> Offload:
    """Whole pipeline on the GPU if it fits, else model offload, else sequential offload."""
    if info.device != "cuda":
        return "none"  # CPU needs no offload; MPS shares memory with the CPU
    full, model = FAMILY_VRAM_GB[family]
    free_gb = info.free_bytes / GB
    return "none" if free_gb >= full else "model" if free_gb >= model else "sequential"


def memory_budget(info: DeviceInfo, offload: Offload) -> int:
    """Bytes of weights the manager may keep loaded at once (the LRU's capacity)."""
    if info.device == "cuda" and offload == "none":
        return int(info.free_bytes * 0.8)  # leave room for activations and the VAE decode
    return int(info.ram_bytes * 0.6)  # offloaded and CPU weights live in system RAM


def pipeline_bytes(pipe: Any) -> int:
    """Bytes held by the parameters and buffers of a pipeline's modules."""
    total = 0
    for module in pipe.components.values():
        for tensor in [*getattr(module, "parameters", list)(), *getattr(module, "buffers", list)()]:
            total += tensor.numel() * tensor.element_size()
    return total


def hub_reachable(repo_id: str) -> None:
    """Raise if `repo_id` cannot be downloaded now (offline, unknown repo, no access)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ConnectionError("HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    HfApi().model_info(repo_id, timeout=5)


def in_hub_cache(entry: ModelEntry) -> bool:
    from huggingface_hub import try_to_load_from_cache

    if getattr(entry, "lora", None) is not None:
        marker = entry.lora.weight_name
    else:
        marker = "model_index.json" if entry.role in ("base", "inpaint") else "config.json"
    return isinstance(try_to_load_from_cache(entry.repo_id, marker), str)


def load_from_pretrained(source: str, entry: ModelEntry, dtype: str, vae: Any = None) -> Any:
    """The one loading path, for Hub repos and built-in tiny models alike."""
    import torch
    from diffusers import AutoPipelineForText2Image

    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, dtype)}
    if entry.variant and dtype == "float16":
        kwargs["variant"] = entry.variant
    if vae is not None:
        kwargs["vae"] = vae
    return AutoPipelineForText2Image.from_pretrained(source, **kwargs)


def load_vae(source: str, dtype: str) -> Any:
    import torch
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(source, torch_dtype=getattr(torch, dtype))


def derive_pipeline(base: Any, task: str) -> Any:
    """A pipeline for `task` sharing every component of `base` (diffusers `from_pipe`)."""
    import diffusers

    auto = {
        "txt2img": diffusers.AutoPipelineForText2Image,
        "img2img": diffusers.AutoPipelineForImage2Image,
        "inpaint": diffusers.AutoPipelineForInpainting,
    }[task]
    return auto.from_pipe(base)


@dataclass
class _Loaded:
    entry: ModelEntry
    pipes: dict[str, Any]  # task -> pipeline; all share the components of pipes["txt2img"]
    nbytes: int
    adapters: set[str] = field(default_factory=set)  # LoRA models loaded on it (by registry name)


@dataclass
class ModelManager:
    """Loads models lazily, keeps an LRU of them within a memory budget, serialises their use."""

    registry: Registry
    cache_dir: Path  # where built-in tiny models are written
    probe: Callable[[], DeviceInfo] = probe_device
    loader: Callable[..., Any] = load_from_pretrained
    hub_check: Callable[[str], None] = hub_reachable
    budget_bytes: int | None = None  # None: derived from the probe
    depth_model: str | None = None  # the depth estimator for the lens blur; None: the registry's first
    lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _loaded: OrderedDict[str, _Loaded] = field(default_factory=OrderedDict, init=False)
    _info: DeviceInfo | None = field(default=None, init=False)
    _depth: tuple[str, Any] | None = field(default=None, init=False)  # (name, transformers pipeline)

    @property
    def device_info(self) -> DeviceInfo:
        if self._info is None:
            self._info = self.probe()
        return self._info

    def source(self, entry: ModelEntry | DepthEntry) -> str:
        """Where `from_pretrained` reads `entry` from; raises ModelUnavailable with the reason."""
        if entry.builtin:
            from studio.models.tiny import ensure_tiny_model

            return str(ensure_tiny_model(entry.builtin, self.cache_dir))
        if in_hub_cache(entry):
            return entry.repo_id
        try:
            self.hub_check(entry.repo_id)
        except Exception as exc:  # any failure means: cannot download now
            raise ModelUnavailable(
                f"model {entry.name!r} ({entry.repo_id}) is not in the local Hugging Face cache and "
                f"cannot be downloaded: {type(exc).__name__}: {exc}"
            ) from exc
        return entry.repo_id

    def resolve_startup_model(self, name: str, fallback: str = "tiny") -> tuple[str, str | None]:
        """The model to start with, and a notice for the user when `fallback` replaces `name`."""
        entry = self.registry.get(name)
        try:
            self.source(entry)
            if entry.lora is not None:
                self.source(self.registry.get(entry.lora.base))
            return name, None
        except ModelUnavailable as exc:
            log.warning("%s; using %r instead", exc, fallback)
            return fallback, (
                f"{exc}. Studio is running the built-in '{fallback}' model instead: it has random "
                "weights, so its images are noise and not meaningful. Connect to the Hugging Face Hub "
                "or pre-download the model, then restart."
            )

    def offload_mode(self, entry: ModelEntry) -> Offload:
        return choose_offload(self.device_info, entry.family)

    def loaded(self) -> list[str]:
        """Names of loaded full models, least recently used first (LoRA models live on them)."""
        return list(self._loaded)

    def adapters(self, name: str) -> list[str]:
        """The LoRA models loaded on full model `name`."""
        return sorted(self._loaded[name].adapters) if name in self._loaded else []

    @contextmanager
    def use(self, name: str, task: str = "txt2img") -> Iterator[Any]:
        """Hold the pipeline for `task` of model `name` exclusively.

        Per-request changes to the pipeline's scheduler are undone on exit, so one request never
        sees another's settings.
        """
        with self.lock:
            pipe = self.pipeline(name, task)
            self._activate(self.registry.get(name))
            scheduler = pipe.scheduler
            try:
                yield pipe
            finally:
                pipe.scheduler = scheduler

    @contextmanager
    def use_depth(self) -> Iterator[tuple[str, Any]]:
        """Hold the depth estimator exclusively: (its registry name, a transformers pipeline).

        It is small (about 25M parameters for Depth Anything V2 small), so once loaded it stays,
        on the accelerator when there is one, outside the LRU of diffusion models."""
        with self.lock:
            entry = self.registry.depth(self.depth_model)
            if self._depth is None or self._depth[0] != entry.name:
                from studio.models.depth import load_depth_estimator

                try:
                    source = self.source(entry)
                except ModelUnavailable as exc:
                    raise ModelUnavailable(f"{exc}. The lens blur needs this depth model; without it, set depth "
                                           "of field to 'prompt words only'.") from exc
                info = self.device_info
                self._depth = (entry.name, load_depth_estimator(source, info.device, choose_dtype(info)))
                log.info("loaded depth model %s", entry.name)
            yield self._depth

    def pipeline(self, name: str, task: str = "txt2img") -> Any:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        with self.lock:
            entry = self.registry.get(name)
            base = self.registry.get(entry.lora.base) if entry.lora else entry
            loaded = self._loaded.get(base.name) or self._load(base)
            self._loaded.move_to_end(base.name)
            if entry.lora is not None and entry.name not in loaded.adapters:
                self._load_adapter(loaded, entry)
            if task not in loaded.pipes:
                loaded.pipes[task] = derive_pipeline(loaded.pipes["txt2img"], task)
            return loaded.pipes[task]

    def _load_adapter(self, loaded: _Loaded, entry: ModelEntry) -> None:
        """Load LoRA model `entry` as a named adapter on the loaded base (diffusers + peft)."""
        loaded.pipes["txt2img"].load_lora_weights(self.source(entry), weight_name=entry.lora.weight_name,
                                                  adapter_name=entry.name)
        loaded.adapters.add(entry.name)
        log.info("loaded %s as a LoRA adapter on %s", entry.name, loaded.entry.name)

    def _activate(self, entry: ModelEntry) -> None:
        """Switch the shared base to `entry`: its adapter alone, or (a full model) no adapter.

        Every derived pipeline shares the UNet and text encoders, so this applies to all tasks."""
        base = self.registry.get(entry.lora.base) if entry.lora else entry
        loaded = self._loaded[base.name]
        pipe = loaded.pipes["txt2img"]
        if entry.lora is not None:
            pipe.enable_lora()
            pipe.set_adapters([entry.name], adapter_weights=[entry.lora.scale])
        elif loaded.adapters:
            pipe.disable_lora()

    def unload(self, name: str) -> None:
        with self.lock:
            if self._loaded.pop(name, None) is not None:
                self._free_accelerator_memory()

    def _load(self, entry: ModelEntry) -> _Loaded:
        if entry.role != "base":
            raise ValueError(f"model {entry.name!r} has role {entry.role!r}; pick a base model")
        info = self.device_info
        dtype = choose_dtype(info)
        vae = None
        if entry.vae and dtype == "float16":
            vae_entry = self.registry.get(entry.vae)
            vae = load_vae(self.source(vae_entry), dtype)
        pipe = self.loader(self.source(entry), entry, dtype, vae=vae)
        nbytes = pipeline_bytes(pipe)
        self._make_room(nbytes, self.offload_mode(entry))
        self._place(pipe, entry)
        pipe.set_progress_bar_config(disable=True)  # progress goes through Studio's step callback
        loaded = self._loaded[entry.name] = _Loaded(entry, {"txt2img": pipe}, nbytes)
        log.info("loaded %s (%.2f GB, %s, offload=%s)", entry.name, nbytes / GB, dtype, self.offload_mode(entry))
        return loaded

    def _make_room(self, nbytes: int, offload: Offload) -> None:
        """Evict least recently used models until `nbytes` more fit in the budget."""
        budget = self.budget_bytes
        if budget is None:
            budget = memory_budget(self.device_info, offload)
        while self._loaded and sum(m.nbytes for m in self._loaded.values()) + nbytes > budget:
            evicted, _ = self._loaded.popitem(last=False)
            log.info("evicted %s to make room", evicted)
        self._free_accelerator_memory()

    def _place(self, pipe: Any, entry: ModelEntry) -> None:
        info = self.device_info
        mode = self.offload_mode(entry)
        if mode == "model":
            pipe.enable_model_cpu_offload()
        elif mode == "sequential":
            pipe.enable_sequential_cpu_offload()
        elif info.device != "cpu":
            pipe.to(info.device)

    def _free_accelerator_memory(self) -> None:
        if self.device_info.device == "cuda":
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()
