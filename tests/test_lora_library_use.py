"""LoRAs from the user's library in every task: the `loras` field and <lora:name:weight> prompt
tags reach the model lease, which checks the file against the model before waiting, loads it as
an adapter and undoes it on release. Infotext writes the tags; reading it fills `loras` back.

Tiny random models on CPU, 64 px, 2 steps; the library LoRA is `save_tiny_lora`'s file.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import cpu_probe
from studio.metadata import infotext, parse_infotext
from studio.models.manager import ModelManager
from studio.models.tiny import LORA_WEIGHT_NAME, save_tiny_lora
from studio.pipelines.txt2img import Txt2ImgRequest, run
from studio.presets import preset_from_request
from studio.tasks import TASKS

BASE = dict(prompt="a red lighthouse on a cliff", negative_prompt="blurry", width=64, height=64, num_inference_steps=2,
            guidance_scale=5.0, seed=1234, batch_size=1, model="tiny", scheduler="Euler")


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """Two different tiny SDXL LoRA files: {"a": path, "b": path}."""
    folder = tmp_path_factory.mktemp("lora-files")
    files = {}
    for name, seed in (("a", 7), ("b", 8)):
        save_tiny_lora(folder / name, seed=seed)
        files[name] = folder / name / LORA_WEIGHT_NAME
    return files


@pytest.fixture
def library(tmp_path, lora_files):
    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(lora_files["a"], folder / "mine.safetensors")
    return folder


@pytest.fixture
def lib_manager(registry, tiny_cache, library):
    return ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe, lora_dir=library)


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in result.images])


def test_a_library_lora_changes_the_image_and_weight_zero_does_not(lib_manager):
    plain = pixels(run(Txt2ImgRequest(**BASE), lib_manager))
    with_lora = run(Txt2ImgRequest(**BASE, loras="mine:1.0"), lib_manager)
    assert not np.array_equal(pixels(with_lora), plain)
    assert lib_manager.adapters("tiny") == ["library:mine"]  # prefixed: never clashes with a registry name
    np.testing.assert_array_equal(pixels(run(Txt2ImgRequest(**BASE, loras="mine:0"), lib_manager)), plain)
    np.testing.assert_array_equal(pixels(run(Txt2ImgRequest(**BASE), lib_manager)), plain)  # released


def test_a_prompt_tag_is_the_same_as_the_field(lib_manager):
    field_form = run(Txt2ImgRequest(**BASE, loras="mine:1"), lib_manager)
    tag_form = run(Txt2ImgRequest(**{**BASE, "prompt": BASE["prompt"] + ", <lora:mine:1>"}), lib_manager)
    np.testing.assert_array_equal(pixels(tag_form), pixels(field_form))
    # The request as run names every LoRA in one place, and its prompt has no tags left
    assert tag_form.request.prompt == BASE["prompt"] and tag_form.request.loras == "mine:1.0"
    assert tag_form.prompt == field_form.prompt == BASE["prompt"]


def test_infotext_writes_tags_and_reading_it_fills_loras(lib_manager):
    result = run(Txt2ImgRequest(**{**BASE, "prompt": "a cat <lora:mine:1>"}), lib_manager)
    text = infotext(result.request, result.seed)
    assert text.splitlines()[0] == "a cat <lora:mine:1.0>"
    name, fields = parse_infotext(text)
    assert name == "txt2img" and fields["prompt"] == "a cat" and fields["loras"] == "mine:1.0"
    # Another tool's tag that Studio cannot read stays in the prompt, as written
    _, fields = parse_infotext("a dog <lora:my lora:0.5>\nSteps: 20, Seed: 1")
    assert fields["prompt"] == "a dog <lora:my lora:0.5>" and "loras" not in fields


def test_presets_keep_loras_at_the_top_level():
    preset = preset_from_request(Txt2ImgRequest(**BASE, loras="mine:0.8, other:0.5"), "With LoRAs")
    assert preset.model_dump()["loras"] == "mine:0.8, other:0.5"
    assert preset.settings()["loras"] == "mine:0.8, other:0.5"


@pytest.mark.parametrize("changes, message", [
    (dict(loras="mine:lots"), r"LoRAs \(loras\) must be 'name:weight, name:weight', got 'mine:lots'"),
    (dict(loras="mine:9"), r"LoRAs \(loras\) .*weight must be a number in \[-4, 4\]"),
    (dict(loras="mine", prompt="a cat <lora:mine:0.5>"),
     r"LoRAs \(loras\) and the prompt's <lora:…> tags both name mine"),
    (dict(prompt="a cat <lora:mine:0.5"), r"Prompt \(prompt\) has a bad <lora:name:weight> tag: unclosed"),
])
def test_bad_lora_lists_name_the_field(lib_manager, changes, message):
    with pytest.raises(ValueError, match=message):
        run(Txt2ImgRequest(**{**BASE, **changes}), lib_manager)
    assert lib_manager.loaded() == []


def test_unknown_and_unfitting_loras_are_refused_before_anything_loads(lib_manager, library, tmp_path):
    with pytest.raises(ValueError, match=r"unknown LoRA 'nope'; expected a registry LoRA for 'tiny' "
                                         r"\[.*'tiny-lora-b'\] or one in the LoRA library \['mine'\]"):
        run(Txt2ImgRequest(**BASE, loras="nope:1"), lib_manager)
    # An SDXL LoRA (cross-attention width 64 in the tiny model) on the SD1.5-like tiny model (width 32)
    with pytest.raises(ValueError, match=r"LoRA 'mine' cannot be used with model 'tiny-sd15': mine.safetensors is a "
                                         r"LoRA for a model whose cross-attention width is 64 .* but sd15 has 32"):
        run(Txt2ImgRequest(**{**BASE, "model": "tiny-sd15"}, loras="mine:1"), lib_manager)
    (library / "pickled.safetensors").write_bytes(b"\x80\x04K\x01.")  # a renamed pickle is never unpickled
    with pytest.raises(ValueError, match="LoRA 'pickled' cannot be used with model 'tiny': .* is a pickle"):
        lib_manager.lease("tiny", loras=[("pickled", 1.0)])
    assert lib_manager.loaded() == []


def test_without_a_library_an_unknown_name_says_so(manager):
    with pytest.raises(ValueError, match=r"unknown LoRA 'mine'.*\(no LoRA library folder is set\)"):
        manager.lease("tiny", loras=[("mine", 1.0)])


def test_the_lease_releases_a_library_lora_and_reloads_a_replaced_file(lib_manager, library, lora_files):
    def render(loras):
        with lib_manager.lease("tiny", loras=loras) as lease:
            import torch

            return lease.pipe(prompt="a boat", num_inference_steps=2, width=64, height=64, guidance_scale=0.0,
                              generator=torch.Generator("cpu").manual_seed(0), output_type="np").images

    base = render([])
    first = render([("mine", 1.0)])
    np.testing.assert_array_equal(render([]), base)  # bit for bit after the release
    shutil.copy(lora_files["b"], library / "mine.safetensors")  # the user replaced it (or retrained it)
    stat = os.stat(library / "mine.safetensors")
    os.utime(library / "mine.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = render([("mine", 1.0)])
    assert not np.array_equal(second, first)
    assert lib_manager.adapters("tiny") == ["library:mine"]
    np.testing.assert_array_equal(render([]), base)


class Leased(Exception):
    pass


def images_for(name: str) -> dict:
    """A task's own inputs: its images, or a panorama's canvas width."""
    photo = Image.new("RGB", (64, 64), (120, 90, 60))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return {"txt2img": {}, "img2img": dict(image=photo), "controlnet": dict(control_image=photo, control_type="canny"),
            "inpaint": dict(image=photo, mask=mask), "outpaint": dict(image=photo),
            "upscale": dict(image=photo, slider=1), "panorama": dict(width=512)}[name]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_leases_the_combined_stack(lib_manager, monkeypatch, name):
    asked = {}

    def lease(model, task="txt2img", **kwargs):
        asked.update(kwargs)
        raise Leased

    monkeypatch.setattr(lib_manager, "lease", lease)
    request_type = TASKS[name].request
    fields = {k: v for k, v in BASE.items() if k in request_type.__dataclass_fields__}
    request = request_type(**{**fields, "prompt": "a cat <lora:mine:0.5>", **images_for(name)},
                           loras="tiny-lora-b:0.25")
    with pytest.raises(Leased):
        TASKS[name].run(request, lib_manager)
    assert asked["loras"] == [("tiny-lora-b", 0.25), ("mine", 0.5)]


# -- the LoRA picker under every tab's LoRAs box ---------------------------------------------------

@pytest.mark.parametrize("typed, expected", [
    ("", "mine:1.0"),
    (None, "mine:1.0"),
    ("other:0.5", "other:0.5, mine:1.0"),
    ("other:0.5 ,  ", "other:0.5, mine:1.0"),  # a trailing comma is not doubled
    ("other:0.5,mine:0.3", "other:0.5,mine:0.3"),  # already there: kept at the user's weight
    ("odd text the user typed", "odd text the user typed, mine:1.0"),  # kept as typed, for validation to judge
])
def test_picking_a_lora_appends_it_once_and_keeps_what_was_typed(typed, expected):
    from studio.ui.lora_picker import add_lora

    assert add_lora(typed, "mine") == expected


def test_the_picker_shows_name_trigger_and_base_model(library, lora_files):
    from studio.loras import LoraLibrary
    from studio.ui.lora_picker import choice_label, library_records, trigger_hint

    [record] = library_records(LoraLibrary(library))
    assert record["name"] == "mine"
    assert choice_label(record) == "mine — no trigger word — unknown base model"  # its file says neither
    trained = dict(name="dog", trigger_word="sks", base_model="tiny")
    assert choice_label(trained) == "dog — sks — tiny"
    assert trigger_hint(trained) == "Add 'sks' to the prompt: dog was trained on that word."
    assert trigger_hint({**trained, "trigger_word": None}) == "dog has no trigger word: it works on any prompt."


def test_every_generation_tab_has_a_picker(registry, tiny_cache, tmp_path):
    from studio.ui import build_app

    demo = build_app(ModelManager(registry, cache_dir=tiny_cache), "tiny", tmp_path / "outputs", tmp_path / "presets",
                     lora_dir=tmp_path / "loras")
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    prefixes = ["" if name == "txt2img" else f"{name}-" for name in TASKS]
    assert len(prefixes) == 7
    assert {f"{prefix}lora-pick" for prefix in prefixes} <= ids and {f"{prefix}lora-hint" for prefix in prefixes} <= ids
