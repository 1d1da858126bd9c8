"""Fast unit tests: request validation, buckets, scheduler mapping, registry parsing, outputs."""

from __future__ import annotations

import json
import math

import pytest

from studio.buckets import bucket_size, buckets
from studio.models.registry import Registry, load_registry
from studio.pipelines.txt2img import Txt2ImgRequest

GOOD = dict(prompt="a cat", width=1024, height=1024, num_inference_steps=30, guidance_scale=6.0,
            seed=-1, batch_size=1, scheduler="Euler", model="sdxl-base")


def test_good_request_passes(registry):
    Txt2ImgRequest(**GOOD).validate(registry)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", 1000 + 4, "Width (width) must be a multiple of 8, got 1004"),
        ("height", 1000 + 4, "Height (height) must be a multiple of 8, got 1004"),
        ("height", 128, "Height (height) must be an integer in [256, 2048], got 128"),
        ("width", 2056, "Width (width) must be an integer in [256, 2048], got 2056"),
        ("width", 512.5, "Width (width) must be an integer in [256, 2048], got 512.5"),
        ("width", True, "Width (width) must be an integer"),
        ("num_inference_steps", 0, "Steps (num_inference_steps) must be an integer in [1, 150], got 0"),
        ("num_inference_steps", 151, "Steps (num_inference_steps) must be an integer in [1, 150], got 151"),
        ("num_inference_steps", "20", "Steps (num_inference_steps) must be an integer in [1, 150], got '20'"),
        ("guidance_scale", math.nan, "Guidance scale (guidance_scale) must be a finite number in [0, 30], got nan"),
        ("guidance_scale", math.inf, "Guidance scale (guidance_scale) must be a finite number in [0, 30], got inf"),
        ("guidance_scale", -1.0, "Guidance scale (guidance_scale) must be a finite number in [0, 30], got -1.0"),
        ("guidance_scale", "7", "Guidance scale (guidance_scale) must be a finite number in [0, 30], got '7'"),
        ("batch_size", 0, "Batch size (batch_size) must be an integer in [1, 8], got 0"),
        ("batch_size", 9, "Batch size (batch_size) must be an integer in [1, 8], got 9"),
        ("seed", -2, "Seed (seed) must be an integer in [-1, 4294967295], got -2"),
        ("seed", 2**32, "Seed (seed) must be an integer in [-1, 4294967295], got 4294967296"),
        ("scheduler", "Heun++", "Sampler (scheduler) must be one of"),
        ("prompt", None, "Prompt (prompt) must be a string, got None"),
    ],
)
def test_bad_request_names_field_range_and_value(registry, field, value, message):
    with pytest.raises(ValueError) as err:
        Txt2ImgRequest(**{**GOOD, field: value}).validate(registry)
    assert message in str(err.value)


def test_size_limits_follow_the_model(registry):
    Txt2ImgRequest(**{**GOOD, "width": 64, "height": 64, "model": "tiny"}).validate(registry)
    with pytest.raises(ValueError, match=r"Width \(width\) must be an integer in \[64, 512\], got 1024"):
        Txt2ImgRequest(**{**GOOD, "model": "tiny"}).validate(registry)


def test_unknown_and_non_base_models_are_rejected(registry):
    with pytest.raises(ValueError, match="unknown model 'nope'; expected one of"):
        registry.get("nope")
    with pytest.raises(ValueError, match=r"Model \(model\) must be a base model that can do txt2img, one of .*; got 'sdxl-vae-fp16-fix' \(role 'vae'"):
        Txt2ImgRequest(**{**GOOD, "model": "sdxl-vae-fp16-fix"}).validate(registry)


@pytest.mark.parametrize(
    "ratio, area, expected",
    [("1:1", 1024**2, (1024, 1024)), ("16:9", 1024**2, (1344, 768)), ("9:16", 1024**2, (768, 1344)),
     ("3:2", 1024**2, (1216, 832)), ("4:3", 1024**2, (1152, 896)), ("1:1", 512**2, (512, 512))],
)
def test_bucket_sizes(ratio, area, expected):
    assert bucket_size(ratio, area) == expected  # SDXL's published training buckets


def test_buckets_stay_near_the_native_area():
    for ratio, (w, h) in buckets(1024**2).items():
        assert w % 64 == 0 and h % 64 == 0
        assert abs(w * h / 1024**2 - 1) < 0.1, ratio
        a, b = map(int, ratio.split(":"))
        assert abs(w / h - a / b) / (a / b) < 0.1, ratio


@pytest.mark.parametrize("ratio", ["16-9", "0:1", "a:b", "1:inf"])
def test_bad_bucket_ratio(ratio):
    with pytest.raises(ValueError, match="ratio must look like '16:9'"):
        bucket_size(ratio, 1024**2)


