"""ControlNets as registry data (control types, union models and their modes), the pipelines a lease
derives for them (single, several, the same one twice, ControlNet-Union), their eviction, and the
line art annotator that draws hints. Tiny random models on CPU: 64 px, 2 steps, seeded generators.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from conftest import cpu_probe
from PIL import Image

from studio.models.annotators import load_lineart, save_tiny_lineart
from studio.models.loading import pipeline_bytes
from studio.models.manager import ModelManager, ModelUnavailable, load_from_pretrained
from studio.models.registry import DEFAULT_REGISTRY, Registry

UNION_MODES = {"depth": 1, "canny": 3, "lineart": 3, "tile": 6, "inpaint": 7}  # xinsir's model card


def registry_with(mutate) -> Registry:
    data = json.loads(DEFAULT_REGISTRY.read_text())
    mutate(data)
    return Registry.model_validate(data)


def entry(data: dict, name: str) -> dict:
    return next(m for m in data["models"] + data["annotators"] if m["name"] == name)


def render(pipe, steps: int = 2, **kwargs) -> np.ndarray:
    """Pixels of one seeded 64 px image."""
    out = pipe(prompt="a lighthouse on a cliff", num_inference_steps=steps, width=64, height=64, guidance_scale=0.0,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np", **kwargs)
    return out.images


def hint(seed: int) -> Image.Image:
    """A 64 px random RGB hint image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class CountingLoader:
    def __init__(self):
        self.names: list[str] = []

    def __call__(self, source, entry, dtype, vae=None):
        self.names.append(entry.name)
        return load_from_pretrained(source, entry, dtype)


def counting_manager(registry, tiny_cache, **kw) -> tuple[ModelManager, CountingLoader]:
    loader = CountingLoader()
    return ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe, loader=loader, **kw), loader


# -- the registry -------------------------------------------------------------------------------


def test_controlnets_are_listed_single_condition_first(registry):
    assert [m.name for m in registry.controlnets("sdxl")] == [
        "controlnet-depth-sdxl", "controlnet-canny-sdxl", "controlnet-tile-sdxl", "tiny-controlnet-depth",
        "tiny-controlnet-canny", "controlnet-union-sdxl-promax", "tiny-controlnet-union",
    ]
    assert [m.name for m in registry.controlnets("sdxl", "depth")] == [
        "controlnet-depth-sdxl", "tiny-controlnet-depth", "controlnet-union-sdxl-promax", "tiny-controlnet-union",
    ]
    assert [m.name for m in registry.controlnets("sdxl", "tile")] == [
        "controlnet-tile-sdxl", "controlnet-union-sdxl-promax", "tiny-controlnet-union"]
    assert [m.name for m in registry.controlnets("sd15", "lineart")] == ["controlnet-lineart-sd15"]
    assert [m.name for m in registry.controlnets("sd15", "depth")] == ["controlnet-depth-sd15", "tiny-controlnet-depth-sd15"]
    with pytest.raises(ValueError, match="unknown model family 'flux'"):
        registry.controlnets("flux")


