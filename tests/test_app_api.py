"""The running app through its public API (gradio_client), with the tiny model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from test_images import png_header_claiming

ARGS = dict(prompt="a lighthouse", negative_prompt="", width=64, height=64, num_inference_steps=2,
            guidance_scale=5.0, seed=7, batch_size=1, scheduler="Euler")


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def generate(client, **overrides):
    gallery, seed, metadata = client.predict(**{**ARGS, **overrides}, api_name="/txt2img")
    return [Image.open(item["image"]) for item in gallery], seed, metadata


def test_only_the_api_endpoints_are_public(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(endpoints) == ["/apply_preset", "/control_hint", "/controlnet", "/discard_training_run", "/img2img",
                                 "/inpaint", "/loras", "/outpaint", "/panorama", "/preset", "/presets",
                                 "/resume_training", "/stop_training", "/train_lora", "/train_status",
                                 "/training_runs", "/txt2img", "/upscale"]
    names = [p["parameter_name"] for p in endpoints["/txt2img"]["parameters"]]
    assert names[:9] == list(ARGS)


def test_generates_pngs_of_the_requested_size(client, app):
    images, seed, metadata = generate(client, width=96, height=64, batch_size=2)
    assert [im.size for im in images] == [(96, 64), (96, 64)]
    assert seed == 7 and metadata["seeds"] == [7, 8] and metadata["model"] == "tiny"
    assert all(im.format == "PNG" for im in images)
    # What the API returns is the saved PNG, with Studio's settings inside.
    assert json.loads(images[1].text["studio"])["seed"] == 8
    assert "Seed: 8, Size: 96x64" in images[1].text["parameters"]
    saved = list(app[1].rglob("*-8-*.png"))
    assert saved and np.array_equal(np.asarray(Image.open(saved[0])), np.asarray(images[1]))


def test_same_seed_same_image_different_seed_different_image(client):
    a, _, _ = generate(client, seed=11)
    b, _, _ = generate(client, seed=11)
    c, _, _ = generate(client, seed=12)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_random_seed_is_returned(client):
    images, seed, _ = generate(client, seed=-1)
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert json.loads(images[0].text["studio"])["seed"] == seed  # the saved PNG says so too
    again, _, _ = generate(client, seed=seed)  # and that seed remakes the image
    assert np.array_equal(np.asarray(images[0]), np.asarray(again[0]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(width=100), "Width (width) must be a multiple of 8, got 100"),
        (dict(height=4096), "Height (height) must be an integer in [64, 512], got 4096"),
        (dict(num_inference_steps=0), "Steps (num_inference_steps) must be an integer in [1, 150], got 0"),
        (dict(num_inference_steps=500), "Steps (num_inference_steps) must be an integer in [1, 150], got 500"),
        (dict(guidance_scale="abc"), "Guidance scale (guidance_scale) must be a finite number in [0, 30], got 'abc'"),
        (dict(batch_size=9), "Batch size (batch_size) must be an integer in [1, 8], got 9"),
        (dict(scheduler="Heun 9000"), "Sampler (scheduler) must be one of"),
        (dict(model="no-such-model"), "unknown model 'no-such-model'"),
        (dict(seed=2.5), "Seed (seed) must be an integer in [-1, 4294967295], got 2.5"),
        (dict(camera_pitch=80), "Pitch (camera_pitch) must be empty or a finite number in [-60, 60], got 80"),
        (dict(aperture_f_number="wide"), "Aperture (aperture_f_number) must be empty or a finite number in [0.7, 64], got 'wide'"),
        (dict(dof_mode="tilt-shift"), "Depth of field from (dof_mode) must be one of ['lens', 'prompt'], got 'tilt-shift'"),
    ],
)
def test_bad_input_is_a_clear_error_and_saves_nothing(client, app, overrides, message):
    from gradio_client.exceptions import AppError

    before = sorted(app[1].rglob("*.png"))
    with pytest.raises(AppError) as err:
        generate(client, **overrides)
    assert message in str(err.value)
    assert sorted(app[1].rglob("*.png")) == before


CAMERA = ("camera_pitch", "focal_length_mm", "aperture_f_number", "focus_distance_m", "dof_mode", "horizon_strength")


def test_camera_keywords(client, app):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    names = [p["parameter_name"] for p in endpoints["/txt2img"]["parameters"]]
    assert set(CAMERA) <= set(names)
    plain, _, plain_meta = generate(client, width=96, seed=21)
    off, _, _ = generate(client, width=96, seed=21, camera_pitch=None, focal_length_mm=None, aperture_f_number=None,
                         focus_distance_m=None)
    assert np.array_equal(np.asarray(plain[0]), np.asarray(off[0]))  # the defaults are plain text-to-image
    assert "camera" not in plain_meta and "depth_of_field" not in plain_meta

    # An 85 mm lens wide open: on a 96 px image a 24 mm lens would blur less than a pixel.
    gallery, _, meta = client.predict(**{**ARGS, "width": 96, "seed": 21}, camera_pitch=5, focal_length_mm=85,
                                      aperture_f_number=1.4, focus_distance_m=2, api_name="/txt2img")
    # 85 mm across 96 px is 226.7 px of focal length: the horizon at 32 + 226.7·tan(5°).
    assert meta["camera"]["horizon_row"] == pytest.approx(32 + 96 * 85 / 36 * np.tan(np.radians(5)), abs=0.01)
    assert meta["depth_of_field"]["focus_distance_m"] == [2.0] and meta["depth_of_field"]["depth_model"] == "tiny-depth"
    assert [item["caption"] for item in gallery] == ["f/1.4 lens blur", "sharp"]
    blurred, sharp = (Image.open(item["image"]) for item in gallery)
    assert blurred.size == sharp.size == (96, 64) and not np.array_equal(np.asarray(blurred), np.asarray(sharp))
    saved = sorted(p.name for p in app[1].rglob(f"*-{meta['seed']}-*.png"))
    assert any(name.endswith("-sharp.png") for name in saved)
    assert json.loads(blurred.info["studio"])["request"]["aperture_f_number"] == 1.4


def test_presets_are_listed_and_fetched(client):
    listed = client.predict(api_name="/presets")
    names = {p["name"] for p in listed}
    assert {"Photoreal portrait", "Fast draft", "Low VRAM"} <= names and len(names) >= 6
    assert all(p["source"] == "shipped" for p in listed)
    fast = client.predict("Fast draft", api_name="/preset")
    assert fast["model"] == "sdxl-turbo" and fast["txt2img"]["num_inference_steps"] == 1


def test_apply_preset_fills_every_setting(client):
    settings = client.predict("Cinematic landscape", api_name="/apply_preset")
    assert settings["model"] == "sdxl-base" and (settings["width"], settings["height"]) == (1344, 768)
    assert settings["style_prompt"].startswith("cinematic film still of {prompt}")
    assert settings["prompt"] == "" and settings["seed"] == -1
    doc = client.predict("Fast draft", api_name="/preset")
    doc["txt2img"]["prompt"] = "a fox"
    assert client.predict(json.dumps(doc), api_name="/apply_preset")["prompt"] == "a fox"


@pytest.mark.parametrize(
    "preset, message",
    [
        ("No such preset", "unknown preset 'No such preset'"),
        ("../../etc/passwd", "unknown preset '../../etc/passwd'"),
        ('{"schema_version": 1, "name": "x", "model": "tiny", "txt2img": {"width": 64, "height": 64, '
         '"num_inference_steps": "20", "guidance_scale": 1, "scheduler": "Euler"}}', "num_inference_steps: Input should be a valid integer"),
        ('{"schema_version": 7}', "needs schema_version 7"),
        ('{"schema_version": 1, "guidance_scale": NaN}', "NaN and Infinity"),
        ('{"schema_version": 1, "name": "x", "model": "http://evil/x", "txt2img": {}}', "model: String should match pattern"),
    ],
)
def test_bad_presets_through_the_api(client, preset, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(preset, api_name="/apply_preset")
    assert message in str(err.value)
    with pytest.raises(AppError):
        client.predict(preset, api_name="/preset")


# --- defaults, derived from the field declarations ------------------------------------------------

def test_every_parameter_but_the_prompt_has_a_default(client, app):
    from studio.fields import defaults, specs
    from studio.pipelines.txt2img import Txt2ImgRequest

    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/txt2img"]["parameters"]
    assert [p["parameter_name"] for p in params] == list(specs(Txt2ImgRequest))  # the declaration's order
    required = [p["parameter_name"] for p in params if not p["parameter_has_default"]]
    assert required == ["prompt"]
    shown = {p["parameter_name"]: p["parameter_default"] for p in params}
    # The model's own defaults for what a model decides (the tiny model here), the declaration's for the rest.
    assert (shown["width"], shown["num_inference_steps"], shown["scheduler"]) == (64, 2, "Euler")
    assert shown["batch_size"] == defaults(Txt2ImgRequest)["batch_size"] == 1
    assert shown["horizon_strength"] == defaults(Txt2ImgRequest)["horizon_strength"] == 0.6
    gallery, seed, details = client.predict(prompt="a lighthouse", api_name="/txt2img")
    assert Image.open(gallery[0]["image"]).size == (64, 64) and details["steps_done"] == 2


# --- image to image ----------------------------------------------------------------------------

def img2img(client, image_path, **overrides):
    from gradio_client import handle_file

    args = {**dict(prompt="a lighthouse", strength=0.5, num_inference_steps=4, seed=5), **overrides}
    gallery, seed, details = client.predict(image=handle_file(str(image_path)), **args, api_name="/img2img")
    return [Image.open(item["image"]) for item in gallery], seed, details


def test_img2img_keywords_and_result(client, tmp_path):
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/img2img"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert {"image", "prompt", "negative_prompt", "strength", "width", "height", "num_inference_steps",
            "guidance_scale", "seed", "batch_size", "scheduler", "model"} <= set(names)
    assert [p["parameter_name"] for p in params if not p["parameter_has_default"]] == ["image", "prompt"]
    source = tmp_path / "in.png"
    Image.new("RGB", (128, 96), (200, 40, 40)).save(source)
    images, seed, details = img2img(client, source, width=96, height=64, batch_size=2)
    assert [im.size for im in images] == [(96, 64), (96, 64)] and seed == 5
    # diffusers runs the last int(4 · 0.5) = 2 steps of the schedule
    assert (details["task"], details["steps_done"], details["total_steps"]) == ("img2img", 2, 2)
    assert details["input_image"] == {"input_size": [128, 96], "resize_mode": "crop and resize", "steps_run": 2}
    chunk = json.loads(images[1].text["studio"])
    assert chunk["task"] == "img2img" and chunk["seed"] == 6 and chunk["request"]["strength"] == 0.5
    assert "image" not in chunk["request"]  # the input is not a setting
    assert "Denoising strength: 0.5" in images[0].text["parameters"]


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"just some text, not an image", "not an image Studio can read"),
        (b"", "empty"),
        (png_header_claiming(100_000, 100_000), "decompression bomb"),
        (png_header_claiming(9000, 9000), "the image is 9000×9000 = 81 megapixels; Studio accepts at most 67"),
        (truncated_png(), "truncated or damaged"),
    ],
    ids=["text", "empty", "bomb", "too-large", "truncated"],
)
def test_img2img_refuses_files_that_are_not_images(client, app, tmp_path, content, message):
    from gradio_client.exceptions import AppError

    bad = tmp_path / "photo.png"
    bad.write_bytes(content)
    before = sorted(app[1].rglob("*.png"))
    with pytest.raises(AppError) as err:
        img2img(client, bad)
    assert message in str(err.value)
    assert sorted(app[1].rglob("*.png")) == before


def test_img2img_strength_that_leaves_no_step_is_explained(client, tmp_path):
    from gradio_client.exceptions import AppError

    source = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "white").save(source)
    with pytest.raises(AppError, match=r"Denoising strength \(strength\) × Steps must leave at least one step"):
        img2img(client, source, strength=0.1, num_inference_steps=4)


def test_input_errors_are_not_logged_as_tracebacks(client, app):
    from gradio_client.exceptions import AppError

    log = app[1].parent / "app.log"
    before = log.read_text(errors="replace")
    for bad in (dict(width=100), dict(guidance_scale="abc"), dict(model="no-such-model")):
        with pytest.raises(AppError):
            generate(client, **bad)
    added = log.read_text(errors="replace")[len(before):]
    assert "Traceback" not in added and "must be" not in added, added[-2000:]


def test_the_page_is_styled_and_has_its_icon_offline(app):
    import urllib.request

    url = app[0]
    config = json.loads(urllib.request.urlopen(url + "config", timeout=10).read())
    assert ".status-line .status.error" in config["css"]  # assets/studio.css, from this machine
    with urllib.request.urlopen(url + "favicon.ico", timeout=10) as icon:
        assert icon.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(icon.read())).size == (64, 64)  # assets/icon.png
