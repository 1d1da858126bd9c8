"""Several GPUs on one machine, and recovery from running out of GPU memory.

`DevicePool` holds one `ModelManager` per device, each with its own lease gate, models and probe.
A job takes one device for its whole run (every lease it asks for goes to that manager), so a
panorama's sixteen views or an upscale's stages never hop between GPUs; Gradio's GPU queue runs
as many jobs at once as there are devices. With one device the pool is just that manager.

`run_with_recovery` retries a job once after a CUDA out-of-memory error: the failed job's tensors
are dropped (its traceback holds them), every model on the device is unloaded, the device goes
into low-memory mode (model offload, VAE tiling and slicing; see `ModelManager.recover`) and the
job runs again with its lightest settings. A second failure is reported plainly.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)


class OutOfMemory(RuntimeError):
    """The job ran out of GPU memory even in low-memory mode."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or MPS) out-of-memory error, whichever way torch raised it."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def lighter(request: Any) -> Any:
    """The same job with settings that need less memory and give the same images: an upscale's
    patches one at a time (patch batching changes speed, not pixels)."""
    return request.replace(patch_batch=1) if getattr(request, "patch_batch", 1) > 1 else request


def run_with_recovery(run: Callable[..., Any], request: Any, manager: Any, on_step: Any = None) -> Any:
    """`run(request, manager, on_step)`, retried once in low-memory mode after an out-of-memory error."""
    try:
        return run(request, manager, on_step)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    # Recover outside the except block: until it ends, the traceback keeps the failed job's tensors.
    log.warning("out of GPU memory (%s); freeing the device and retrying in low-memory mode", first)
    manager.recover()
    try:
        return run(lighter(request), manager, on_step)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    manager.recover()  # leave the device clean for the next job
    raise OutOfMemory(f"Out of GPU memory, even after unloading every model and retrying with model offload and "
                      f"VAE tiling ({first}). Try a smaller size, a smaller batch or fewer ControlNets.") from None


def parse_gpus(text: str) -> list[int]:
    """--gpus: CUDA device indices, "0,1" -> [0, 1]; each once, none negative."""
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--gpus takes CUDA device numbers separated by commas, such as 0,1; got {text!r}") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus takes each device once and none negative, such as 0,1; got {text!r}")
    return gpus


class DevicePool:
    """One model manager per device; `run` pins a job to the least busy device."""

    def __init__(self, managers: Sequence[Any]):
        if not managers:
            raise ValueError("a device pool needs at least one model manager, got none")
        self.managers = list(managers)
        self._jobs = [0] * len(self.managers)  # jobs running (or waiting) on each device
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.managers)

    @property
    def busy(self) -> bool:
        """Every device has a job: the next one waits."""
        with self._lock:
            return all(n > 0 or m.busy for n, m in zip(self._jobs, self.managers))

    @property
    def primary(self) -> Any:
        """The first device's manager: what is not a queued job (live previews, training, the
        registry and the model list) uses it."""
        return self.managers[0]

    @contextlib.contextmanager
    def device(self) -> Iterator[Any]:
        """Hold the least busy device for one job (fewest pool jobs, then an idle gate, then order)."""
        with self._lock:
            i = min(range(len(self.managers)), key=lambda k: (self._jobs[k], self.managers[k].busy, k))
            self._jobs[i] += 1
        try:
            with pinned(self.managers[i]):
                yield self.managers[i]
        finally:
            with self._lock:
                self._jobs[i] -= 1
            gc.collect()  # the job's last tensors go now, not whenever the collector runs next

    def run(self, run: Callable[..., Any], request: Any, on_step: Any = None) -> Any:
        """Run one job on one device from start to end, recovering once from out-of-memory."""
        with self.device() as manager:
            return run_with_recovery(run, request, manager, on_step)


@contextlib.contextmanager
def pinned(manager: Any) -> Iterator[None]:
    """Make "cuda" mean the manager's GPU in this thread, for code that names no index."""
    info = manager.device_info
    if info.device != "cuda":
        yield
        return
    import torch

    with torch.cuda.device(info.index):
        yield