def test_union_entries_map_control_types_to_the_model_cards_modes(registry):
    for name in ("controlnet-union-sdxl-promax", "tiny-controlnet-union"):
        union = registry.get(name)
        assert union.union and union.control_modes == UNION_MODES
        assert union.control_types == ["depth", "canny", "lineart", "tile", "inpaint"]
    single = registry.get("controlnet-canny-sdxl")
    assert single.control_types == ["canny"] and not single.union and single.control_modes is None
    assert registry.get("controlnet-union-sdxl-promax").repo_id == "brad-twinkl/controlnet-union-sdxl-1.0-promax"
    assert registry.get("sd15-inpaint").role == "inpaint" and registry.tasks(registry.get("sd15-inpaint")) == ["inpaint"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: entry(d, "controlnet-canny-sdxl").pop("control_types"), "ControlNet 'controlnet-canny-sdxl' needs control_types"),
    (lambda d: entry(d, "controlnet-canny-sdxl").update(control_types=["pose"]), "control_types"),
    (lambda d: entry(d, "controlnet-canny-sdxl").update(control_types=[]), "control_types"),
    (lambda d: entry(d, "controlnet-canny-sdxl").update(control_types=["canny", "canny"]), "must not repeat"),
    (lambda d: entry(d, "sdxl-base").update(control_types=["depth"]), "only ControlNets .* not role 'base'"),
    (lambda d: entry(d, "tiny-controlnet-union").pop("control_modes"), "a union model .* needs control_modes"),
    (lambda d: entry(d, "tiny-controlnet-union").update(union=False), "only a union model may have them"),
    (lambda d: entry(d, "tiny-controlnet-union")["control_modes"].pop("tile"),
     r"control_modes must map exactly the control_types \['canny', 'depth', 'inpaint', 'lineart', 'tile'\]"),
    (lambda d: entry(d, "tiny-controlnet-union")["control_modes"].update(depth=-1), "indexes >= 0"),
    (lambda d: entry(d, "tiny-lineart").update(kind="hed"), "kind"),
    (lambda d: entry(d, "tiny-lineart").update(name="tiny"), "model names must be unique, repeated: \\['tiny'\\]"),
])
def test_registry_rejects_bad_controlnet_entries(mutate, message):
    with pytest.raises(ValueError, match=message):
        registry_with(mutate)


def test_annotators_are_registry_data(registry):
    assert registry.annotator("lineart").name == "lineart-annotators"  # the first is the default
    assert registry.annotator("lineart").repo_id == "lllyasviel/Annotators"
    assert registry.annotator("lineart", "tiny-lineart").builtin == "tiny-lineart"
    with pytest.raises(ValueError, match=r"unknown lineart annotator 'nope'; expected one of \['lineart-annotators', 'tiny-lineart'\]"):
        registry.annotator("lineart", "nope")


# -- pipelines a lease derives --------------------------------------------------------------------


def test_one_controlnet_gives_its_pipeline_with_that_model(registry, tiny_cache):
    m, loader = counting_manager(registry, tiny_cache)
    with m.lease("tiny", controlnets=["tiny-controlnet-depth"]) as lease:
        assert type(lease.pipe).__name__ == "StableDiffusionXLControlNetPipeline"
        assert lease.pipe.controlnet is m._loaded["tiny-controlnet-depth"].model
    with m.lease("tiny", "inpaint", controlnets=["tiny-controlnet-depth"]) as lease:
        assert type(lease.pipe).__name__ == "StableDiffusionXLControlNetInpaintPipeline"
    with m.lease("tiny-sd15", controlnets=["tiny-controlnet-depth-sd15"]) as lease:
        assert type(lease.pipe).__name__ == "StableDiffusionControlNetPipeline"
    assert loader.names == ["tiny", "tiny-controlnet-depth", "tiny-sd15", "tiny-controlnet-depth-sd15"]


def test_a_controlnet_runs_on_an_inpainting_checkpoint(manager):
    with manager.lease("tiny-inpaint", "inpaint", controlnets=["tiny-controlnet-depth"]) as lease:
        assert type(lease.pipe).__name__ == "StableDiffusionXLControlNetInpaintPipeline"
        assert lease.pipe.unet.config.in_channels == 9
        image = render(lease.pipe, image=hint(0), mask_image=Image.new("L", (64, 64), 255), control_image=hint(1))
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_several_controlnets_share_one_multi_model_and_a_repeat_loads_once(registry, tiny_cache):
    m, loader = counting_manager(registry, tiny_cache)
    with m.lease("tiny", controlnets=["tiny-controlnet-depth", "tiny-controlnet-canny"]) as lease:
        nets = lease.pipe.controlnet.nets
        assert type(lease.pipe.controlnet).__name__ == "MultiControlNetModel"
        assert [nets[0], nets[1]] == [m._loaded["tiny-controlnet-depth"].model, m._loaded["tiny-controlnet-canny"].model]
        assert nets[0] is not nets[1]
    with m.lease("tiny", controlnets=["tiny-controlnet-canny", "tiny-controlnet-canny"]) as lease:  # two canny hints
        nets = lease.pipe.controlnet.nets
        assert type(lease.pipe.controlnet).__name__ == "MultiControlNetModel" and nets[0] is nets[1]
        two = render(lease.pipe, image=[hint(0), hint(1)])
    assert loader.names == ["tiny", "tiny-controlnet-depth", "tiny-controlnet-canny"]
    with m.lease("tiny", controlnets=["tiny-controlnet-canny", "tiny-controlnet-canny"]) as lease:
        np.testing.assert_array_equal(render(lease.pipe, image=[hint(0), hint(1)]), two)  # the cached pipeline
        assert set(m._loaded["tiny"].pipes) == {
            ("txt2img", ()), ("txt2img", ("tiny-controlnet-depth", "tiny-controlnet-canny")),
            ("txt2img", ("tiny-controlnet-canny", "tiny-controlnet-canny")),
        }


