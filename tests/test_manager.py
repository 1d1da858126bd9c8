"""ModelManager decisions with fake device probes, and its loading, sharing and eviction."""

from __future__ import annotations

import threading

import pytest

from studio.models.manager import (
    GB, DeviceInfo, ModelManager, ModelUnavailable, choose_dtype, choose_offload, load_from_pretrained,
    memory_budget, pipeline_bytes,
)

GPU_24GB = DeviceInfo("cuda", free_bytes=23 * GB, ram_bytes=64 * GB)
GPU_8GB = DeviceInfo("cuda", free_bytes=7.5 * GB, ram_bytes=32 * GB)
GPU_4GB = DeviceInfo("cuda", free_bytes=3.5 * GB, ram_bytes=16 * GB)
MAC = DeviceInfo("mps", free_bytes=16 * GB, ram_bytes=16 * GB)
CPU = DeviceInfo("cpu", free_bytes=20 * GB, ram_bytes=20 * GB)


@pytest.mark.parametrize(
    "info, family, dtype, offload",
    [
        (GPU_24GB, "sdxl", "float16", "none"),
        (GPU_8GB, "sdxl", "float16", "model"),
        (GPU_4GB, "sdxl", "float16", "sequential"),
        (GPU_8GB, "sd15", "float16", "none"),
        (GPU_4GB, "sd15", "float16", "model"),
        (MAC, "sdxl", "float16", "none"),
        (CPU, "sdxl", "float32", "none"),
    ],
)
def test_device_dtype_and_offload_decisions(info, family, dtype, offload):
    assert choose_dtype(info) == dtype
    assert choose_offload(info, family) == offload


def test_memory_budget():
    assert memory_budget(GPU_24GB, "none") == int(23 * GB * 0.8)  # weights live in VRAM
    assert memory_budget(GPU_8GB, "model") == int(32 * GB * 0.6)  # offloaded weights live in RAM
    assert memory_budget(CPU, "none") == int(20 * GB * 0.6)


class CountingLoader:
    """The real loader, counting calls and recording the dtype it was asked for."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def __call__(self, source, entry, dtype, vae=None):
        self.calls.append((entry.name, dtype))
        return load_from_pretrained(source, entry, "float32")  # CPU here, whatever the fake says


def fake_manager(registry, tiny_cache, info=CPU, **kw):
    loader = CountingLoader()
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: info, loader=loader, **kw)
    return m, loader


def test_tiny_models_load_through_from_pretrained(manager, tiny_cache):
    pipe = manager.pipeline("tiny")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert (tiny_cache / "tiny-sdxl-v1" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert type(manager.pipeline("tiny-sd15")).__name__ == "StableDiffusionPipeline"


def test_related_pipelines_share_components_and_load_once(registry, tiny_cache):
    m, loader = fake_manager(registry, tiny_cache)
    base = m.pipeline("tiny", "txt2img")
    img2img = m.pipeline("tiny", "img2img")
    inpaint = m.pipeline("tiny", "inpaint")
    assert type(img2img).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionXLInpaintPipeline"
    assert img2img.unet is base.unet and inpaint.vae is base.vae and img2img.text_encoder_2 is base.text_encoder_2
    assert m.pipeline("tiny", "img2img") is img2img  # derived once, then reused
    assert loader.calls == [("tiny", "float32")]


def test_dtype_follows_the_probe(registry, tiny_cache):
    m, loader = fake_manager(registry, tiny_cache, info=MAC)
    m._place = lambda pipe, entry: None  # nothing to move on this CPU-only machine
    m.pipeline("tiny")
    assert loader.calls == [("tiny", "float16")]


def test_lru_eviction_within_budget(registry, tiny_cache):
    probe_size = pipeline_bytes(ModelManager(registry, cache_dir=tiny_cache, probe=lambda: CPU).pipeline("tiny"))
    m, loader = fake_manager(registry, tiny_cache, budget_bytes=int(probe_size * 2.5))  # room for two
    m.pipeline("tiny")
    m.pipeline("tiny-sd15")
    m.pipeline("tiny")  # tiny is now the most recently used
    assert m.loaded() == ["tiny-sd15", "tiny"]
    m.registry = m.registry.model_copy(
        update={"models": [*m.registry.models, m.registry.get("tiny").model_copy(update={"name": "tiny-b"})]}
    )
    m.pipeline("tiny-b")
    assert m.loaded() == ["tiny", "tiny-b"]  # the least recently used one went
    m.pipeline("tiny-sd15")
    assert [c[0] for c in loader.calls] == ["tiny", "tiny-sd15", "tiny-b", "tiny-sd15"]


def test_use_restores_the_scheduler_and_serialises(manager):
    from studio.schedulers import make_scheduler

    with manager.use("tiny") as pipe:
        original = pipe.scheduler
        pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config)
        entered = threading.Event()

        def other():
            with manager.use("tiny"):
                entered.set()

        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.3)  # a second request waits while the first holds the pipeline
    t.join(5)
    assert entered.is_set()
    assert manager.pipeline("tiny").scheduler is original


def test_unavailable_model_falls_back_to_tiny_with_a_notice(registry, tiny_cache):
    def offline(repo_id):
        raise ConnectionError("no network")

    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: CPU, hub_check=offline)
    name, notice = m.resolve_startup_model("sdxl-base")
    assert name == "tiny"
    assert "stabilityai/stable-diffusion-xl-base-1.0" in notice and "not meaningful" in notice
    with pytest.raises(ModelUnavailable, match="cannot be downloaded: ConnectionError: no network"):
        m.pipeline("sdxl-base")
    assert m.resolve_startup_model("tiny") == ("tiny", None)


def test_downloadable_model_is_kept(registry, tiny_cache):
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: CPU, hub_check=lambda repo: None)
    assert m.resolve_startup_model("sdxl-base") == ("sdxl-base", None)


def test_only_base_models_load(manager):
    with pytest.raises(ValueError, match="has role 'vae'; pick a base model"):
        manager.pipeline("sdxl-vae-fp16-fix")
    with pytest.raises(ValueError, match="task must be one of"):
        manager.pipeline("tiny", "upscale")


@pytest.mark.parametrize(
    "info, called",
    [(GPU_24GB, "to"), (GPU_8GB, "enable_model_cpu_offload"), (GPU_4GB, "enable_sequential_cpu_offload")],
)
def test_placement_follows_the_offload_decision(registry, tiny_cache, info, called):
    from unittest.mock import MagicMock

    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: info)
    pipe = MagicMock()
    m._place(pipe, registry.get("sdxl-base"))
    calls = {c[0] for c in pipe.method_calls}
    assert calls == {called}
    if called == "to":
        pipe.to.assert_called_once_with("cuda")
