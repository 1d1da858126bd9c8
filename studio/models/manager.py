"""One owner for every GPU object: loading, sharing, placement, eviction, and leases to use them.

Device decisions (dtype, offload, memory budget) live in `studio.models.device`, the loading
path in `studio.models.loading`, the lease and its queue in `studio.models.lease`. Pipelines for
related tasks and ControlNet sets are derived with diffusers' `from_pipe`, which shares the
already-loaded components instead of loading them twice. A job uses them through a lease: one
job at a time, and what it changed is undone when it ends.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.loras import LoraLibrary

# Re-exported: callers and tests import the device decisions and loading helpers from here.
from studio.models.device import (  # noqa: F401
    GB, DeviceInfo, Offload, choose_dtype, choose_offload, memory_budget, probe_device,
)
from studio.models.lease import LIBRARY_PREFIX, Gate, Lease, plan_lease, snapshot
from studio.models.library import check_library_lora, cross_attention_dim
from studio.models.loading import (  # noqa: F401
    cached_snapshot, derive_pipeline, estimate_bytes, hub_offline, hub_reachable, load_from_pretrained,
    load_vae, pipeline_bytes,
)
from studio.models.registry import AnnotatorEntry, DepthEntry, ModelEntry, Registry

log = logging.getLogger(__name__)
_UNCHECKED = "unchecked"  # the Hub has not been asked yet


class ModelUnavailable(RuntimeError):
    """The model is neither built in, nor cached, nor downloadable right now."""


@dataclass
class _Loaded:
    """One loaded checkpoint: a pipeline (base, inpaint) or a ControlNetModel."""

    entry: ModelEntry
    model: Any  # what from_pretrained returned
    nbytes: int
    # (task, ControlNet names) -> pipeline sharing `model`'s components; `model` itself under its own task
    pipes: dict[tuple[str, tuple[str, ...]], Any] = field(default_factory=dict)
    # LoRA adapter -> the stamp of the file it was loaded from (None for registry LoRAs), least recently used first
    adapters: OrderedDict[str, tuple[int, int] | None] = field(default_factory=OrderedDict)
    placed: Any = None  # the pipeline whose device placement (offload hooks) is installed


@dataclass
class ModelManager:
    """Loads models lazily, keeps an LRU of them within a memory budget, and leases them to jobs."""

    registry: Registry
    cache_dir: Path  # where built-in tiny models are written
    probe: Callable[[], DeviceInfo] = probe_device
    loader: Callable[..., Any] = load_from_pretrained
    hub_check: Callable[[str], None] = hub_reachable  # raises when the Hub cannot be reached
    budget_bytes: int | None = None  # None: derived from the probe
    depth_model: str | None = None  # the depth estimator for the lens blur; None: the registry's first
    annotator_models: dict[str, str] | None = None  # annotator kind -> registry name; unset kinds: the first
    max_adapters: int = 8  # LoRA adapters kept loaded per model (each adds layers to every forward pass)
    lora_dir: Path | None = None  # the user's LoRA library (studio.loras.LoraLibrary); None: no library
    scratch_dir: Path | None = None  # big arrays of an upscale; None: the system's temp folder
    upscale_max_pixels: int | None = None  # the largest upscale output; None: the pipeline's default
    low_memory: bool = False  # after an out-of-memory error: model offload on CUDA, VAE tiling and slicing
    _gate: Gate = field(default_factory=Gate, init=False)
    _loaded: OrderedDict[str, _Loaded] = field(default_factory=OrderedDict, init=False)  # LRU first
    _info: DeviceInfo | None = field(default=None, init=False)
    # "depth", "lineart" -> (registry name, model): small helper models kept outside the LRU
    _helpers: dict[str, tuple[str, Any]] = field(default_factory=dict, init=False)
    _hub: str | None = field(default=_UNCHECKED, init=False)  # why the Hub cannot be used; None: it can

    # -- what is there and what can be loaded -------------------------------------------------

    @property
    def device_info(self) -> DeviceInfo:
        if self._info is None:
            self._info = self.probe()
        return self._info

    def offload_mode(self, entry: ModelEntry) -> Offload:
        mode = choose_offload(self.device_info, self.registry.family(entry.family).vram_gb)
        return "model" if self.low_memory and mode == "none" and self.device_info.device == "cuda" else mode

    @property
    def busy(self) -> bool:
        """A job holds this manager's lease now."""
        return self._gate.holder is not None

    def loaded(self) -> list[str]:
        """Names of loaded checkpoints (models and ControlNets), least recently used first."""
        return list(self._loaded)

    def adapters(self, name: str) -> list[str]:
        """The LoRA adapters loaded on model `name`."""
        return sorted(self._loaded[name].adapters) if name in self._loaded else []

    def source(self, entry: ModelEntry | DepthEntry | AnnotatorEntry) -> str:
        """Where `from_pretrained` reads `entry` from; raises ModelUnavailable with the reason."""
        if entry.builtin:
            from studio.models.tiny import ensure_tiny_model

            return str(ensure_tiny_model(entry.builtin, self.cache_dir))
        if cached_snapshot(entry) is None:
            problem = self._hub_problem(entry.repo_id)
            if problem is not None:
                raise ModelUnavailable(f"model {entry.name!r} ({entry.repo_id}) is not in the local Hugging Face "
                                       f"cache and cannot be downloaded: {problem}")
        return entry.repo_id

    def available(self, name: str) -> str | None:
        """None when model `name` can be loaded now (built in, cached, or the Hub is reachable), else
        a short reason. The Hub is asked at most once per manager, so listing models costs one check."""
        entry = self.registry.get(name)
        needed = [entry]
        if entry.lora is not None:
            needed.append(self.registry.get(entry.lora.base))
        if entry.vae is not None and choose_dtype(self.device_info) == "float16":
            needed.append(self.registry.get(entry.vae))
        for e in needed:
            if not e.builtin and cached_snapshot(e) is None and (problem := self._hub_problem(e.repo_id)):
                return f"not cached and {problem}" if e is entry else f"needs {e.name!r}, which is not cached and {problem}"
        return None

    def _hub_problem(self, repo_id: str) -> str | None:
        """Why nothing can be downloaded now, or None. HF_HUB_OFFLINE is read every time; the
        network is probed once (through `hub_check`) and the answer kept."""
        if hub_offline():
            return "HF_HUB_OFFLINE is set"
        if self._hub == _UNCHECKED:
            try:
                self.hub_check(repo_id)
                self._hub = None
            except Exception as exc:  # any failure means: no downloads now
                self._hub = f"the Hugging Face Hub is unreachable ({type(exc).__name__}: {exc})"
        return self._hub

    def resolve_startup_model(self, name: str) -> tuple[str, str | None]:
        """The base model to start with, and a notice for the user when a built-in model of the same
        family replaces `name` (which is not cached and cannot be downloaded)."""
        entry = self.registry.get(name)
        if entry.role != "base":
            raise ValueError(f"the startup model must be one of {self.registry.names('base')}, got {name!r} (role {entry.role!r})")
        reason = self.available(name)
        if reason is None:
            return name, None
        fallback = next((m.name for m in self.registry.models
                         if m.role == "base" and m.builtin and m.lora is None and m.family == entry.family), None)
        if fallback is None:
            raise ModelUnavailable(f"model {name!r} ({entry.repo_id}) is {reason}, and there is no built-in "
                                   f"{entry.family!r} model to use instead")
        log.warning("model %s is %s; using %r instead", name, reason, fallback)
        return fallback, (
            f"Model {name!r} ({entry.repo_id}) is {reason}. Studio is running the built-in {fallback!r} model instead: "
            "it has random weights, so its images are noise and not meaningful. Connect to the Hugging Face Hub "
            "or pre-download the model, then restart."
        )

    # -- leases -----------------------------------------------------------------------------------

    def lease(self, model: str | None, task: str = "txt2img", *, controlnets: Sequence[str] = (),
              loras: Sequence[tuple[str, float]] = (), exclusive: bool = False, purpose: str = "a generation",
              on_wait: Callable[[str], None] | None = None) -> Lease:
        """Wait for the GPU (first come, first served), then load or reuse what the job needs and
        return the held lease: `lease.pipe` is the pipeline for `model`, `task` and `controlnets`,
        with the LoRA stack active (a LoRA-based model's own LoRA, then `loras` at their weights).

        While waiting, `on_wait(message)` hears about once a second who holds the GPU and the
        caller's place in line. `exclusive` (a training run; `model` may be None) first frees every
        loaded model. Releasing undoes every change the job made on the model's pipelines. Not
        reentrant: asking again from the thread that holds the lease raises RuntimeError.
        """
        plan = plan_lease(self.registry, model, task, controlnets, loras, library=self._check_library_lora)
        lease = Lease(self, plan.entry, task, purpose, exclusive)
        self._gate.enter(lease, on_wait)
        try:
            if exclusive:
                self._free_all()
            if plan.base is not None:
                # 1. The checkpoints, evicting others first when they would not fit
                keep = {plan.base.name, *plan.controlnets}
                loaded = self._ensure_loaded(plan.base, keep)
                nets = [self._ensure_loaded(self.registry.get(n), keep).model for n in plan.controlnets]
                # 2. The pipeline for this task and ControlNet set, sharing the checkpoint's components
                lease.pipe = self._pipeline_for(loaded, task, plan.controlnets, nets)
                # 3. The LoRA adapters, loaded once and kept while there is room
                self._load_adapters(loaded, [name for name, _ in plan.loras])
                # 4. From here on, what changes is undone on release
                self._undo_on_release(lease, loaded)
                self._apply_loras(loaded, plan.loras)
        except BaseException:
            lease.release()
            raise
        return lease

    def recover(self) -> None:
        """After an out-of-memory error: unload everything (the next job loads afresh) and stay in
        low-memory mode until restart, so the retry and the jobs after it fit."""
        with self.lease(None, exclusive=True, purpose="freeing GPU memory after an out-of-memory error"):
            self.low_memory = True

    def _end(self, lease: Lease) -> None:
        """Called by `Lease.release` after the job's changes are undone."""
        if lease.exclusive:
            self._info = None  # the job's memory is free again: measure anew at the next use
        self._gate.leave(lease)

    def _free_all(self) -> None:
        """Make the accelerator ours alone for an exclusive job, and measure it afresh."""
        self._loaded.clear()
        self._helpers.clear()
        self._free_accelerator_memory()
        self._info = None
        self.device_info  # probe now: the job plans with the memory just freed

    def _undo_on_release(self, lease: Lease, loaded: _Loaded) -> None:
        restore = snapshot(list(loaded.pipes.values()))

        def undo() -> None:
            try:
                self._reset_adapters(loaded)
                restore()
            except BaseException:
                # A half-restored model must not serve the next job: drop it, so it is loaded afresh.
                if self._loaded.get(loaded.entry.name) is loaded:
                    del self._loaded[loaded.entry.name]
                raise

        lease.on_release(undo)

    # -- loading, eviction, derived pipelines and adapters (called inside a held lease) -----------

    def _ensure_loaded(self, entry: ModelEntry, keep: set[str]) -> _Loaded:
        if entry.name in self._loaded:
            self._loaded.move_to_end(entry.name)
            return self._loaded[entry.name]
        source = self.source(entry)
        dtype = choose_dtype(self.device_info)
        # Evict before loading, so the old and the new model are never in memory together.
        needed = estimate_bytes(entry, source, self.registry.family(entry.family), dtype)
        self._make_room(needed, self.offload_mode(entry), keep)
        return self._load(entry, source, dtype)

    def _load(self, entry: ModelEntry, source: str, dtype: str) -> _Loaded:
        vae = None
        if entry.vae and dtype == "float16":
            vae = load_vae(self.source(self.registry.get(entry.vae)), dtype)
        model = self.loader(source, entry, dtype, vae=vae)
        loaded = _Loaded(entry, model, pipeline_bytes(model))
        if entry.role != "controlnet":  # a ControlNet is placed with the pipelines that use it
            model.set_progress_bar_config(disable=True)  # progress goes through Studio's step callback
            loaded.pipes[("inpaint" if entry.role == "inpaint" else "txt2img", ())] = model
            self._place(model, entry)
            loaded.placed = model
        self._loaded[entry.name] = loaded
        log.info("loaded %s (%.2f GB, %s, offload=%s)", entry.name, loaded.nbytes / GB, dtype, self.offload_mode(entry))
        return loaded

    def _make_room(self, nbytes: int, offload: Offload, keep: set[str]) -> None:
        """Evict least recently used checkpoints, except those in `keep`, until `nbytes` more fit."""
        budget = self.budget_bytes if self.budget_bytes is not None else memory_budget(self.device_info, offload)
        evicted = False
        while sum(m.nbytes for m in self._loaded.values()) + nbytes > budget:
            victim = next((name for name in self._loaded if name not in keep), None)
            if victim is None:
                log.warning("%.2f GB more does not fit in the %.2f GB budget even alone; loading anyway",
                            nbytes / GB, budget / GB)
                break
            self._evict(victim)
            evicted = True
        if evicted:
            self._free_accelerator_memory()

    def _evict(self, name: str) -> None:
        gone = self._loaded.pop(name)
        if gone.entry.role == "controlnet":  # the pipelines built around it go with it
            for loaded in self._loaded.values():
                for key in [k for k in loaded.pipes if name in k[1]]:
                    if loaded.pipes.pop(key) is loaded.placed:
                        loaded.placed = None
        log.info("unloaded %s", name)

    def _pipeline_for(self, loaded: _Loaded, task: str, controlnets: tuple[str, ...], nets: list[Any]) -> Any:
        key = (task, controlnets)
        pipe = loaded.pipes.get(key)
        if pipe is None:
            pipe = loaded.pipes[key] = derive_pipeline(loaded.model, task, nets)
            pipe.set_progress_bar_config(disable=True)
        # Offload hooks belong to the pipeline that installed them (and a new ControlNet has none):
        # place again whenever the job's pipeline is not the one placed last.
        if loaded.placed is not pipe:
            self._place(pipe, loaded.entry)
            loaded.placed = pipe
        return pipe

    def _load_adapters(self, loaded: _Loaded, names: list[str]) -> None:
        """Load the LoRAs `names` as named adapters (diffusers + peft), dropping the least recently
        used others beyond `max_adapters`. A library LoRA whose file changed since it was loaded
        (replaced, or retrained) is loaded again."""
        for name in names:
            folder, weight_name, stamp = self._adapter_file(name)
            if name in loaded.adapters and loaded.adapters[name] == stamp:
                loaded.adapters.move_to_end(name)
                continue
            if name in loaded.adapters:  # a stale copy of a library LoRA
                loaded.model.delete_adapters([name])
                del loaded.adapters[name]
            while len(loaded.adapters) >= self.max_adapters:
                victim = next((n for n in loaded.adapters if n not in names), None)
                if victim is None:
                    break  # all are needed by this job
                loaded.model.delete_adapters([victim])
                del loaded.adapters[victim]
                log.info("deleted LoRA adapter %s from %s", victim, loaded.entry.name)
            loaded.model.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
            loaded.adapters[name] = stamp
            log.info("loaded %s as a LoRA adapter on %s", name, loaded.entry.name)

    def _adapter_file(self, name: str) -> tuple[str, str | None, tuple[int, int] | None]:
        """(folder or repo, file name, stamp) of adapter `name`: a registry LoRA, or "library:<name>"."""
        if not name.startswith(LIBRARY_PREFIX):
            entry = self.registry.get(name)
            return self.source(entry), entry.lora.weight_name, None
        path = LoraLibrary(self.lora_dir).path(name[len(LIBRARY_PREFIX):])
        stat = path.stat()
        return str(path.parent), path.name, (stat.st_mtime_ns, stat.st_size)

    def _check_library_lora(self, name: str, base: ModelEntry) -> str:
        """plan_lease's check of a LoRA from the library (studio.models.library)."""
        folder = Path(self.source(base)) if base.builtin else cached_snapshot(base)
        return check_library_lora(self.registry, self.lora_dir, name, base, cross_attention_dim(folder))

    def _apply_loras(self, loaded: _Loaded, stack: tuple[tuple[str, float], ...]) -> None:
        """Activate exactly `stack` on the model (shared by every derived pipeline, so by all tasks)."""
        if not stack:
            self._reset_adapters(loaded)
            return
        loaded.model.enable_lora()  # the last release disabled them; set_adapters alone does not enable
        loaded.model.set_adapters([name for name, _ in stack], adapter_weights=[w for _, w in stack])

    def _reset_adapters(self, loaded: _Loaded) -> None:
        """No adapter active: the model computes exactly what it did before any was loaded."""
        if loaded.adapters:
            loaded.model.disable_lora()

    def _place(self, pipe: Any, entry: ModelEntry) -> None:
        info, mode = self.device_info, self.offload_mode(entry)
        if mode == "model":
            pipe.enable_model_cpu_offload(gpu_id=info.index)
        elif mode == "sequential":
            pipe.enable_sequential_cpu_offload(gpu_id=info.index)
        elif info.device != "cpu":
            pipe.to(info.torch_device)
        if self.low_memory and getattr(pipe, "vae", None) is not None:  # decode in tiles, one image at a time
            pipe.vae.enable_tiling()
            pipe.vae.enable_slicing()

    def _free_accelerator_memory(self) -> None:
        if self.device_info.device == "cuda":
            import gc

            import torch

            gc.collect()
            with torch.cuda.device(self.device_info.index):
                torch.cuda.empty_cache()

    # -- conveniences over lease() --------------------------------------------------------------

    def pipeline(self, name: str, task: str = "txt2img") -> Any:
        """The pipeline for `task` of model `name`, loaded but not held (tests, benchmarks; jobs lease)."""
        with self.lease(name, task, purpose="loading a model") as lease:
            return lease.pipe

    def unload(self, name: str) -> None:
        """Drop checkpoint `name` (once the running job, if any, is done)."""
        with self.lease(None, purpose=f"unloading {name}"):
            if name in self._loaded:
                self._evict(name)
                self._free_accelerator_memory()