def test_a_union_model_gets_the_union_pipelines(registry, tiny_cache):
    m, loader = counting_manager(registry, tiny_cache)
    expected = {"txt2img": "StableDiffusionXLControlNetUnionPipeline",
                "img2img": "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                "inpaint": "StableDiffusionXLControlNetUnionInpaintPipeline"}
    for task, pipeline in expected.items():
        with m.lease("tiny", task, controlnets=["tiny-controlnet-union"]) as lease:
            assert type(lease.pipe).__name__ == pipeline
            assert type(lease.pipe.controlnet).__name__ == "ControlNetUnionModel"
            assert lease.pipe.controlnet.config.num_control_type == 8  # modes 0-7, as ProMax
    with m.lease("tiny", controlnets=["tiny-controlnet-union", "tiny-controlnet-union"]) as lease:
        multi = lease.pipe.controlnet
        assert type(lease.pipe).__name__ == "StableDiffusionXLControlNetUnionPipeline"
        assert type(multi).__name__ == "MultiControlNetUnionModel"
        assert multi.nets[0] is multi.nets[1] is m._loaded["tiny-controlnet-union"].model
        image = render(lease.pipe, control_image=[hint(0), hint(1)], control_mode=[UNION_MODES["depth"], UNION_MODES["canny"]])
    assert image.shape == (1, 64, 64, 3)
    assert loader.names == ["tiny", "tiny-controlnet-union"]


def test_the_union_model_follows_its_mode_and_image(manager):
    with manager.lease("tiny", controlnets=["tiny-controlnet-union"]) as lease:
        depth = render(lease.pipe, control_image=[hint(0)], control_mode=[UNION_MODES["depth"]])
        again = render(lease.pipe, control_image=[hint(0)], control_mode=[UNION_MODES["depth"]])
        tile = render(lease.pipe, control_image=[hint(0)], control_mode=[UNION_MODES["tile"]])
        other = render(lease.pipe, control_image=[hint(1)], control_mode=[UNION_MODES["depth"]])
        weak = render(lease.pipe, control_image=[hint(0)], control_mode=[UNION_MODES["depth"]],
                      controlnet_conditioning_scale=0.0)
    with manager.lease("tiny") as lease:
        plain = render(lease.pipe)
    np.testing.assert_array_equal(depth, again)
    for changed in (tile, other, plain):
        assert np.abs(changed - depth).max() > 1e-3
    np.testing.assert_allclose(weak, plain, atol=1e-5)  # scale 0: the ControlNet adds nothing


@pytest.mark.timeout(120)  # a regression here waits forever behind the holder
def test_mixing_union_and_single_controlnets_is_refused_before_waiting(manager):
    held = []
    t = threading.Thread(target=lambda: held.append(manager.lease(None, purpose="another job")))
    t.start()
    t.join(10)
    with pytest.raises(ValueError, match=r"ControlNet-Union models cannot be combined with single-condition "
                                         r"ControlNets in one job .* got unions \['tiny-controlnet-union'\] "
                                         r"and \['tiny-controlnet-depth'\]"):
        manager.lease("tiny", controlnets=["tiny-controlnet-union", "tiny-controlnet-depth"])
    with pytest.raises(ValueError, match="cannot run on inpainting checkpoint 'tiny-inpaint'.*4-channel UNet"):
        manager.lease("tiny-inpaint", "inpaint", controlnets=["tiny-controlnet-union"])
    with pytest.raises(ValueError, match="controlnet 'tiny-controlnet-depth-sd15' is for family 'sd15', but model 'tiny' is 'sdxl'"):
        manager.lease("tiny", controlnets=["tiny-controlnet-depth-sd15"])
    held[0].release()
    assert manager.loaded() == []


# -- memory ---------------------------------------------------------------------------------------


def test_controlnets_are_evicted_like_other_models(registry, tiny_cache):
    probe = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)
    with probe.lease("tiny", controlnets=["tiny-controlnet-depth"]):
        sizes = {name: loaded.nbytes for name, loaded in probe._loaded.items()}
    # Room for the model and one ControlNet, not two.
    m, loader = counting_manager(registry, tiny_cache,
                                 budget_bytes=int(sizes["tiny"] + 1.5 * sizes["tiny-controlnet-depth"]))
    with m.lease("tiny", controlnets=["tiny-controlnet-depth"]):
        pass
    with m.lease("tiny", controlnets=["tiny-controlnet-canny"]) as lease:
        assert m.loaded() == ["tiny", "tiny-controlnet-canny"]
        assert lease.pipe.controlnet is m._loaded["tiny-controlnet-canny"].model
    assert set(m._loaded["tiny"].pipes) == {("txt2img", ()), ("txt2img", ("tiny-controlnet-canny",))}
    with m.lease("tiny", controlnets=["tiny-controlnet-depth"]):
        assert m.loaded() == ["tiny", "tiny-controlnet-depth"]
    assert loader.names == ["tiny", "tiny-controlnet-depth", "tiny-controlnet-canny", "tiny-controlnet-depth"]
    assert pipeline_bytes(m._loaded["tiny-controlnet-depth"].model) == sizes["tiny-controlnet-depth"]


