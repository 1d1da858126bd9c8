"""ModelManager decisions with fake device probes, its loading, sharing and eviction, model
families as registry data, availability and the startup fallback. Leases: tests/test_lease.py."""

from __future__ import annotations

import json

import pytest

from studio.models.loading import estimate_bytes
from studio.models.manager import (
    GB, DeviceInfo, ModelManager, ModelUnavailable, choose_dtype, choose_offload, load_from_pretrained,
    memory_budget, pipeline_bytes,
)
from studio.models.registry import DEFAULT_REGISTRY, FamilyVram

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
def test_device_dtype_and_offload_decisions(registry, info, family, dtype, offload):
    assert choose_dtype(info) == dtype
    assert choose_offload(info, registry.family(family).vram_gb) == offload


def test_offload_follows_the_family_numbers():
    assert choose_offload(GPU_8GB, FamilyVram(full=7.0, model_offload=3.0)) == "none"
    assert choose_offload(GPU_8GB, FamilyVram(full=20.0, model_offload=7.0)) == "model"
    assert choose_offload(GPU_8GB, FamilyVram(full=20.0, model_offload=8.0)) == "sequential"


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


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so that nothing real on this machine counts as cached."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hub"


class FailingHub:
    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, repo_id):
        self.calls.append(repo_id)
        raise ConnectionError("no network")


def test_unavailable_model_falls_back_within_its_family(registry, tiny_cache, empty_hub_cache):
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: CPU, hub_check=FailingHub())
    name, notice = m.resolve_startup_model("sdxl-base")
    assert name == "tiny"
    assert "stabilityai/stable-diffusion-xl-base-1.0" in notice and "not meaningful" in notice
    assert m.resolve_startup_model("sd15")[0] == "tiny-sd15"
    assert m.resolve_startup_model("lcm-lora-sd15")[0] == "tiny-sd15"
    assert m.resolve_startup_model("sdxl-lightning")[0] == "tiny"
    with pytest.raises(ModelUnavailable, match=r"cannot be downloaded: the Hugging Face Hub is unreachable "
                                               r"\(ConnectionError: no network\)"):
        m.pipeline("sdxl-base")
    assert m.resolve_startup_model("tiny") == ("tiny", None)


def test_startup_model_must_be_a_base_model(manager):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        manager.resolve_startup_model("nope")
    with pytest.raises(ValueError, match=r"startup model must be one of \[.*'tiny'.*\], got 'sdxl-vae-fp16-fix' \(role 'vae'\)"):
        manager.resolve_startup_model("sdxl-vae-fp16-fix")
    with pytest.raises(ValueError, match="role 'controlnet'"):
        manager.resolve_startup_model("tiny-controlnet-depth")


def test_downloadable_model_is_kept(registry, tiny_cache, empty_hub_cache):
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: CPU, hub_check=lambda repo: None)
    assert m.resolve_startup_model("sdxl-base") == ("sdxl-base", None)


def test_availability_asks_the_hub_once(registry, tiny_cache, empty_hub_cache):
    hub = FailingHub()
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: CPU, hub_check=hub)
    reasons = {name: m.available(name) for name in registry.names("base")}
    assert {n for n, r in reasons.items() if r is None} == {"tiny", "tiny-fast", "tiny-sd15"}
    assert reasons["sdxl-base"] == "not cached and the Hugging Face Hub is unreachable (ConnectionError: no network)"
    assert m.available("tiny-controlnet-depth") is None and m.available("tiny-lora-b") is None
    assert len(hub.calls) == 1  # seven models, one probe


def test_availability_respects_hf_hub_offline(registry, tiny_cache, empty_hub_cache, monkeypatch):
    calls = []
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: GPU_24GB, hub_check=calls.append)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert m.available("sdxl-base") == "not cached and HF_HUB_OFFLINE is set"
    assert m.available("tiny") is None and calls == []


