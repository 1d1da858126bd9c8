"""Speed of the panorama projections (studio/panorama/projection.py) at a real canvas size.

Every view of a panorama goes through e2p (the canvas rendered into the view, to find what is
painted and to inpaint around it) and p2e (the view pasted back, twice: its pixels and its
feather weight). This bench times them for one 1024 x 1024 view with a 90° FOV (yaw 30°,
pitch 10°) on a 4096 x 2048 float32 RGB canvas (the pipeline's canvas dtype):

- our p2e: the view back into the canvas (inverse maps computed on the view's window of the
  canvas, cv2.remap, scatter into a full-size result);
- our e2p: py360convert.e2p behind a float32 conversion, cold (see below);
- py360convert.e2p itself, cold (its sampler cache cleared before each call, as for a new view
  in a panorama) and warm (the same view again: maps cached, only the remap and padding left).

Best of REPEATS after a warm-up call each; nothing is asserted on timings, which depend on the
machine and its load. The last line printed is always
`p2e speed vs py360convert e2p: <x>` (py360convert's cold e2p time / our p2e time).

    python bench/projection.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: there is no package install

import numpy as np  # noqa: E402

from studio.panorama.projection import View, e2p, p2e  # noqa: E402

CANVAS = (2048, 4096)  # (H, W) equirect
SIZE = 1024  # the view's side: SDXL's native size
VIEW = View(30.0, 10.0, 90.0)
REPEATS = 5


def best_of(call, before=None) -> float:
    """The shortest wall time of REPEATS calls (after one warm-up); `before` runs untimed before each."""
    times = []
    for _ in range(REPEATS + 1):
        if before is not None:
            before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def panorama_share() -> float:
    """The share of a tiny-model panorama run's wall time spent in projection and blending (e2p,
    p2e, colour matching, feathering, compositing): the default 16-view plan on a 1024 x 512 canvas,
    2 steps per view, with the tiny SDXL model (random weights, built in code) on the CPU. The
    diffusion share grows with a real model, so on a GPU box with SDXL this share is an upper bound."""
    import tempfile

    from studio import masks
    from studio.models.manager import ModelManager
    from studio.models.registry import load_registry
    from studio.panorama import blend, projection
    from studio.pipelines.panorama import PanoramaRequest, run

    spent = [0.0]

    def timed(module, name):
        inner = getattr(module, name)

        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        setattr(module, name, call)

    for module, name in ((projection, "e2p"), (projection, "p2e"), (blend, "match_colour"), (masks, "feather"),
                         (masks, "grow_mask"), (masks, "composite")):
        timed(module, name)
    with tempfile.TemporaryDirectory() as cache:
        manager = ModelManager(load_registry(), cache_dir=Path(cache))
        request = PanoramaRequest(prompt="a lake", model="tiny", width=1024, num_inference_steps=2, seed=1,
                                  video=False)
        run(request, manager)  # warm-up: builds and loads the tiny model
        spent[0] = 0.0
        start = time.perf_counter()
        run(request, manager)
        total = time.perf_counter() - start
    print(f"  tiny-model panorama (16 views, 1024 x 512): {total:.2f} s, of which projection and blending "
          f"{spent[0]:.2f} s")
    return spent[0] / total


def main() -> None:
    import cv2
    import py360convert
    from py360convert.utils import EquirecSampler

    # 1. Inputs: a canvas and a view of smooth noise (the values do not change the timings)
    rng = np.random.default_rng(0)
    canvas = cv2.resize(rng.random((64, 128, 3), dtype=np.float32), CANVAS[::-1])
    persp = cv2.resize(rng.random((32, 32, 3), dtype=np.float32), (SIZE, SIZE))

    # 2. Timings
    ours_p2e = best_of(lambda: p2e(persp, VIEW, *CANVAS))
    ours_e2p = best_of(lambda: e2p(canvas, VIEW, SIZE), before=EquirecSampler.from_perspective.cache_clear)

    def theirs():
        py360convert.e2p(canvas, fov_deg=VIEW.fov, u_deg=VIEW.yaw, v_deg=VIEW.pitch, out_hw=(SIZE, SIZE))

    cold = best_of(theirs, before=EquirecSampler.from_perspective.cache_clear)
    warm = best_of(theirs)

    # 3. Report
    print(f"workload: {CANVAS[1]} x {CANVAS[0]} float32 RGB canvas, {SIZE}² view, {VIEW}, best of {REPEATS}, "
          f"cv2 threads {cv2.getNumThreads()}")
    print(f"  our p2e (view -> canvas)            {1000 * ours_p2e:8.1f} ms")
    print(f"  our e2p (canvas -> view), cold      {1000 * ours_e2p:8.1f} ms")
    print(f"  py360convert e2p, cold (new view)   {1000 * cold:8.1f} ms")
    print(f"  py360convert e2p, warm (maps cached){1000 * warm:8.1f} ms")
    share = panorama_share()
    print(f"share of a tiny-model panorama run in projection and blending: {100 * share:.1f} %")
    print(f"p2e speed vs py360convert e2p: {cold / ours_p2e:.2f}")


if __name__ == "__main__":
    main()
