"""GPU leases: one job at a time in arrival order, not tied to a thread, not reentrant, and every
per-job change undone on release. LoRA stacks, adapter eviction, ControlNet and inpainting roles.

Everything runs the tiny random models on CPU (64 px, 1-2 steps, seeded generators).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from studio.models.manager import ModelManager, load_from_pretrained
from conftest import cpu_probe

WAIT_S = 10  # generous upper bound for a thread to reach a point; the tests never sleep this long


def render(pipe, steps: int = 2, **kwargs) -> np.ndarray:
    """Pixels of one seeded 64 px image (guidance 0: one UNet pass per step, so it is fast)."""
    out = pipe(prompt="a lighthouse on a cliff", num_inference_steps=steps, width=64, height=64, guidance_scale=0.0,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np", **kwargs)
    return out.images


def with_copies(registry, **copies):
    """`registry` plus entries copied from existing ones under new names ({new: old})."""
    extra = [registry.get(old).model_copy(update={"name": new}) for new, old in copies.items()]
    return registry.model_copy(update={"models": [*registry.models, *extra]})


def in_thread(target) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


# -- the gate: nesting, threads, order -----------------------------------------------------------


@pytest.mark.timeout(120)  # a regression here deadlocks: fail in minutes, not at the suite's limit
def test_nested_lease_in_the_same_thread_is_refused_and_the_outer_one_keeps_working(manager):
    with manager.lease("tiny") as outer:
        before = render(outer.pipe, steps=1)
        with pytest.raises(RuntimeError, match=r"already holds the GPU lease for 'tiny' \(txt2img\); nested leases"):
            manager.lease("tiny", "img2img")
        with pytest.raises(RuntimeError, match="nested leases are not allowed"):
            manager.lease(None)
        np.testing.assert_array_equal(render(outer.pipe, steps=1), before)
        entered = threading.Event()
        t = in_thread(lambda: manager.lease(None).release() or entered.set())
        assert not entered.wait(0.3)  # the outer lease is still held: others wait
    t.join(WAIT_S)
    assert entered.is_set()


def test_a_lease_released_from_another_thread_lets_the_next_one_in(manager):
    lease = manager.lease(None)
    releaser = in_thread(lease.release)
    releaser.join(WAIT_S)
    assert not lease.held
    with manager.lease("tiny") as nxt:  # would block forever if the release had not freed the gate
        assert nxt.pipe is not None
    lease.release()  # idempotent


def test_a_second_lease_waits_then_proceeds(manager):
    first = manager.lease("tiny")
    entered = threading.Event()

    def second():
        with manager.lease("tiny"):
            entered.set()

    t = in_thread(second)
    assert not entered.wait(0.3)
    first.release()
    t.join(WAIT_S)
    assert entered.is_set()


def test_waiters_are_served_first_come_first_served(manager):
    holder = manager.lease(None, purpose="a generation")
    order: list[str] = []
    messages: dict[str, list[str]] = {"a": [], "b": []}
    queued = {"a": threading.Event(), "b": threading.Event()}

    def waiter(name):
        def on_wait(message):
            messages[name].append(message)
            queued[name].set()

        with manager.lease(None, purpose=f"job {name}", on_wait=on_wait):
            order.append(name)

    ta = in_thread(lambda: waiter("a"))
    assert queued["a"].wait(WAIT_S)
    tb = in_thread(lambda: waiter("b"))
    assert queued["b"].wait(WAIT_S)
    assert order == []
    assert messages["a"][0] == "Another job (a generation) is using the GPU; you are number 1 in line."
    assert messages["b"][0] == "Another job (a generation) is using the GPU; you are number 2 in line."
    holder.release()
    ta.join(WAIT_S)
    tb.join(WAIT_S)
    assert order == ["a", "b"]


def test_a_waiter_that_gives_up_leaves_the_line(manager):
    class Stop(Exception):
        pass

    def stop(message):
        raise Stop(message)  # e.g. the user pressed Stop while waiting

    holder = manager.lease(None)
    raised: list[Exception] = []

    def give_up():
        try:
            manager.lease(None, on_wait=stop)
        except Stop as exc:
            raised.append(exc)

    in_thread(give_up).join(WAIT_S)
    assert [str(e) for e in raised] == ["Another job (a generation) is using the GPU; you are number 1 in line."]
    holder.release()
    done = threading.Event()
    in_thread(lambda: manager.lease(None).release() or done.set())
    assert done.wait(WAIT_S)  # no ghost ahead of it in the line


def test_exclusive_lease_frees_everything_and_others_wait(registry, tiny_cache):
    probes = []

    def probe():
        probes.append(1)
        return cpu_probe()

    m = ModelManager(registry, cache_dir=tiny_cache, probe=probe, depth_model="tiny-depth")
    m.pipeline("tiny")
    m.pipeline("tiny-sd15")
    with m.lease(None) as lease:
        lease.depth_estimator()
    assert m.loaded() == ["tiny", "tiny-sd15"] and len(probes) == 1

    training = m.lease(None, exclusive=True, purpose="a training run")
    assert m.loaded() == [] and m._helpers == {}
    assert len(probes) == 2  # measured again once the models were freed
    messages: list[str] = []
    heard, proceeded = threading.Event(), threading.Event()

    def generation():
        with m.lease("tiny", on_wait=lambda msg: messages.append(msg) or heard.set()):
            proceeded.set()

    t = in_thread(generation)
    assert heard.wait(WAIT_S)
    assert messages[0] == "A training run holds the GPU; you are number 1 in line."
    assert not proceeded.is_set()
    training.release()
    t.join(WAIT_S)
    assert proceeded.is_set() and m.loaded() == ["tiny"]
    assert len(probes) == 3  # and again after the training run


# -- undoing the job's changes --------------------------------------------------------------------


def attention_processors(pipe) -> dict[str, int]:
    return {name: id(p) for name, p in pipe.unet.attn_processors.items()}


def test_a_failed_job_leaves_nothing_behind(manager):
    from diffusers.models.attention_processor import AttnProcessor

    from studio.schedulers import make_scheduler

    with manager.lease("tiny") as lease:
        pipe = lease.pipe
        before = render(pipe, steps=1)
        state = (pipe.scheduler, pipe.vae.use_tiling, pipe.vae.use_slicing, attention_processors(pipe))
    with pytest.raises(ZeroDivisionError):
        with manager.lease("tiny", loras=[("tiny-lora-b", 1.0)]) as lease:
            assert lease.pipe is pipe
            assert not np.array_equal(render(pipe, steps=1), before)  # the LoRA is active
            pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config)
            pipe.vae.enable_tiling()
            pipe.vae.enable_slicing()
            pipe.unet.set_attn_processor(AttnProcessor())
            pipe._interrupt = True
            1 / 0
    assert (pipe.scheduler, pipe.vae.use_tiling, pipe.vae.use_slicing, attention_processors(pipe)) == state
    assert pipe._interrupt is False
    assert manager.adapters("tiny") == ["tiny-lora-b"]  # kept loaded for the next job, but inactive
    np.testing.assert_array_equal(render(pipe, steps=1), before)


def test_a_failure_while_preparing_releases_the_lease(manager, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(manager, "loader", broken)
    with pytest.raises(OSError, match="disk full"):
        manager.lease("tiny")
    monkeypatch.undo()
    with manager.lease("tiny") as lease:  # the gate is free again
        assert lease.pipe is not None


# -- LoRA stacks ----------------------------------------------------------------------------------


def test_a_lora_stack_matches_diffusers_and_release_restores_the_base(manager, registry):
    with manager.lease("tiny") as lease:
        base = render(lease.pipe)
    stack = [("tiny-fast", 0.5), ("tiny-lora-b", 1.0)]
    with manager.lease("tiny", loras=stack) as lease:
        stacked = render(lease.pipe)

    # The same thing done by hand with diffusers on a separately loaded copy of the model.
    reference = load_from_pretrained(manager.source(registry.get("tiny")), registry.get("tiny"), "float32")
    reference.set_progress_bar_config(disable=True)
    for name, _ in stack:
        entry = registry.get(name)
        reference.load_lora_weights(manager.source(entry), weight_name=entry.lora.weight_name, adapter_name=name)
    reference.set_adapters([n for n, _ in stack], adapter_weights=[w for _, w in stack])
    np.testing.assert_array_equal(stacked, render(reference))
    assert not np.array_equal(stacked, base)

    with manager.lease("tiny") as lease:
        np.testing.assert_array_equal(render(lease.pipe), base)  # bit for bit


def test_draft_base_draft_gives_the_same_draft(manager):
    def draft():
        with manager.lease("tiny-fast") as lease:
            assert manager.adapters("tiny") == ["tiny-fast"] and lease.entry.name == "tiny-fast"
            return render(lease.pipe, steps=1)

    first = draft()
    with manager.lease("tiny") as lease:
        base = render(lease.pipe, steps=1)
    np.testing.assert_array_equal(draft(), first)  # enable_lora() after the release disabled it
    assert not np.array_equal(first, base)


def test_least_recently_used_adapters_are_deleted(registry, tiny_cache):
    m = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe, max_adapters=1)
    with m.lease("tiny-fast"):
        pass
    with m.lease("tiny", loras=[("tiny-lora-b", 1.0)]) as lease:
        assert m.adapters("tiny") == ["tiny-lora-b"]
        assert lease.pipe.get_list_adapters()["unet"] == ["tiny-lora-b"]  # deleted from the model too

    m = ModelManager(with_copies(registry, **{"tiny-lora-c": "tiny-lora-b"}), cache_dir=tiny_cache, probe=cpu_probe,
                     max_adapters=2)
    for name in ["tiny-fast", "tiny-lora-b", "tiny-fast", "tiny-lora-c"]:  # tiny-lora-b is then the oldest
        with m.lease("tiny", loras=[(name, 1.0)]):
            pass
    assert m.adapters("tiny") == ["tiny-fast", "tiny-lora-c"]


def test_bad_stacks_are_refused_before_waiting(manager):
    with pytest.raises(ValueError, match="lora 'tiny-controlnet-depth' must be an entry with a `lora` source"):
        manager.lease("tiny", loras=[("tiny-controlnet-depth", 1.0)])
    with pytest.raises(ValueError, match="must not repeat"):
        manager.lease("tiny-fast", loras=[("tiny-fast", 1.0)])
    with pytest.raises(ValueError, match="weight must be a finite number, got nan"):
        manager.lease("tiny", loras=[("tiny-lora-b", float("nan"))])
    with pytest.raises(ValueError, match="lora 'tiny-lora-b' is for family 'sdxl', but model 'tiny-sd15' is 'sd15'"):
        manager.lease("tiny-sd15", loras=[("tiny-lora-b", 1.0)])
    assert manager.loaded() == []


# -- memory: evict before load --------------------------------------------------------------------


def test_eviction_happens_before_the_new_model_loads(registry, tiny_cache):
    events: list[tuple] = []
    size = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe).pipeline("tiny")

    def loader(source, entry, dtype, vae=None):
        events.append(("load", entry.name, tuple(m.loaded())))
        return load_from_pretrained(source, entry, dtype)

    from studio.models.loading import pipeline_bytes

    m = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe, loader=loader,
                     budget_bytes=int(pipeline_bytes(size) * 1.2))  # room for one tiny model, not two
    evict = m._evict
    m._evict = lambda name: events.append(("evict", name)) or evict(name)
    m.pipeline("tiny")
    m.pipeline("tiny-sd15")
    assert events == [("load", "tiny", ()), ("evict", "tiny"), ("load", "tiny-sd15", ())]
    assert m.loaded() == ["tiny-sd15"]


# -- roles: ControlNet, inpainting, VAE -----------------------------------------------------------


def test_controlnets_load_through_from_pretrained_and_derive_pipelines(registry, tiny_cache):
    from PIL import Image

    names: list[str] = []

    def loader(source, entry, dtype, vae=None):
        names.append(entry.name)
        return load_from_pretrained(source, entry, dtype)

    m = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe, loader=loader)
    with m.lease("tiny") as lease:
        base, plain = lease.pipe, render(lease.pipe, steps=1)
    with m.lease("tiny", controlnets=["tiny-controlnet-depth"]) as lease:
        pipe = lease.pipe
        assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
        assert type(pipe.controlnet).__name__ == "ControlNetModel"
        assert pipe.unet is base.unet and pipe.vae is base.vae
        controlled = render(pipe, steps=1, image=Image.new("RGB", (64, 64), (255, 255, 255)))
    assert not np.array_equal(controlled, plain)
    assert names == ["tiny", "tiny-controlnet-depth"] and m.loaded() == ["tiny", "tiny-controlnet-depth"]
    with m.lease("tiny", controlnets=["tiny-controlnet-depth"]) as lease:
        assert lease.pipe is pipe  # the same set reuses the derived pipeline
    with m.lease("tiny", controlnets=["tiny-controlnet-depth", "tiny-controlnet-canny"]) as lease:
        assert type(lease.pipe.controlnet).__name__ == "MultiControlNetModel" and lease.pipe is not pipe
    with m.lease("tiny", "img2img", controlnets=["tiny-controlnet-depth"]) as lease:
        assert type(lease.pipe).__name__ == "StableDiffusionXLControlNetImg2ImgPipeline"
    m.unload("tiny-controlnet-depth")
    with m.lease("tiny", controlnets=["tiny-controlnet-depth"]) as lease:
        assert lease.pipe is not pipe and lease.pipe.unet is base.unet  # rebuilt around a fresh ControlNet
    assert names == ["tiny", "tiny-controlnet-depth", "tiny-controlnet-canny", "tiny-controlnet-depth"]


def test_inpainting_checkpoints_and_helper_roles(registry, tiny_cache):
    m = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)
    with m.lease("tiny-inpaint", "inpaint") as lease:
        assert type(lease.pipe).__name__ == "StableDiffusionXLInpaintPipeline"
        assert lease.pipe.unet.config.in_channels == 9  # noisy latents + mask + masked image latents
    assert m.loaded() == ["tiny-inpaint"]
    with pytest.raises(ValueError, match=r"model 'tiny-inpaint' \(role 'inpaint'\) can do \['inpaint'\], not 'txt2img'"):
        m.lease("tiny-inpaint")
    with pytest.raises(ValueError, match=r"has role 'vae', but a lease's model must have a role in \('base', 'inpaint'\)"):
        m.lease("sdxl-vae-fp16-fix")
    with pytest.raises(ValueError, match="has role 'controlnet'"):
        m.lease("tiny-controlnet-depth")
    with pytest.raises(ValueError, match="task must be one of"):
        m.lease("tiny", "upscale")


def test_derived_pipelines_are_placed_and_silent(manager):
    placed: list[str] = []
    manager._place = lambda pipe, entry: placed.append(type(pipe).__name__)
    with manager.lease("tiny"):
        pass
    with manager.lease("tiny", "img2img") as lease:
        img2img = lease.pipe
    with manager.lease("tiny", "img2img"):
        pass  # already placed: nothing to do
    with manager.lease("tiny", "txt2img"):
        pass  # offload hooks follow the pipeline in use, so the base is placed again
    assert placed == ["StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLPipeline"]
    assert img2img._progress_bar_config == {"disable": True}
