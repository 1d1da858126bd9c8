"""Several GPUs (one manager per device, a job pinned to one) and recovery from out-of-memory,
with fake device probes and injected CUDA out-of-memory errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from conftest import cpu_probe
from studio.models.manager import GB, DeviceInfo, ModelManager
from studio.models.pool import DevicePool, OutOfMemory, is_out_of_memory, lighter, run_with_recovery
from studio.pipelines import txt2img
from studio.pipelines.txt2img import Txt2ImgRequest

TINY = dict(prompt="a lighthouse", model="tiny", width=64, height=64, num_inference_steps=3, seed=5)


def counting_manager(registry, tiny_cache, index=0):
    """A manager on a fake GPU probe (reported as a CPU so the tiny model runs), counting loads."""
    from studio.models.loading import load_from_pretrained

    loads = []

    def loader(*args, **kwargs):
        loads.append(args[0])
        return load_from_pretrained(*args, **kwargs)

    probe = lambda: DeviceInfo("cpu", 16 * GB, 16 * GB, index)  # noqa: E731
    return ModelManager(registry, cache_dir=tiny_cache, probe=probe, loader=loader), loads


def oom_at(step, times=1):
    """An on_step that raises CUDA's out-of-memory error at `step` of the first `times` runs."""
    seen = {"runs": 0}

    def on_step(event):
        if event.step == 1:
            seen["runs"] += 1
        if event.step == step and seen["runs"] <= times:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return False

    return on_step, seen


# --- out of memory ------------------------------------------------------------------------------

def test_out_of_memory_is_recognised_however_torch_raises_it():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Half but found Float"))
    assert not is_out_of_memory(ValueError("out of memory"))  # ours, not torch's


def test_lighter_plan_batches_one_patch_and_changes_nothing_else():
    from studio.pipelines.upscale import UpscaleRequest

    request = UpscaleRequest(image="x.png", patch_batch=4)
    assert lighter(request) == UpscaleRequest(image="x.png", patch_batch=1)
    plain = Txt2ImgRequest(**TINY)
    assert lighter(plain) is plain


def test_out_of_memory_at_step_k_frees_the_device_and_the_retry_succeeds(registry, tiny_cache):
    manager, loads = counting_manager(registry, tiny_cache)
    expected = txt2img.run(Txt2ImgRequest(**TINY), manager).images[0]
    assert len(loads) == 1 and not manager.low_memory
    on_step, seen = oom_at(step=2)

    result = run_with_recovery(txt2img.run, Txt2ImgRequest(**TINY), manager, on_step)

    assert seen["runs"] == 2  # failed at step 2, then ran again from the start
    assert result.steps_done == 3 and not result.interrupted and result.images[0].size == (64, 64)
    # Everything was unloaded and loaded afresh, now in low-memory mode (VAE tiling and slicing)
    assert len(loads) == 2 and manager.low_memory and not manager.busy
    vae = manager.pipeline("tiny").vae
    assert vae.use_tiling and vae.use_slicing
    # The tiny VAE is smaller than a tile, so the low-memory retry even gives the same pixels
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected))


def test_out_of_memory_twice_is_a_clear_error_and_the_next_job_runs(registry, tiny_cache):
    manager, loads = counting_manager(registry, tiny_cache)
    on_step, seen = oom_at(step=1, times=2)
    with pytest.raises(OutOfMemory, match="Out of GPU memory, even after unloading every model.*Tried to allocate"):
        run_with_recovery(txt2img.run, Txt2ImgRequest(**TINY), manager, on_step)
    assert seen["runs"] == 2 and not manager.busy and manager.loaded() == []  # nothing held
    result = run_with_recovery(txt2img.run, Txt2ImgRequest(**TINY), manager, None)
    assert result.steps_done == 3


def test_other_errors_are_not_retried(registry, tiny_cache):
    manager, loads = counting_manager(registry, tiny_cache)
    calls = []

    def run(request, models, on_step):
        calls.append(1)
        raise RuntimeError("expected scalar type Half but found Float")

    with pytest.raises(RuntimeError, match="scalar type"):
        run_with_recovery(run, None, manager)
    assert calls == [1] and not manager.low_memory


