"""Soak: a few hundred tiny jobs through the running app's API, with bad inputs and cancels mixed in,
from two clients at once; does the app's memory grow, and does any request fail unexpectedly?

The app runs as a subprocess with the built-in tiny model (tests/conftest.py's start_app). Two
threads, each with its own gradio_client, take jobs from one shuffled list (seeded):
  ~60 % /txt2img   64 px, 1-2 steps
  ~10 % /img2img   a 64 × 64 image, 2 steps
  ~8 %  /upscale   a 64 × 48 image × 2, 2 steps
  ~4 %  /panorama  512 px wide, the smallest plan (6 views), 1 step
  ~10 % bad input  (a size off the multiple of 8, 0 steps, an unknown model, a scale past the pixel
                   limit, a view plan that is not JSON): must be refused with a message
  ~8 %  cancel     a 150-step /txt2img submitted, then `job.cancel()` after 0.3-1 s
Resident memory (RSS) is that of the app process and its children, after gc has had its chance:
at the start (after one warm-up job of each kind) and at the end. Every job has its own seed, so
the outputs folder tells whether a cancelled job still ran to its end on the server (a saved PNG
with its seed). The last line printed is always `memory growth over soak: <MB> MB`.

    python bench/soak.py [--jobs 300] [--seed 0] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest.start_app: the app as the tests start it

MB = 2**20
PLAN = json.dumps([{"yaw": y, "pitch": 0, "fov": 120} for y in (0, 90, 180, 270)]
                  + [{"yaw": 0, "pitch": 90, "fov": 120}, {"yaw": 0, "pitch": -90, "fov": 120}])
MIX = [("txt2img", 60), ("img2img", 10), ("upscale", 8), ("panorama", 4), ("bad", 10), ("cancel", 8)]
# Bad inputs: (endpoint, arguments, words the refusal must contain)
BAD = [
    ("/txt2img", dict(width=65), "multiple of 8"),
    ("/txt2img", dict(num_inference_steps=0), "num_inference_steps"),
    ("/txt2img", dict(model="no-such-model"), "no-such-model"),
    ("/upscale", dict(scale=100), "scale"),
    ("/panorama", dict(views="[not json"), "JSON"),
]


def resident_mb(pid: int) -> float:
    """RSS of process `pid` and all its children, in MB."""
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / MB


def make_inputs(folder: Path) -> dict[str, Path]:
    """The input images: a 64 × 64 picture for /img2img, a 64 × 48 one for /upscale."""
    import numpy as np
    from PIL import Image

    paths = {}
    for name, (w, h) in {"img2img": (64, 64), "upscale": (64, 48)}.items():
        y, x = np.mgrid[0:h, 0:w]
        paths[name] = folder / f"{name}.png"
        Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)).save(paths[name])
    return paths


def arguments(kind: str, seed: int, inputs: dict[str, Path]) -> tuple[str, dict]:
    """(endpoint, keyword arguments) of a good job of `kind` with `seed`."""
    from gradio_client import handle_file

    small = dict(model="tiny", seed=seed, num_inference_steps=2)
    if kind == "txt2img":
        return "/txt2img", dict(small, prompt="a lighthouse", width=64, height=64, num_inference_steps=1 + seed % 2)
    if kind == "img2img":
        return "/img2img", dict(small, prompt="a lighthouse", image=handle_file(str(inputs["img2img"])), strength=1.0)
    if kind == "upscale":
        return "/upscale", dict(small, image=handle_file(str(inputs["upscale"])), scale=2, slider=1)
    if kind == "panorama":
        return "/panorama", dict(small, prompt="a lake, 360 panorama", width=512, views=PLAN, num_inference_steps=1,
                                 video=False, exposures="0")
    raise ValueError(f"kind must be one of {[k for k, _ in MIX if k not in ('bad', 'cancel')]}, got {kind!r}")


class Soak:
    """The shared job list and tallies of the two client threads."""

    def __init__(self, url: str, jobs: list[tuple[str, int]], inputs: dict[str, Path]):
        self.url, self.jobs, self.inputs = url, jobs, inputs
        self.lock = threading.Lock()
        self.counts: Counter = Counter()  # ok, refused, cancelled, failed
        self.failures: list[str] = []
        self.cancelled: list[tuple[int, bool]] = []  # (seed, whether it was running when cancelled)

    def next_job(self) -> tuple[str, int] | None:
        with self.lock:
            return self.jobs.pop() if self.jobs else None

    def tally(self, outcome: str, note: str | None = None) -> None:
        with self.lock:
            self.counts[outcome] += 1
            if note:
                self.failures.append(note)

    def client_loop(self) -> None:
        from gradio_client import Client

        client = Client(self.url, verbose=False)
        while (job := self.next_job()) is not None:
            kind, seed = job
            try:
                self.run_one(client, kind, seed)
            except Exception as exc:  # counted as an unexpected failure, with its message
                self.tally("failed", f"{kind} (seed {seed}): {type(exc).__name__}: {exc}")

    def run_one(self, client, kind: str, seed: int) -> None:
        from gradio_client.exceptions import AppError
        from gradio_client.utils import Status

        if kind == "bad":
            endpoint, changes, words = BAD[seed % len(BAD)]
            good = "upscale" if endpoint == "/upscale" else "panorama" if endpoint == "/panorama" else "txt2img"
            _, kwargs = arguments(good, seed, self.inputs)
            try:
                client.predict(**{**kwargs, **changes}, api_name=endpoint)
            except AppError as exc:
                ok = words.lower() in str(exc).lower()
                self.tally("refused" if ok else "failed", None if ok else f"{endpoint} {changes}: {exc}")
                return
            self.tally("failed", f"{endpoint} {changes} was accepted")
        elif kind == "cancel":
            _, kwargs = arguments("txt2img", seed, self.inputs)
            job = client.submit(**{**kwargs, "num_inference_steps": 150}, api_name="/txt2img")
            time.sleep(0.3 + (seed % 8) / 10)
            running = job.status().code == Status.PROCESSING  # not still waiting in the queue
            job.cancel()
            with self.lock:
                self.cancelled.append((seed, running))
            self.tally("cancelled")
        else:
            endpoint, kwargs = arguments(kind, seed, self.inputs)
            client.predict(**kwargs, api_name=endpoint)
            self.tally("ok")


def settle(pid: int, quiet_s: float = 2.0) -> float:
    """RSS once the app is idle: wait `quiet_s`, so the last job's buffers can be freed."""
    time.sleep(quiet_s)
    return resident_mb(pid)


