"""Memory of the patch sampler (studio/upscale/sampler.py) as the canvas grows, on a tiny SDXL UNet on CPU.

The sampler denoises a latent canvas of any size one UNet-sized patch batch at a time, so the
memory of one UNet call must not depend on the canvas, and the whole run may only add canvas-sized
buffers (x, z0, noise, the blend sums, the scheduler's step): linear in the canvas pixels. This
bench checks both, for outputs of 1x, 4x, 16x and 64x the pixels of 512 x 512 (latent canvases
64², 128², 256², 512²), with slider 0 and with every step guided (phase fusion 0.5 + chess), and
compares with a whole-canvas sampler (one UNet call per step on the full latent) at 16x.

Workload: the tiny SDXL UNet of studio/models/tiny.py built in code (seeded, random weights) but
declared with `sample_size=32`, so a patch is 32 x 32 latents (256 px) instead of 8 x 8 and the
per-patch cost is not lost in the noise; `sample_size` is only metadata, the weights and layers
are the same and the UNet takes inputs of any size. PatchPlan(32, 8, batch=4), DDIM with 2 steps,
zero text conditioning, no classifier-free guidance, torch.no_grad(), 2 torch threads.

Every configuration runs in a fresh child process (`--child`, one JSON line out), so no run
inherits another's allocator state. In each child, after imports, model build and a warm-up (the
child's own sampler, 2 steps, on a 32 x 128 latent canvas):

- sampling memory: ru_maxrss after sampling minus the RSS measured just before z0 and noise are
  allocated, after gc and malloc_trim (so heap freed by the warm-up is not hidden headroom that
  sampling reuses unseen). The warm-up is a whole sampling run rather than one UNet call because
  the first run also pays one-off costs that are not sampling memory: lazily imported modules,
  library code paged in, oneDNN kernels built for each new input shape (the 32 x 128 canvas gives
  ours both batch shapes it uses here, 4 and 1 patches). With a one-call warm-up these added about
  4-6 MB to every row of ours. The high-water mark is then reset to the baseline (clear_refs), so
  the warm-up's own peak cannot mask a smaller one; should that fail, rows whose peak sampling
  did not raise are marked as upper bounds.
- per-UNet-call working memory: peak bytes of tensor storage live during one UNet call — the
  first call of a second, instrumented run of the same sampler, stopped right after it through
  `on_patch` — counted deterministically by a TorchDispatchMode: every op output whose storage is
  new (not a view or in-place result of an input, not already tracked) adds its bytes, released
  when the last tensor sharing that storage is freed (weakref.finalize). It does not see a
  kernel's private scratch memory. The instrumented run comes after the timed one, so neither
  its time nor its bookkeeping leaks into the other numbers.
- time per UNet call: wall time of sampling / UNet calls (sampler overhead included).

All numbers come from this one run; nothing is asserted on timings, which depend on the machine
and its load. Children run with OMP_WAIT_POLICY=PASSIVE (unless set): on a loaded 2-core machine
spinning OpenMP threads made each call up to 40x slower. The last line printed is always
`memory ratio vs whole-canvas at 16x: <x>` (whole-canvas sampling memory / ours with slider 0).

    python bench/upsample_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: there is no package install
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import (libgomp reads it once)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from memprobe import max_rss_bytes, reset_max_rss, trim_heap  # noqa: E402 (bench/memprobe.py)
from studio.models.tiny import TEXT_HIDDEN, _unet  # noqa: E402
from studio.upscale.sampler import GuidancePlan, PatchPlan, sample, unet_calls  # noqa: E402

LATENT_SIDES = (64, 128, 256, 512)  # 1x, 4x, 16x, 64x the pixels of 512 x 512
NAIVE_SIDE = 256  # the whole-canvas reference: 16x
WARM_CANVAS = (32, 128)  # warm-up (h, w): 1 x 5 patches, a batch of 4 and one of 1, as on every canvas here
PATCH_SIDE = 32  # the UNet's declared native size in latents (see the docstring)
PATCHES = PatchPlan(PATCH_SIDE, 8, batch=4)
STEPS, SEED, THREADS = 2, 1234, 2
MB = 2**20


class StoragePeak(TorchDispatchMode):
    """Peak bytes of storage created by the ops run under this mode and still referenced."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [bytes, live tensors on it]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t, inputs)
        return out

    def track(self, t: torch.Tensor, inputs: set[int]) -> None:
        ptr = t.untyped_storage().data_ptr()
        entry = self.live.get(ptr)
        if entry is None:
            if ptr == 0 or ptr in inputs:  # empty, or a view / in-place result of memory made outside
                return
            entry = self.live[ptr] = [t.untyped_storage().nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(t, self.release, ptr)

    def release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]