# -- the line art annotator -----------------------------------------------------------------------


def test_the_tiny_lineart_annotator_keeps_the_image_size(manager):
    manager.annotator_models = {"lineart": "tiny-lineart"}
    photo = hint(2).resize((100, 60))
    with manager.lease(None) as lease:
        name, annotator = lease.annotator("lineart")
        fine = annotator(photo, resolution=64)
        coarse = annotator(photo, coarse=True, resolution=64)
        assert lease.annotator("lineart")[1] is annotator  # loaded once, then kept
    assert name == "tiny-lineart"
    assert fine.size == coarse.size == (100, 60) and fine.mode == "RGB"
    pixels = np.asarray(fine)
    assert pixels.std() > 1.0 and (pixels[..., 0] == pixels[..., 2]).all()  # grey lines, varying over the image
    assert not np.array_equal(pixels, np.asarray(coarse))  # two networks
    with pytest.raises(RuntimeError, match="was released"):
        lease.annotator("lineart")
    with manager.lease(None, exclusive=True, purpose="a training run"):
        assert manager._helpers == {}  # an exclusive job frees it


def test_without_the_hub_the_real_annotator_is_a_clear_error(manager, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing real counts as cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manager.annotator_models = None  # the registry's first line art annotator: the real one
    message = (r"model 'lineart-annotators' \(lllyasviel/Annotators\) is not in the local Hugging Face cache .* "
               r"HF_HUB_OFFLINE is set\. Drawing lineart hints needs this annotator")
    with manager.lease(None) as lease, pytest.raises(ModelUnavailable, match=message):
        lease.annotator("lineart")


def test_lineart_weights_load_as_tensors_only(tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "tiny").mkdir()
    (tmp_path / "pth").mkdir()
    save_tiny_lineart(tmp_path / "tiny")
    pth = tmp_path / "pth"
    for stem in ("sk_model", "sk_model2"):  # the Hub's file format: a pickled state dict of tensors
        torch.save(load_file(str(tmp_path / "tiny" / f"{stem}.safetensors")), pth / f"{stem}.pth")
    photo = hint(3)
    expected = np.asarray(load_lineart(str(tmp_path / "tiny"))(photo, resolution=64))
    np.testing.assert_array_equal(np.asarray(load_lineart(str(pth))(photo, resolution=64)), expected)

    torch.save({"model0.1.weight": threading.Lock}, pth / "sk_model.pth")  # a pickled object, not a tensor
    with pytest.raises(Exception, match="Weights only load failed"):
        load_lineart(str(pth))
