"""Presets and PNG metadata: schema, files, links, infotext, and the API endpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from studio import presets as P
from studio.metadata import infotext, parse_infotext, png_info, read_png_settings
from studio.pipelines.txt2img import Txt2ImgRequest

FIXTURES = Path(__file__).parent / "fixtures"
REQUEST = Txt2ImgRequest(prompt="a red fox, in snow: at dawn", negative_prompt="blurry,\nlow quality", width=96,
                         height=64, num_inference_steps=3, guidance_scale=4.5, seed=1234, batch_size=2,
                         scheduler="DPM++ 2M Karras", model="tiny", style_prompt="photo of {prompt}, 35mm",
                         style_negative_prompt="cartoon", original_size=(512, 768), crops_coords_top_left=(16, 0),
                         micro_conditioning_power=1.5, camera_pitch=12.5, focal_length_mm=35.0,
                         aperture_f_number=2.8, focus_distance_m=3.0, dof_mode="prompt", horizon_strength=0.8)


def preset_dict(**overrides):
    d = json.loads(P.preset_json(P.preset_from_request(REQUEST, name="Fox")))
    for path, value in overrides.items():
        target = d
        *parents, key = path.split(".")
        for p in parents:
            target = target[p]
        target[key] = value
    return d


# --- round trips -------------------------------------------------------------------------------

def as_result(request, seed, steps_done=None):
    """A Result as a run of `request` would return it (for the PNG chunks of its first image)."""
    from studio.results import Details, PromptDetails, Result

    prompt, negative = request.styled_prompts()
    done = request.num_inference_steps if steps_done is None else steps_done
    return Result(request=request, images=[], seeds=[seed], prompt=prompt, negative_prompt=negative,
                  steps_done=done, total_steps=request.num_inference_steps,
                  interrupted=done < request.num_inference_steps,
                  details=Details(family="sdxl", repo_id="builtin:tiny-sdxl", prompt_encoding=PromptDetails(1, 0, "single window")))


def save_with_chunks(tmp_path, request, seed, image=None, steps_done=None) -> Path:
    path = tmp_path / "image.png"
    info = png_info(as_result(request, seed, steps_done), 0)
    (image or Image.new("RGB", (request.width, request.height))).save(path, pnginfo=info)
    return path


def test_request_png_request_is_identical(tmp_path):
    task, settings, source = read_png_settings(save_with_chunks(tmp_path, REQUEST, REQUEST.seed))
    assert (task, source) == ("txt2img", "studio") and Txt2ImgRequest(**settings) == REQUEST


def test_a_stopped_image_records_the_steps_it_really_had(tmp_path):
    path = save_with_chunks(tmp_path, REQUEST, REQUEST.seed, steps_done=2)  # stopped at step 2 of 3
    with Image.open(path) as im:
        assert "Steps: 2, " in im.text["parameters"]
        chunk = json.loads(im.text["studio"])
    assert chunk["request"]["num_inference_steps"] == 3  # the request as asked, to run it again
    assert (chunk["steps_done"], chunk["interrupted"]) == (2, True)


def test_preset_round_trips(registry, tmp_path):
    preset = P.preset_from_request(REQUEST, name="Fox", description="d", author="me")
    path = P.save_preset(preset, tmp_path)
    assert path == tmp_path / "Fox.json"
    again = P.load_preset(path, registry)
    assert again == preset and P.preset_request(again, registry) == REQUEST
    assert P.preset_from_token(P.share_token(preset), registry) == preset


def test_camera_section(registry):
    camera = preset_dict()["camera"]
    assert camera == {"camera_pitch": 12.5, "focal_length_mm": 35.0, "aperture_f_number": 2.8, "focus_distance_m": 3.0,
                      "dof_mode": "prompt", "horizon_strength": 0.8, "horizon_control": False,
                      "horizon_control_weight": 0.6}
    no_camera = preset_dict()
    del no_camera["camera"]  # presets written before the camera existed: every control off
    request = P.preset_request(P.parse_preset(json.dumps(no_camera), registry), registry)
    assert (request.camera_pitch, request.focal_length_mm, request.aperture_f_number) == (None, None, None)
    portrait = P.load_preset(P.SHIPPED_DIR / "Photoreal portrait.json", registry)
    assert (portrait.camera.focal_length_mm, portrait.camera.aperture_f_number, portrait.camera.dof_mode) == (85, 1.8, "lens")


def test_every_shipped_preset_is_valid(registry):
    shipped = P.list_presets(P.SHIPPED_DIR)
    assert len(shipped) >= 6 and "models" not in shipped
    models = set()
    for name, path in shipped.items():
        preset = P.load_preset(path, registry)
        assert preset.name == name and preset.description
        request = P.preset_request(preset, registry, "a test prompt")
        request.validate(registry)
        assert "a test prompt" in request.styled_prompts()[0]
        models.add(preset.model)
    assert {"sdxl-base", "sdxl-turbo"} <= models


def test_every_shipped_preset_runs_with_the_tiny_model(registry, manager):
    from studio.pipelines.txt2img import run

    for path in P.list_presets(P.SHIPPED_DIR).values():
        # Same settings on the tiny model (its size limit is 512 px): the preset's own steps,
        # sampler, guidance, style, aspect and batch size must all be accepted and run.
        request = P.preset_request(P.load_preset(path, registry), registry, "a cat")
        scale = max(request.width, request.height) / 256
        small = dataclasses.replace(request, model="tiny", width=int(request.width / scale) // 8 * 8,
                                    height=int(request.height / scale) // 8 * 8,
                                    num_inference_steps=min(request.num_inference_steps, 2))
        result = run(small, manager)
        assert len(result.images) == request.batch_size
        assert result.images[0].size == (small.width, small.height)
        assert result.prompt == request.styled_prompts()[0]


# --- infotext ----------------------------------------------------------------------------------

def test_infotext_quotes_like_a1111():
    text = infotext(REQUEST, 1235)
    lines = text.split("\n")
    # what the model saw, camera words included
    assert lines[0] == ("photo of a red fox, in snow: at dawn, 35mm, wide-angle lens, 35mm, low-angle shot, "
                        "looking up, shallow depth of field, bokeh, f/2.8")
    assert lines[1] == "Negative prompt: cartoon, blurry,"
    assert lines[-1] == ("Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 4.5, Seed: 1235, Size: 96x64, "
                         "Model: tiny, Batch size: 2, Generator: Studio")
    style = dataclasses.replace(REQUEST, model="my,model")
    assert 'Model: "my,model"' in infotext(style, 1)


def test_infotext_round_trip_for_shared_fields():
    task, parsed = parse_infotext(infotext(REQUEST, 1234))
    prompt, negative = REQUEST.styled_prompts()
    assert task == "txt2img" and parsed == dict(prompt=prompt, negative_prompt=negative, num_inference_steps=3, guidance_scale=4.5,
                          seed=1234, width=96, height=64, scheduler="DPM++ 2M Karras", model="tiny", batch_size=2)


def test_sd_parsers_reads_our_parameters(tmp_path):
    from sd_parsers import ParserManager

    request = dataclasses.replace(REQUEST, negative_prompt="blurry", style_negative_prompt="")
    info = ParserManager().parse(str(save_with_chunks(tmp_path, request, 777)))
    assert info is not None
    sampler = info.samplers[0]
    assert sampler.name == "DPM++ 2M Karras"
    assert sampler.prompts[0].value == request.styled_prompts()[0]
    assert sampler.negative_prompts[0].value == "blurry"
    params = sampler.parameters
    assert params["steps"] == "3" and params["cfg_scale"] == "4.5" and params["seed"] == "777"
    assert info.metadata["Size"] == "96x64"


def test_a1111_fixture_is_read(registry):
    task, settings, source = read_png_settings(FIXTURES / "a1111.png")
    assert (task, source) == ("txt2img", "a1111")
    assert settings == dict(
        prompt="masterpiece, a castle on a hill\nsunset", negative_prompt="lowres, fog",
        num_inference_steps=28, guidance_scale=6.5, seed=3735928559, width=832, height=1216,
        scheduler="DPM++ 2M Karras", model="dreamshaper_8",
    )


def test_old_style_a1111_sampler_names():
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    assert parse_infotext(text)[1]["scheduler"] == "Euler a"
    assert "scheduler" not in parse_infotext(text.replace("Euler a", "LMS"))[1]  # unknown: keep ours


def test_a1111_img2img_infotext_restores_image_to_image():
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.45"
    task, settings = parse_infotext(text)
    assert task == "img2img" and settings["strength"] == 0.45 and settings["num_inference_steps"] == 20


@pytest.mark.parametrize(
    "chunks, message",
    [
        ({}, "carries no generation settings"),
        ({"parameters": "just a prompt"}, "no settings line"),
        ({"parameters": "a\nSteps: many, Sampler: Euler"}, "malformed value"),
        ({"studio": "{not json"}, "not valid JSON"),
        ({"studio": json.dumps({"request": {"prompt": "x", "evil": 1}})}, r"unknown txt2img request fields: \['evil'\]"),
        ({"studio": json.dumps({"version": 9, "request": {}})}, "made by a newer Studio"),
        ({"studio": "[1]"}, "has no 'request' object"),
    ],
)
def test_bad_png_metadata(tmp_path, chunks, message):
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(ValueError, match=message):
        read_png_settings(path)


def test_not_a_png(tmp_path):
    (tmp_path / "x.png").write_bytes(b"GIF89a not really")
    with pytest.raises(ValueError, match="not a readable PNG image"):
        read_png_settings(tmp_path / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "y.jpg")
    with pytest.raises(ValueError, match="expected a PNG image, got JPEG"):
        read_png_settings(tmp_path / "y.jpg")


# --- bad presets -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data, message",
    [
        (preset_dict(colour="red"), "colour: Extra inputs are not permitted"),
        (preset_dict(**{"txt2img.num_inference_steps": "20"}), "txt2img.num_inference_steps: Input should be a valid integer"),
        (preset_dict(**{"txt2img.batch_size": True}), "txt2img.batch_size: Input should be a valid integer"),
        (preset_dict(**{"txt2img.num_inference_steps": 500}), "less than or equal to 150"),
        (preset_dict(**{"txt2img.width": 100}), "multiple of 8"),
        (preset_dict(**{"txt2img.scheduler": "Heun"}), "txt2img.scheduler: Input should be 'Euler', 'Euler a'"),
        (preset_dict(**{"style.prompt": "no placeholder"}), "must contain the placeholder {prompt}"),
        (preset_dict(model="https://example.com/model.safetensors"), "model: String should match pattern"),
        (preset_dict(model="sd3"), "unknown model 'sd3'; expected one of"),
        (preset_dict(model="sdxl-vae-fp16-fix"), "Model (model) must be a base model that can do txt2img"),
        (preset_dict(model="sdxl-base"), "Width (width) must be an integer in [256, 2048], got 96"),  # family limits
        (preset_dict(task="video"), "task must be one of ['txt2img', 'img2img', 'controlnet', 'inpaint', 'outpaint', "
                                    "'upscale', 'panorama'], got 'video'"),
        (preset_dict(task="img2img"), "txt2img: Extra inputs are not permitted"),  # its sections must match
        (preset_dict(**{"camera.camera_pitch": 90}), "camera.camera_pitch: Input should be less than or equal to 60"),
        (preset_dict(**{"camera.aperture_f_number": "1.8"}), "camera.aperture_f_number: Input should be a valid number"),
        (preset_dict(**{"camera.dof_mode": "blur"}), "camera.dof_mode: Input should be 'lens' or 'prompt'"),
        (preset_dict(**{"camera.zoom": 2}), "camera.zoom: Extra inputs are not permitted"),
        (preset_dict(**{"camera.focus_distance_m": 0.05}), "focus_distance_m: Input should be greater than or equal to 0.1"),
        (preset_dict(schema_version=3), "needs schema_version 3; this Studio reads up to 2"),
        (preset_dict(schema_version="1"), "schema_version"),
        ([1, 2], "must be a JSON object, got list"),
    ],
)
def test_bad_presets_are_rejected(registry, data, message):
    with pytest.raises(ValueError) as err:
        P.parse_preset(json.dumps(data), registry)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "raw, message",
    [
        (json.dumps(preset_dict()).replace('"guidance_scale": 4.5', '"guidance_scale": NaN').encode(), "NaN and Infinity"),
        (json.dumps(preset_dict()).replace('"guidance_scale": 4.5', '"guidance_scale": Infinity').encode(), "NaN and Infinity"),
        (b"\xff\xfe{}", "must be UTF-8"),
        (b"[" * 600_000 + b"]" * 600_000, "at most 1000000 bytes"),
        (b"[" * 100_000, "nested this deeply"),
        (b"{'single': 'quotes'}", "must be JSON"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested this deeply"),
    ],
)
def test_bad_preset_bytes_are_rejected(raw, message):
    with pytest.raises(ValueError, match=message):
        P.parse_preset(raw)


@pytest.mark.parametrize("name", ["../evil", "a/b", "/etc/passwd", "a\\b", "nul\x00byte", "..", ".hidden", "", "x" * 65])
def test_preset_names_never_leave_the_folder(tmp_path, name):
    with pytest.raises(ValueError, match="preset name must"):
        P.preset_path(tmp_path, name)
    with pytest.raises(ValueError):
        P.preset_from_request(REQUEST, name=name)
    assert list(tmp_path.iterdir()) == []


def test_oversized_preset_file(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (P.MAX_PRESET_BYTES + 1))
    with pytest.raises(ValueError, match="at most 1000000 bytes"):
        P.load_preset(big)


@pytest.mark.parametrize("token", ["!!!", "a" * 20_000, "eJwLSS0u0U3OyS9K1S3ILCpRBAA8pgYL", P.share_token.__name__])
def test_bad_share_tokens(registry, token):
    with pytest.raises(ValueError, match="share link's preset|a preset must|invalid preset"):
        P.preset_from_token(token, registry)


def test_zip_bomb_token_is_refused(registry):
    import base64
    import zlib

    token = base64.urlsafe_b64encode(zlib.compress(b" " * 5_000_000)).decode().rstrip("=")
    assert len(token) < 16_000  # a short link that would inflate to 5 MB
    with pytest.raises(ValueError, match="cannot be decoded: too large"):
        P.preset_from_token(token, registry)


def test_preset_to_widgets_to_preset_is_identical(registry):
    from studio.fields import specs
    from studio.ui.widgets import parse, shown

    preset = P.preset_from_request(REQUEST, name="Fox", description="", author="")
    filled = P.preset_request(preset, registry)  # what the UI fills over the model's defaults
    declared = specs(Txt2ImgRequest)
    on_page = {n: shown(spec, getattr(filled, n)) for n, spec in declared.items()}  # as the widgets show it
    again = Txt2ImgRequest(**{n: parse(declared[n], v) for n, v in on_page.items()})  # as they send it back
    assert P.preset_from_request(again, name="Fox") == preset


def test_a_rejected_preset_changes_nothing(registry):
    from studio.fields import defaults

    current = {**defaults(Txt2ImgRequest), "model": "tiny", "width": 64, "height": 64}
    snapshot = dict(current)
    bad = dict(P.preset_from_request(REQUEST, name="Fox").settings(), model="sdxl-base")  # 96 px < SDXL's 256
    with pytest.raises(ValueError, match=r"Width \(width\) must be an integer in"):
        Txt2ImgRequest(**P.merge_settings(Txt2ImgRequest, current, bad, registry)).validate(registry)
    assert current == snapshot


def test_an_image_to_image_preset_round_trips(registry):
    from studio.pipelines.img2img import Img2ImgRequest

    request = Img2ImgRequest(prompt="a fox", strength=0.4, resize_mode="resize and fill", model="tiny", width=96,
                             height=64, num_inference_steps=5, scheduler="DDIM", seed=3)
    preset = P.parse_preset(P.preset_json(P.preset_from_request(request, name="Repaint")), registry)
    assert preset.task == "img2img" and preset.img2img.strength == 0.4
    assert P.preset_request(preset, registry) == request  # the input image is not a setting: None both


def test_control_units_go_in_their_own_sections_without_their_images(registry):
    from studio.pipelines.controlnet import ControlNetRequest

    request = ControlNetRequest(prompt="a fox", model="tiny", width=64, height=64, control_image=Image.new("RGB", (8, 8)),
                                control_type="canny", controlnet_model="tiny-controlnet-canny",
                                controlnet_conditioning_scale=0.7, control_guidance_end=0.8, canny_low_threshold=50,
                                control_type_2="depth", controlnet_conditioning_scale_2=1.2)
    preset = P.preset_from_request(request, name="Edges")
    doc = json.loads(P.preset_json(preset))
    assert doc["task"] == "controlnet"
    assert doc["control"] == {"type": "canny", "model": "tiny-controlnet-canny", "weight": 0.7, "guidance_start": 0.0,
                              "guidance_end": 0.8, "resize_mode": "crop and resize", "canny_low": 50,
                              "canny_high": 200}
    assert doc["control_2"]["type"] == "depth" and doc["control_2"]["weight"] == 1.2
    assert "image" not in json.dumps(doc["control"]) and "control_image" not in json.dumps(doc)
    again = P.preset_request(P.parse_preset(P.preset_json(preset), registry), registry, "a fox")
    assert again.control_unit() == request.replace(control_image=None).control_unit()
    bad = dict(doc, control=dict(doc["control"], weight=2.5))
    with pytest.raises(ValueError, match=r"control.weight"):
        P.parse_preset(json.dumps(bad), registry)
    mismatched = dict(doc, control=dict(doc["control"], guidance_start=0.9, guidance_end=0.2))
    with pytest.raises(ValueError, match=r"must be below Control end"):
        P.parse_preset(json.dumps(mismatched), registry)