# --- several GPUs ---------------------------------------------------------------------------------

def test_a_pool_needs_a_device():
    with pytest.raises(ValueError, match="at least one model manager"):
        DevicePool([])


def test_two_jobs_run_at_once_each_pinned_to_its_own_device(registry, tiny_cache):
    pool = DevicePool([counting_manager(registry, tiny_cache, i)[0] for i in range(2)])
    seen: dict[str, list] = {"a": [], "b": []}
    spans: dict[str, tuple] = {}
    both_started = threading.Barrier(2, timeout=10)

    def job(name):
        def run(request, models, on_step):
            start = time.monotonic()
            for _ in range(3):  # a job that leases several times (a panorama's views) stays on one GPU
                with models.lease(None, purpose=f"job {name}"):
                    seen[name].append(models.device_info.index)
                    both_started.wait() if len(seen[name]) == 1 else time.sleep(0.05)
            spans[name] = (start, time.monotonic())
        return run

    threads = [threading.Thread(target=pool.run, args=(job(n), None)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert {len(set(v)) for v in seen.values()} == {1}, seen  # pinned
    assert seen["a"][0] != seen["b"][0]  # one device each
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert a0 < b1 and b0 < a1  # at the same time


def test_a_job_goes_to_the_device_nobody_holds(registry, tiny_cache):
    first, second = (counting_manager(registry, tiny_cache, i)[0] for i in range(2))
    pool = DevicePool([first, second])
    with first.lease(None, exclusive=True, purpose="training a LoRA"):  # training holds GPU 0
        used = pool.run(lambda request, models, on_step: models.device_info.index, None)
    assert used == 1
    assert pool.run(lambda request, models, on_step: models.device_info.index, None) == 0  # free again


def test_one_device_pool_is_the_manager_alone(manager):
    pool = DevicePool([manager])
    assert len(pool) == 1 and pool.primary is manager
    result = pool.run(txt2img.run, Txt2ImgRequest(**TINY))
    assert result.images[0].size == (64, 64)


def test_cpu_probe_fixture_is_device_zero():
    assert cpu_probe().index == 0 and cpu_probe().torch_device == "cpu"
    assert DeviceInfo("cuda", GB, GB, 1).torch_device == "cuda:1"


# --- the command line -----------------------------------------------------------------------------

def test_gpus_option_parses_device_numbers():
    from studio.models.pool import parse_gpus

    assert parse_gpus("0") == [0] and parse_gpus("1,0,3") == [1, 0, 3]
    for bad in ("", "a", "0,,1", "-1", "0,0", "1.5"):
        with pytest.raises(ValueError, match="--gpus takes"):
            parse_gpus(bad)


def test_bad_gpus_and_queue_size_are_usage_errors():
    from test_cli import run_app

    done = run_app("--gpus", "0,0")
    assert done.returncode == 2 and "--gpus takes each device once" in done.stderr and "Traceback" not in done.stderr
    done = run_app("--queue-size", "0")
    assert done.returncode == 2 and "--queue-size must be at least 1, got 0" in done.stderr


def test_two_gpus_make_a_gpu_queue_of_two(registry, tiny_cache, tmp_path):
    """The page's and the API's GPU events share one queue that runs as many jobs as there are GPUs."""
    from studio.ui import build_app

    managers = [counting_manager(registry, tiny_cache, i)[0] for i in range(2)]
    demo = build_app(managers[0], "tiny", tmp_path / "outputs", tmp_path / "presets", lora_dir=tmp_path / "loras",
                     devices=DevicePool(managers))
    gpu = [fn for fn in demo.fns.values() if fn.concurrency_id == "gpu"]
    assert {fn.api_name for fn in gpu} >= {"txt2img", "upscale", "panorama", "control_hint", "on_page"}
    assert {fn.concurrency_limit for fn in gpu} == {2}