def rss_bytes() -> int:
    """Resident set size now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")








def build_unet():
    """The tiny SDXL UNet (seeded random weights) declared with a native size of PATCH_SIDE latents."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = _unet(cross_attention_dim=2 * TEXT_HIDDEN, sdxl=True).config
    return UNet2DConditionModel.from_config(config, sample_size=PATCH_SIDE).eval()


def make_scheduler():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(STEPS)
    return scheduler


def make_denoise(unet, counter: list[int]):
    """The sampler's denoiser: the UNet on a patch batch (k, 4, ph, pw), zero text conditioning, no CFG."""
    conditioning: dict[int, tuple] = {}

    def denoise(xs, t, boxes):
        k, _, ph, pw = xs.shape
        if k not in conditioning:
            time_ids = torch.tensor([[8 * ph, 8 * pw, 0, 0, 8 * ph, 8 * pw]], dtype=torch.float32).repeat(k, 1)
            conditioning[k] = (torch.zeros(k, 77, 2 * TEXT_HIDDEN),
                               {"text_embeds": torch.zeros(k, TEXT_HIDDEN), "time_ids": time_ids})
        hidden, added = conditioning[k]
        counter[0] += 1
        return unet(xs, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]

    return denoise


def whole_canvas(denoise, scheduler, z0, noise, timesteps, stop_after_first=False):
    """What a sampler without patches does: one UNet call per step on the whole latent."""
    x = scheduler.add_noise(z0, noise, timesteps[:1])
    box = [(0, 0, z0.shape[-2], z0.shape[-1])]
    for t in timesteps:
        eps = denoise(x, t, box)
        if stop_after_first:
            return x
        x = scheduler.step(eps, t, x, return_dict=False)[0]
    return x


def child(mode: str, side: int, slider: int) -> dict:
    """Measure one configuration in this (fresh) process; see the module docstring."""
    torch.set_num_threads(THREADS)
    unet, scheduler = build_unet(), make_scheduler()
    timesteps = scheduler.timesteps
    guidance = GuidancePlan(slider, phase_weight=0.5, chess=True)
    calls = [0]
    denoise = make_denoise(unet, calls)

    def run(denoise, height, width, on_patch=None, stop_after_first=False):
        z0 = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(SEED))
        noise = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(SEED + 1))
        if mode == "naive":
            return whole_canvas(denoise, scheduler, z0, noise, timesteps, stop_after_first)
        return sample(denoise, scheduler, z0, noise, timesteps, PATCHES, guidance,
                      torch.Generator().manual_seed(SEED), on_patch)

    with torch.no_grad():
        # 1. Warm-up: the same sampling on a small canvas, then the baseline.
        run(denoise, *WARM_CANVAS)
        calls[0] = 0
        trim_heap()
        reset_max_rss()
        baseline, high_before = rss_bytes(), max_rss_bytes()

        # 2. The timed sampling run; its peak RSS.
        start = time.perf_counter()
        run(denoise, side, side)
        wall = time.perf_counter() - start
        high_after = max_rss_bytes()

        # 3. The working memory of the first UNet call of an identical run, stopped after it.
        expected = STEPS if mode == "naive" else unet_calls(side, side, PATCHES, STEPS)
        assert calls[0] == expected, f"{calls[0]} UNet calls, expected {expected}"
        peak = StoragePeak()

        def measured(xs, t, boxes):
            with peak:
                return denoise(xs, t, boxes)

        try:
            run(measured, side, side, on_patch=lambda *_: True, stop_after_first=True)
        except InterruptedError:
            pass  # the sampler stops after its first UNet call, as asked
    return {"mode": mode, "side": side, "slider": slider, "calls": expected, "wall_s": wall, "call_peak": peak.peak,
            "sampling": high_after - baseline, "raised": high_after > high_before, "baseline": baseline}