def fake_snapshot(cache, repo_id: str, files: dict[str, int]) -> None:
    """A Hugging Face cache entry for `repo_id` holding `files` (path -> size in bytes)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    for path, size in files.items():
        (repo / "snapshots" / "abc123" / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / "abc123" / path).write_bytes(b"0" * size)


def test_cached_models_are_available_and_their_files_give_the_estimate(registry, tiny_cache, empty_hub_cache):
    hub = FailingHub()
    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: GPU_24GB, hub_check=hub)
    entry = registry.get("sdxl-turbo")  # variant fp16
    fake_snapshot(empty_hub_cache, entry.repo_id, {"model_index.json": 10, "unet/diffusion_pytorch_model.fp16.safetensors": 1000,
                                                   "unet/diffusion_pytorch_model.safetensors": 2000})
    assert m.available("sdxl-turbo") is None and m.source(entry) == entry.repo_id and hub.calls == []
    family = registry.family("sdxl")
    assert estimate_bytes(entry, entry.repo_id, family, "float16") == 1000  # the fp16 variant is what loads
    assert estimate_bytes(entry, entry.repo_id, family, "float32") == 2000
    base = registry.get("sdxl-base")  # not cached: the family's typical size
    assert estimate_bytes(base, base.repo_id, family, "float16") == int(6.9 * GB)
    cn = registry.get("controlnet-depth-sdxl")
    assert estimate_bytes(cn, cn.repo_id, family, "float32") == int(2.5 * GB * 2)


def registry_with(mutate):
    data = json.loads(DEFAULT_REGISTRY.read_text())
    mutate(data)
    from studio.models.registry import Registry

    return Registry.model_validate(data)


def test_families_are_registry_data(registry):
    assert registry.family("sdxl").micro_conditioning and not registry.family("sd15").micro_conditioning
    assert registry.family("sd15").native_area == 512 * 512
    assert registry.get("sdxl-base").size_range == (256, 2048) and registry.get("tiny").size_range == (64, 512)
    assert registry.names("base", task="img2img") == registry.names("base")
    assert registry.names("inpaint", task="inpaint") == ["sdxl-inpaint", "sd15-inpaint", "tiny-inpaint"]
    assert registry.names("inpaint", task="txt2img") == []
    assert registry.names("lora") == ["tiny-lora-b"]
    narrow = registry_with(lambda d: d["families"]["sd15"].update(tasks=["txt2img"], max_size=1024))
    assert narrow.names("base", task="img2img") == [n for n in registry.names("base") if narrow.get(n).family == "sdxl"]
    assert narrow.get("sd15").size_range == (256, 1024)
    with pytest.raises(ValueError, match="unknown model family 'flux'"):
        registry.family("flux")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["models"][0].update(family="flux"), r"family 'flux' must be one of \['sd15', 'sdxl'\]"),
    (lambda d: d["families"]["sdxl"].update(vram="12"), "Extra inputs are not permitted"),
    (lambda d: d["families"]["sdxl"]["vram_gb"].update(full="12"), "vram_gb.full"),
    (lambda d: d["families"]["sdxl"]["vram_gb"].update(model_offload=20.0), "must not exceed vram_gb.full"),
    (lambda d: d["families"]["sdxl"].update(tasks=["upscale"]), "tasks"),
    (lambda d: d["families"]["sdxl"].update(min_size=4096), "must not exceed max_size"),
    (lambda d: d.pop("families"), "families"),
    (lambda d: next(m for m in d["models"] if m["role"] == "lora").pop("lora"), "role 'lora' needs a `lora` source"),
    (lambda d: d["models"][1].update(role="controlnet", control_types=["depth"], lora={"base": "sdxl-base"}),
     "only base and lora entries"),
])
def test_registry_rejects_bad_families_and_roles(mutate, message):
    with pytest.raises(ValueError, match=message):
        registry_with(mutate)


def test_lease_roles_and_tasks_are_checked(manager):
    with pytest.raises(ValueError, match=r"has role 'vae', but a lease's model must have a role in \('base', 'inpaint'\)"):
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
        pipe.to.assert_called_once_with("cuda:0")
    else:
        getattr(pipe, called).assert_called_once_with(gpu_id=0)


def test_placement_uses_the_managers_own_gpu_and_low_memory_mode_tiles_the_vae(registry, tiny_cache):
    """--gpus: the manager of GPU 1 puts its pipelines there; after an out-of-memory error
    (low_memory) even a pipeline that fits is offloaded and decodes in tiles."""
    from dataclasses import replace
    from unittest.mock import MagicMock

    m = ModelManager(registry, cache_dir=tiny_cache, probe=lambda: replace(GPU_24GB, index=1))
    pipe = MagicMock()
    m._place(pipe, registry.get("sdxl-base"))
    pipe.to.assert_called_once_with("cuda:1")
    pipe.vae.enable_tiling.assert_not_called()
    m.low_memory = True
    pipe = MagicMock()
    m._place(pipe, registry.get("sdxl-base"))
    pipe.enable_model_cpu_offload.assert_called_once_with(gpu_id=1)
    pipe.vae.enable_tiling.assert_called_once_with()
    pipe.vae.enable_slicing.assert_called_once_with()
