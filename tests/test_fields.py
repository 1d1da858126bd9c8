"""Every artefact of a field declaration follows it: change one declaration, and validation, the
preset schema, the widgets, the API's parameters and defaults and the infotext all change with it."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import pytest

from studio import presets as P
from studio.fields import Spec, check_value, defaults, specs
from studio.metadata import infotext, parse_infotext
from studio.pipelines.img2img import Img2ImgRequest
from studio.pipelines.txt2img import Txt2ImgRequest

SMALL = dict(prompt="a fox", model="tiny", width=64, height=64, num_inference_steps=2, scheduler="Euler", seed=3)


@pytest.fixture
def redeclared(monkeypatch):
    """guidance_scale redeclared: range [0, 12], label "CFG", infotext key "Guidance"; batch size
    defaulting to 3. One change each, in the one declaration (the group's field)."""
    fields = Txt2ImgRequest.__dataclass_fields__
    guidance, batch = fields["guidance_scale"], fields["batch_size"]
    spec = dataclasses.replace(guidance.metadata["spec"], hi=12, label="CFG", infotext="Guidance")
    monkeypatch.setattr(guidance, "metadata", MappingProxyType({"spec": spec}))
    monkeypatch.setattr(batch, "default", 3)
    P.preset_model.cache_clear()
    yield
    P.preset_model.cache_clear()


def test_groups_are_shared_not_copied():
    # Both tasks hold the very same declaration of a shared field.
    a = Txt2ImgRequest.__dataclass_fields__["guidance_scale"]
    b = Img2ImgRequest.__dataclass_fields__["guidance_scale"]
    assert a is b


def test_validation_follows(redeclared, registry):
    with pytest.raises(ValueError, match=r"^CFG \(guidance_scale\) must be a finite number in \[0, 12\], got 20$"):
        Txt2ImgRequest(**SMALL, guidance_scale=20).validate(registry)
    with pytest.raises(ValueError, match=r"CFG \(guidance_scale\)"):  # image-to-image shares the group
        Img2ImgRequest(**SMALL, guidance_scale=13).validate(registry, inputs=False)
    Txt2ImgRequest(**SMALL, guidance_scale=12).validate(registry)


def test_preset_schema_follows(redeclared, registry):
    preset = json.loads(P.preset_json(P.preset_from_request(Txt2ImgRequest(**SMALL, guidance_scale=5.0), "Fox")))
    preset["txt2img"]["guidance_scale"] = 20
    with pytest.raises(ValueError, match="txt2img.guidance_scale: Input should be less than or equal to 12"):
        P.parse_preset(json.dumps(preset), registry)
    del preset["txt2img"]["batch_size"]  # absent: the declared default
    preset["txt2img"]["guidance_scale"] = 5
    assert P.parse_preset(json.dumps(preset), registry).txt2img.batch_size == 3


def test_infotext_follows(redeclared):
    request = Txt2ImgRequest(**SMALL, guidance_scale=4.5)
    text = infotext(request, 3)
    assert "Guidance: 4.5" in text and "CFG scale" not in text
    assert parse_infotext(text)[1]["guidance_scale"] == 4.5


def test_widgets_and_api_follow(redeclared, manager, tmp_path):
    from studio.ui import build_app

    demo = build_app(manager, default_model="tiny", outputs_dir=tmp_path / "out", user_presets=tmp_path / "presets")
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    slider = by_id["guidance"]
    assert (slider.label, slider.minimum, slider.maximum) == ("CFG", 0, 12)
    assert by_id["img2img-guidance"].maximum == 12  # every tab with the field
    params = demo.get_api_info()["named_endpoints"]["/txt2img"]["parameters"]
    assert [p["parameter_name"] for p in params] == list(specs(Txt2ImgRequest))
    shown = {p["parameter_name"]: p["parameter_default"] for p in params}
    assert shown["batch_size"] == 3 == defaults(Txt2ImgRequest)["batch_size"]
    assert {p["parameter_name"]: p["label"] for p in params}["guidance_scale"] == "CFG"


@pytest.mark.parametrize("value, message", [
    (None, r"Size \(x\) must be an integer in \[64, 512\], got None"),
    (100, r"Size \(x\) must be a multiple of 8, got 100"),
    (520, r"Size \(x\) must be an integer in \[64, 512\], got 520"),
])
def test_a_sized_field_takes_the_models_range(value, message):
    spec = Spec("Size (px)", "int", lo=8, hi=8192, multiple_of=8, sized=True)
    with pytest.raises(ValueError, match=message):
        check_value("x", spec, value, size_range=(64, 512))
    check_value("x", spec, 512, size_range=(64, 512))


def test_restored_settings_bound_the_size_sliders_by_their_model(manager, tmp_path):
    """A preset or PNG may switch the model: its sizes come with that model's slider range."""
    import gradio as gr

    from studio.styles import load_styles
    from studio.ui.jobs import StopFlags
    from studio.ui.tab import AppContext
    from studio.ui.txt2img import build_tab

    with gr.Blocks():
        ctx = AppContext(manager, "tiny", tmp_path, StopFlags(), gr.State([]), load_styles())
        tab = build_tab(ctx)
    sdxl = Txt2ImgRequest(prompt="x", model="sdxl-base", width=1344, height=768)
    updates = dict(zip(tab.fields, tab.fill(sdxl, manager.registry)))
    assert (updates["width"]["value"], updates["width"]["minimum"], updates["width"]["maximum"]) == (1344, 256, 2048)
    assert (updates["height"]["minimum"], updates["height"]["maximum"]) == (256, 2048)
    assert updates["num_inference_steps"] == 30  # other fields are plain values


def test_every_element_id_on_the_page_is_unique(registry, tiny_cache, tmp_path):
    """Tests, styles and users' scripts find widgets by element id: one id, one widget."""
    from collections import Counter

    from studio.models.manager import ModelManager
    from studio.ui import build_app

    manager = ModelManager(registry, cache_dir=tiny_cache)
    demo = build_app(manager, "tiny", tmp_path / "outputs", tmp_path / "presets")
    ids = Counter(block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None))
    assert [i for i, n in ids.items() if n > 1] == []
    assert {"controlnet-model", "controlnet-net", "inpaint-control-net", "inpaint-editor"} <= set(ids)