def soak(args: argparse.Namespace) -> float:
    from conftest import start_app, stop_app
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="studio-soak-"))
    proc, url, outputs = start_app(work, args.cache_dir, "--model", "tiny")
    try:
        inputs = make_inputs(work)
        # 1. A warm-up job of each kind: models load, pipelines are derived, caches fill
        client = Client(url, verbose=False)
        for i, kind in enumerate(("txt2img", "img2img", "upscale", "panorama")):
            endpoint, kwargs = arguments(kind, 10**6 + i, inputs)
            client.predict(**kwargs, api_name=endpoint)
        start_mb = settle(proc.pid)
        # 2. The jobs, shuffled, from two clients at once; seeds from 1 are unique per job
        rng = random.Random(args.seed)
        kinds = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=args.jobs)
        state = Soak(url, [(kind, seed) for seed, kind in enumerate(kinds, start=1)][::-1], inputs)
        began = time.monotonic()
        threads = [threading.Thread(target=state.client_loop, name=f"client-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - began
        end_mb = settle(proc.pid, quiet_s=10.0)  # cancelled jobs may still be running on the server
        # 3. Which cancelled jobs still ran to their end on the server (their seed's PNG was saved)
        saved = {int(p.name.split("-")[1]) for p in outputs.rglob("*.png") if p.name.count("-") >= 2}
        ran_anyway = sum(seed in saved for seed, _ in state.cancelled)
        alive = proc.poll() is None
    finally:
        stop_app(proc)
        shutil.rmtree(work, ignore_errors=True)  # the app's outputs and log: only the counts above matter

    c = state.counts
    print(f"workload: {args.jobs} jobs from 2 clients ({dict(Counter(kinds))}), seed {args.seed}, {took:.0f} s")
    print(f"resident memory at start: {start_mb:.0f} MB (app and children, after warm-up)")
    print(f"resident memory at end: {end_mb:.0f} MB")
    print(f"ok: {c['ok']}, expected refusals: {c['refused']}, cancelled: {c['cancelled']}, "
          f"unexpected failures: {c['failed']}")
    for note in state.failures[:10]:
        print(f"  failure: {note}")
    running = sum(r for _, r in state.cancelled)
    print(f"cancelled jobs that still ran to their end on the server: {ran_anyway} of {len(state.cancelled)} "
          f"({running} of them running when cancelled, the others still queued)")
    print(f"app still running at the end: {'yes' if alive else 'NO'}")
    return end_mb - start_mb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs after the warm-up (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the job mix and order")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "studio",
                        help="folder of the built-in tiny models (default ~/.cache/studio, as the app's)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    growth = soak(args)
    print(f"memory growth over soak: {growth:.1f} MB")


if __name__ == "__main__":
    main()
