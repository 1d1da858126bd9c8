"""Speed and memory of LoRA training (studio/training) on the tiny SDXL model on CPU, with the VAE
latents and text embeddings cached once (what `train` does) and without (re-encoded every step).

Workload: the tiny SDXL pipeline of studio/models/tiny.py built in code (seeded random weights),
6 random 64 x 64 photos, batch size 2, rank 16, AdamW, min-SNR 5, random flips, 2 torch threads.
Both modes run the same optimizer steps through `lora_train._prepare` and
`lora_train._optimizer_step`; the uncached mode first recomputes the latents (VAE encoder) and
text embeddings (both text encoders) of that step's batch from its images, with the same
functions the cache is built with (`cache.encode_latents`, `cache.encode_captions`), and keeps
nothing between steps. Both therefore train the same weights; the bench checks that their losses
agree.

Each mode runs in a fresh child process (`--child`, one JSON line out). In each child, after the
model is built and the run prepared, 2 warm-up steps, then gc + malloc_trim, the RSS high-water
mark reset to the current RSS (/proc/self/clear_refs) and that RSS taken as the baseline; then
STEPS timed steps:
- steps/s: STEPS / wall time of the timed steps;
- training memory: peak RSS during the timed steps minus the baseline (what the steps add on top
  of the loaded model, optimizer and caches);
- process peak: the child's peak RSS over its whole life (model, caches and all).
The one-off `_prepare` (freezing, the cache, the LoRA, the optimizer) is timed separately; the
uncached mode runs it too and then drops its cache. On a machine shared
with other work the times vary by tens of percent from run to run; nothing is asserted on them.
Children run with OMP_WAIT_POLICY=PASSIVE (unless set), as in bench/upsample_memory.py. The last
line printed is always `cached-latents speedup: <x>` (cached steps/s over uncached steps/s).

    python bench/train_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: there is no package install
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import (libgomp reads it once)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from memprobe import max_rss_bytes, reset_max_rss, trim_heap  # noqa: E402 (bench/memprobe.py)
from studio.models.tiny import build_tiny_sdxl  # noqa: E402
from studio.training.cache import encode_captions, encode_latents  # noqa: E402
from studio.training.config import TrainConfig  # noqa: E402
from studio.training.data import batch_at, prepare_examples  # noqa: E402
from studio.training.lora_train import _optimizer_step, _prepare  # noqa: E402

STEPS, WARM_UP, THREADS, PHOTOS, SIDE = 30, 2, 2, 6, 64
CONFIG = TrainConfig(model="tiny", trigger_word="sks", batch_size=2, learning_rate=1e-3, max_train_steps=STEPS + WARM_UP)
MB = 2**20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")








def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in range(PHOTOS)]


def encode_batches(run, pipe, k: int) -> None:
    """Without a cache: the latents and text embeddings of optimizer step k's batches, from the
    images, replacing whatever the run held before."""
    c = run.config
    run.latents, run.texts = {}, {}
    for micro in range(c.gradient_accumulation):
        batch = batch_at(c.seed, k * c.gradient_accumulation + micro, [e.bucket for e in run.examples],
                         c.batch_size, c.random_flip)
        for i, flip in batch:
            run.latents[(i, flip)] = encode_latents(pipe.vae, [run.examples[i]], [flip], "cpu")[(0, flip)]
        run.texts.update(encode_captions(pipe, [run.examples[i].caption for i, _ in batch], "cpu"))


def child(mode: str) -> dict:
    """Measure one mode in this (fresh) process; see the module docstring."""
    torch.set_num_threads(THREADS)
    pipe = build_tiny_sdxl()
    examples = prepare_examples(photos(), None, CONFIG.prompt, [(SIDE, SIDE)])
    start = time.perf_counter()
    run = _prepare(CONFIG, pipe, examples, "cpu")  # builds the cache (and adds the LoRA)
    prepare_s = time.perf_counter() - start
    if mode == "uncached":
        run.latents, run.texts = {}, {}  # nothing cached is kept

    def step(k: int) -> float:
        if mode == "uncached":
            encode_batches(run, pipe, k)
        return _optimizer_step(run, k)

    losses = [step(k) for k in range(WARM_UP)]
    trim_heap()
    reset_max_rss()
    baseline = rss_bytes()
    start = time.perf_counter()
    losses += [step(k) for k in range(WARM_UP, WARM_UP + STEPS)]
    wall = time.perf_counter() - start
    return {"mode": mode, "steps_per_s": STEPS / wall, "training": max_rss_bytes() - baseline,
            "baseline": baseline, "prepare_s": prepare_s, "losses": losses}


def run_child(mode: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child)
        result["process_peak"] = max_rss_bytes()  # taken last: the child's whole life
        print(json.dumps(result))
        return
    # 1. Each mode in its own process
    cached, uncached = run_child("cached"), run_child("uncached")
    # 2. The table
    print(f"workload: tiny SDXL, {PHOTOS} photos {SIDE}x{SIDE}, batch {CONFIG.batch_size}, rank {CONFIG.rank}, "
          f"AdamW, {STEPS} timed steps after {WARM_UP} warm-up, torch threads {THREADS}, one process per row")
    print(f"{'mode':>9} {'steps/s':>8} {'ms/step':>8} {'training MB':>12} {'process peak MB':>16} {'prepare s':>10}")
    for r in (cached, uncached):
        print(f"{r['mode']:>9} {r['steps_per_s']:>8.2f} {1000 / r['steps_per_s']:>8.1f} {r['training'] / MB:>12.1f} "
              f"{r['process_peak'] / MB:>16.1f} {r['prepare_s']:>10.2f}")
    # 3. Both modes must have trained the same thing, or the comparison means nothing
    worst = max(abs(a - b) for a, b in zip(cached["losses"], uncached["losses"]))
    print(f"same training in both modes: largest loss difference over {STEPS + WARM_UP} steps {worst:.2e}")
    print(f"cached-latents speedup: {cached['steps_per_s'] / uncached['steps_per_s']:.2f}")


if __name__ == "__main__":
    main()
