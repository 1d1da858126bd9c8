"""Studio's overhead over a direct diffusers call, on the built-in tiny SDXL model on CPU.

Both paths run the very same loaded pipeline with the same prompts, size, steps, guidance, sampler
(built with `make_scheduler` from the model's own scheduler config) and seeded CPU generators:

  studio: txt2img.run(Txt2ImgRequest(..., model="tiny"), manager)
  direct: pipe(prompt=..., negative_prompt=..., generator=[...]) on the leased pipeline of "tiny"

After a warm-up of each path and a check that both give identical pixels, the paths are timed in
alternation (AB BA AB ..., so drift and any first-in-pair effect hit both alike). The goal is
`overhead ratio` (studio median / direct median) <= 1.03. The last line printed is always
`overhead ratio: <x>`. Run it on an otherwise idle machine: other CPU load skews the timings.

    python bench/overhead.py [--runs 10] [--size 512] [--steps 10] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: there is no package install
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from studio.models.manager import GB, DeviceInfo, ModelManager  # noqa: E402
from studio.models.registry import load_registry  # noqa: E402
from studio.pipelines import txt2img  # noqa: E402
from studio.schedulers import make_scheduler  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry, low quality"
GUIDANCE, SEED, SCHEDULER = 5.0, 1234, "DPM++ 2M Karras"


def cpu_probe() -> DeviceInfo:
    return DeviceInfo("cpu", free_bytes=16 * GB, ram_bytes=16 * GB)


def bench(args: argparse.Namespace, cache_dir: Path) -> float:
    manager = ModelManager(load_registry(), cache_dir=cache_dir, probe=cpu_probe)
    request = txt2img.Txt2ImgRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=args.size, height=args.size,
        num_inference_steps=args.steps, guidance_scale=GUIDANCE, seed=SEED, scheduler=SCHEDULER, model="tiny",
    )

    def studio():
        return txt2img.run(request, manager).images

    def direct():
        with manager.lease("tiny") as lease:  # the lease puts the model's own scheduler back
            pipe = lease.pipe
            pipe.scheduler = make_scheduler(SCHEDULER, pipe.scheduler.config)
            return pipe(
                prompt=PROMPT, negative_prompt=NEGATIVE, width=args.size, height=args.size,
                num_inference_steps=args.steps, guidance_scale=GUIDANCE,
                generator=[torch.Generator("cpu").manual_seed(SEED)],
            ).images

    # Warm-up, and proof that both paths do the same work.
    a, b = studio(), direct()
    assert len(a) == len(b) == 1 and np.array_equal(np.asarray(a[0]), np.asarray(b[0])), "paths differ"

    times: dict = {studio: [], direct: []}
    for i in range(args.runs):
        for fn in (studio, direct) if i % 2 == 0 else (direct, studio):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    s, d = statistics.median(times[studio]), statistics.median(times[direct])
    print(f"workload: tiny SDXL, {args.size}x{args.size}, {args.steps} steps, {SCHEDULER}, "
          f"guidance {GUIDANCE}, {args.runs} runs each, torch threads {torch.get_num_threads()}")
    print("pixels: identical on both paths")
    print(f"studio median: {s:.4f} s (min {min(times[studio]):.4f}, max {max(times[studio]):.4f})")
    print(f"direct median: {d:.4f} s (min {min(times[direct]):.4f}, max {max(times[direct]):.4f})")
    return s / d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each path")
    parser.add_argument("--size", type=int, default=512, help="image width and height (multiple of 8, 64-512)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tiny model folder (default: a temp dir)")
    args = parser.parse_args()
    if args.cache_dir is not None:
        ratio = bench(args, args.cache_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
            ratio = bench(args, Path(tmp))
    print(f"overhead ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