def run_child(mode: str, side: int, slider: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--side", str(side), "--slider", str(slider)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} {side} slider {slider} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float, float]:
    """Least-squares y = a + b·x: (slope b, intercept a, R², max |residual|)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
    total = sum((y - my) ** 2 for y in ys)
    r2 = 1 - sum(r * r for r in residuals) / total if total > 0 else 1.0
    return slope, intercept, r2, max(abs(r) for r in residuals)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'latent':>9} {'output px':>11} {'x px':>5} {'UNet calls':>10} {'per-call MB':>12} "
          f"{'sampling MB':>12} {'ms/call':>8}")
    for r in rows:
        px, mark = 8 * r["side"], "" if r["raised"] else " *"
        print(f"{r['side']:>4}x{r['side']:<4} {px:>5}x{px:<5} {(r['side'] / 64) ** 2:>4.0f}x {r['calls']:>10} "
              f"{r['call_peak'] / MB:>12.2f} {r['sampling'] / MB:>12.2f}{mark} {1000 * r['wall_s'] / r['calls']:>8.1f}")


def report_fit(name: str, rows: list[dict]) -> None:
    pixels = [r["side"] ** 2 for r in rows]
    slope, intercept, r2, worst = linear_fit(pixels, [r["sampling"] for r in rows])
    print(f"{name}: sampling memory = {intercept / MB:.2f} MB + {slope:.1f} B per latent pixel "
          f"(~{slope / 16:.1f} fp32 4-channel canvases); linear fit R² = {r2:.4f}, "
          f"max residual {worst / MB:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slider", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.side, args.slider)))
        return

    # 1. Every configuration in its own process.
    free = [run_child("ours", side, 0) for side in LATENT_SIDES]
    guided = [run_child("ours", side, STEPS) for side in LATENT_SIDES]
    naive = run_child("naive", NAIVE_SIDE)

    # 2. Per-size tables.
    print(f"workload: tiny SDXL UNet (sample_size {PATCH_SIDE}), {PATCHES}, DDIM {STEPS} steps, no CFG, "
          f"torch threads {THREADS}, one fresh process per row")
    print_table("ours, slider 0 (free)", free)
    print_table(f"ours, slider {STEPS} = all steps (phase fusion 0.5 + chess)", guided)
    if not all(r["raised"] for r in free + guided + [naive]):
        print("* sampling did not raise the process's RSS high-water mark: the figure is an upper bound")

    # 3. One UNet call's working memory must not depend on the canvas.
    peaks = [r["call_peak"] for r in free + guided]
    spread = 100 * (max(peaks) - min(peaks)) / min(peaks)
    verdict = "within" if spread <= 5 else "NOT within"
    print(f"\nper-UNet-call working memory: {min(peaks) / MB:.2f}-{max(peaks) / MB:.2f} MB over "
          f"{len(peaks)} runs, constant within {spread:.1f} % ({verdict} the 5 % goal)")

    # 4. Total memory must grow linearly with the canvas, the same with or without guidance.
    report_fit("slider 0", free)
    report_fit(f"slider {STEPS}", guided)

    # 5. The whole-canvas reference at 16x.
    ours16 = next(r for r in free if r["side"] == NAIVE_SIDE)
    print(f"\nwhole-canvas reference, {NAIVE_SIDE}x{NAIVE_SIDE} latent ({8 * NAIVE_SIDE}² px, 16x), "
          f"one UNet call per step on the full latent:")
    print(f"  UNet calls {naive['calls']}, per-call working memory {naive['call_peak'] / MB:.2f} MB "
          f"({naive['call_peak'] / ours16['call_peak']:.1f}x ours), sampling memory {naive['sampling'] / MB:.2f} MB, "
          f"{1000 * naive['wall_s'] / naive['calls']:.1f} ms per call")
    print(f"  ours at 16x, slider 0: per-call {ours16['call_peak'] / MB:.2f} MB, "
          f"sampling {ours16['sampling'] / MB:.2f} MB")
    print(f"memory ratio vs whole-canvas at 16x: {naive['sampling'] / ours16['sampling']:.2f}")


if __name__ == "__main__":
    main()