def test_scheduler_mapping(manager):
    from studio.schedulers import SCHEDULERS, make_scheduler

    base = manager.pipeline("tiny").scheduler.config
    expected = {"Euler": "EulerDiscreteScheduler", "Euler a": "EulerAncestralDiscreteScheduler",
                "DPM++ 2M Karras": "DPMSolverMultistepScheduler", "DDIM": "DDIMScheduler",
                "UniPC": "UniPCMultistepScheduler"}
    for name, cls in expected.items():
        s = make_scheduler(name, base)
        assert type(s).__name__ == cls
        assert s.config.beta_schedule == base.beta_schedule  # model's training schedule kept
    assert make_scheduler("DPM++ 2M Karras", base).config.use_karras_sigmas is True
    assert make_scheduler("DPM++ 2M", base).config.use_karras_sigmas is False
    assert set(expected) <= set(SCHEDULERS)


def test_registry_ships_real_models(registry):
    assert registry.default == "sdxl-base"
    assert registry.get("sdxl-base").repo_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert registry.get("sdxl-base").vae == "sdxl-vae-fp16-fix"
    assert registry.get("sdxl-turbo").defaults.guidance_scale == 0.0
    assert registry.get("tiny").builtin == "tiny-sdxl"


def _registry_dict():
    from studio.models.registry import DEFAULT_REGISTRY

    return json.loads(DEFAULT_REGISTRY.read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["models"][0].update(speed="fast"), "Extra inputs are not permitted"),
        (lambda d: d["models"][0].update(family="flux"), "family"),
        (lambda d: d["models"][0]["defaults"].update(num_inference_steps="20"), "num_inference_steps"),
        (lambda d: d["models"][0]["defaults"].update(scheduler="Bogus"), "scheduler must be one of"),
        (lambda d: d["models"].append(dict(d["models"][0])), "model names must be unique"),
        (lambda d: d.update(default="missing"), "unknown model 'missing'"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d["models"][0].update(vae="sdxl-turbo"), "must name an entry with role 'vae'"),
        (lambda d: d["models"][0].update(lora={"base": "sdxl-vae-fp16-fix"}), "must be a full base model"),
        (lambda d: d["models"][0].update(lora={"base": "sd15"}), "must be a full base model of family 'sdxl'"),
        (lambda d: d["models"][0].update(draft="sdxl-vae-fp16-fix"), "draft 'sdxl-vae-fp16-fix' must name a base model"),
        (lambda d: d["depth_models"][0].update(repo_id=7), "repo_id"),
        (lambda d: d["depth_models"].append(dict(d["depth_models"][0])), "model names must be unique"),
    ],
)
def test_registry_rejects_bad_files(tmp_path, mutate, message):
    data = _registry_dict()
    mutate(data)
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_registry(path)


def test_registry_is_immutable(registry):
    assert isinstance(registry, Registry)
    with pytest.raises(Exception):
        registry.get("tiny").repo_id = "evil/repo"


def test_png_is_written_atomically_with_metadata(tmp_path):
    from PIL import Image, PngImagePlugin

    from studio.outputs import output_name, save_png

    name = output_name(42)
    assert name.endswith(".png") and "-42-" in name
    info = PngImagePlugin.PngInfo()
    info.add_text("studio", json.dumps({"prompt": "../../etc/passwd"}))
    path = save_png(Image.new("RGB", (8, 8), (255, 0, 0)), tmp_path, name, info)
    assert path.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [name]  # no temp left
    with Image.open(path) as img:
        assert img.format == "PNG" and json.loads(img.text["studio"])["prompt"] == "../../etc/passwd"
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a web server serving the outputs, not private


def test_stop_flags_are_per_session():
    from studio.ui.jobs import StopFlags

    flags = StopFlags()
    a, b = flags.start("a"), flags.start("b")
    assert flags.stop("a") and a.is_set() and not b.is_set()
    flags.finish("a", a)
    assert not flags.stop("a")  # no job: nothing to stop
    assert not flags.start("a").is_set()  # a Stop pressed earlier does not stop the next job


def test_every_bucket_of_every_model_is_valid_for_it(registry):
    from studio.ui.tab import bucket_table

    for name in registry.names("base"):
        entry = registry.get(name)
        table = bucket_table(entry)
        assert len(table) == 9, name
        for ratio, (w, h) in table.items():
            request = Txt2ImgRequest(prompt="x", model=name, width=w, height=h, num_inference_steps=4,
                                     scheduler=entry.defaults.scheduler)
            request.validate(registry)  # raises on a size the model cannot take
            a, b = (int(v) for v in ratio.split(":"))
            assert abs(w / h - a / b) / (a / b) < 0.15, (name, ratio, w, h)


def test_a_model_change_bounds_the_size_sliders_by_its_range(registry):
    from studio.ui.tab import on_model_defaults

    aspect, width, height, steps, guidance, scheduler = on_model_defaults(registry, "sdxl-base")
    assert (width["minimum"], width["maximum"], width["value"]) == (256, 2048, 1024)
    assert (height["minimum"], height["maximum"]) == (256, 2048)
    assert (steps, scheduler) == (30, "DPM++ 2M Karras") and aspect["value"] == "1:1"
    _, width, _, _, _, _ = on_model_defaults(registry, "tiny")
    assert (width["minimum"], width["maximum"], width["value"]) == (64, 512, 64)
