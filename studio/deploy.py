"""Running as a Hugging Face Space: ZeroGPU entry points, the GPU time each call asks for, and the
persistent storage folders. No torch and no gradio here: app.py reads the defaults before anything
heavy loads, and nothing happens at import.

How ZeroGPU runs an entry (read from the `spaces` package, 0.51): `spaces.GPU(duration=...)(fn)`
returns `fn` itself unless SPACES_ZERO_GPU is set. On ZeroGPU it returns a `functools.wraps`
wrapper (so Gradio still reads `fn`'s parameters and annotations, and a generator stays a
generator; coroutines are refused) that asks the scheduler for `duration(*args)` seconds of a GPU,
then runs `fn` in a forked worker: arguments and results cross a pickle, and state the worker
changes (loaded models, Stop flags) stays in the worker.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_S, MAX_S = 30, 300  # seconds a call may ask for: a model load at least; ZeroGPU refuses more than its limit
LOAD_S = 30  # Studio loads models lazily, so a fresh ZeroGPU worker loads SDXL (~7 GB fp16) inside the call
# SDXL with classifier-free guidance on ZeroGPU's H200 slice runs ~6 steps/s at 1024² (0.17 s per
# megapixel-step); the VAE decode and the margin a worker needs to avoid being cut off make it 0.25.
SECONDS_PER_MEGAPIXEL_STEP = 0.25
PATCH_OVERLAP = 2.0  # an upscale's patches overlap by half: each pixel is denoised about twice per step


def on_zero_gpu() -> bool:
    """Whether this is a Hugging Face ZeroGPU Space (which sets SPACES_ZERO_GPU)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def data_dir() -> Path | None:
    """A Space's persistent storage (/data, or STUDIO_DATA_DIR), or None where there is none."""
    path = Path(os.environ.get("STUDIO_DATA_DIR", "/data"))
    return path if path.is_dir() else None


def data_defaults() -> dict[str, Path]:
    """Default folders for outputs, user presets, the LoRA library and the tiny-model cache: under
    persistent storage when the Space has it (a Space's own disk is wiped at every restart), else
    where a local run keeps them. Flags and STUDIO_* variables still win (app.py)."""
    root = data_dir()
    if root is None:
        return {"outputs": Path("outputs"), "user_presets": Path("user_presets"), "loras": Path("loras"),
                "cache": Path.home() / ".cache" / "studio"}
    return {"outputs": root / "outputs", "user_presets": root / "user_presets", "loras": root / "loras",
            "cache": root / "cache" / "studio"}


def use_persistent_hub_cache() -> None:
    """Downloaded models under persistent storage (HF_HOME=/data/.huggingface) unless HF_HOME is set,
    so a restarted Space does not fetch SDXL again. huggingface_hub reads HF_HOME once, at import:
    app.py calls this before importing anything that imports it."""
    root = data_dir()
    if root is not None:
        os.environ.setdefault("HF_HOME", str(root / ".huggingface"))


# -- GPU time --------------------------------------------------------------------------------------


def megapixel_steps(request: Any) -> float:
    """The denoising work of `request`: megapixels × steps summed over its runs. Field names are
    the same in every request, so one formula serves every task."""
    steps = request.num_inference_steps * getattr(request, "strength", 1.0)  # img2img runs int(steps·strength)
    image = getattr(request, "image", None)
    if hasattr(request, "view_plan"):  # panorama: one native-size (~1 MP) run per view, then the refine pass
        canvas = request.width * request.height / 1e6
        return len(request.view_plan()) * request.num_inference_steps + canvas * steps * request.refine_strength
    if hasattr(request, "scale"):  # upscale: every ×2 stage is covered by overlapping patches
        from studio.groups_upscale import stage_sizes

        stages = stage_sizes(image.width, image.height, request.scale)
        return sum(w * h for w, h in stages) / 1e6 * PATCH_OVERLAP * steps
    width = getattr(request, "width", None) or image.width  # inpaint and outpaint take the image's size
    height = getattr(request, "height", None) or image.height
    return width * height / 1e6 * steps * getattr(request, "batch_size", 1)


def gpu_seconds(request: Any) -> int:
    """Seconds of ZeroGPU time to ask for `request`, within [MIN_S, MAX_S]. A shorter request waits
    less in ZeroGPU's queue; one that overruns its time is cut off."""
    return round(min(max(LOAD_S + megapixel_steps(request) * SECONDS_PER_MEGAPIXEL_STEP, MIN_S), MAX_S))


def request_seconds(make_request: Callable[..., Any]) -> Callable[..., int]:
    """A `duration` for `gpu_entry`: the seconds for the request `make_request` builds from the
    entry's own arguments."""

    def duration(*args: Any, **kwargs: Any) -> int:
        try:
            request = make_request(*args, **kwargs)
        except Exception:  # a bad input: the entry itself reports it, well within MIN_S
            return MIN_S
        return gpu_seconds(request)

    return duration


# -- entry points ----------------------------------------------------------------------------------


class _Keys:
    """Gradio hands a handler with dict inputs a dict keyed by its components, which cannot be
    pickled. Across ZeroGPU's pickle they travel as numbers; the worker, forked from this process
    after the first call registered them, maps the numbers back to its copies of the components."""

    def __init__(self) -> None:
        self._by_number: dict[int, Any] = {}

    def encode(self, args: tuple) -> tuple:
        return tuple(self._encode(a) for a in args)

    def decode(self, args: tuple) -> tuple:
        return tuple({self._by_number[k]: v for k, v in a.items()} if isinstance(a, _Encoded) else a for a in args)

    def _encode(self, arg: Any) -> Any:
        if not isinstance(arg, dict) or all(isinstance(k, str) for k in arg):
            return arg  # plain values and JSON objects pickle as they are
        for key in arg:
            self._by_number.setdefault(id(key), key)
        return _Encoded({id(k): v for k, v in arg.items()})


class _Encoded(dict):
    """A component-keyed dict with numbers for keys (see _Keys)."""


def _zero_gpu_spaces() -> Any:
    """The `spaces` package on a ZeroGPU Space, else None (locally it need not be installed)."""
    if not on_zero_gpu():
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def gpu_entry(fn: Callable[..., Any], duration: Callable[..., int]) -> Callable[..., Any]:
    """`fn` as a ZeroGPU entry that asks for `duration(*args)` seconds of GPU per call, on a
    ZeroGPU Space with the `spaces` package; elsewhere `fn` itself.

    The entry keeps `fn`'s signature and annotations (Gradio injects gr.Request and gr.Progress by
    them) and stays a generator when `fn` is one. A coroutine runs to its end in the worker: ZeroGPU
    decorates plain functions only."""
    spaces = _zero_gpu_spaces()
    if spaces is None:
        return fn
    keys = _Keys()
    if inspect.isgeneratorfunction(fn):
        def work(*args: Any, **kwargs: Any) -> Any:
            yield from fn(*keys.decode(args), **kwargs)
    elif inspect.iscoroutinefunction(fn):
        def work(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(fn(*keys.decode(args), **kwargs))
    else:
        def work(*args: Any, **kwargs: Any) -> Any:
            return fn(*keys.decode(args), **kwargs)
    on_gpu = spaces.GPU(duration=lambda *args, **kwargs: duration(*keys.decode(args), **kwargs))(work)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def entry(*args: Any, **kwargs: Any) -> Any:
            yield from on_gpu(*keys.encode(args), **kwargs)
    else:
        @functools.wraps(fn)
        def entry(*args: Any, **kwargs: Any) -> Any:
            return on_gpu(*keys.encode(args), **kwargs)
    return entry
