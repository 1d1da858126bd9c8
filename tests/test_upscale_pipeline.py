"""The upscale task end to end on the tiny model: the cascade, the files it leaves, bad input, Stop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.groups_upscale import stage_factors, stage_sizes, stage_sliders
from studio.pipelines.upscale import UpscaleRequest, run
from studio.results import Stopped


def picture(width: int = 64, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture
def upscaler(manager, tmp_path):
    manager.scratch_dir = tmp_path / "scratch"
    return manager


def request(**changes) -> UpscaleRequest:
    settings = dict(image=picture(), model="tiny", num_inference_steps=3, slider=2, seed=5, scale=2.0)
    return UpscaleRequest(**{**settings, **changes})


def test_the_cascade_doubles_until_the_rest_is_at_most_two():
    assert stage_factors(4) == [2, 2] and stage_factors(3) == [2, 1.5] and stage_factors(1) == [1]
    assert stage_factors(8) == [2, 2, 2] and stage_factors(2) == [2]
    assert stage_sizes(1024, 1024, 4) == [(2048, 2048), (4096, 4096)]
    assert stage_sizes(1000, 600, 3) == [(2000, 1200), (3000, 1800)]
    assert stage_sliders(12, 2, 30) == [12, 18]  # ~40 % then 60 % of 30 steps
    assert stage_sliders(25, 3, 30) == [25, 30, 30]  # never more than the steps


def test_upscale_two_stages_on_the_tiny_model(upscaler):
    events = []
    result = run(request(scale=4.0), upscaler, lambda e: events.append(e) and False)
    canvas = result.canvas
    assert canvas.shape == (192, 256, 3) and canvas.dtype == np.uint8
    assert result.images[0].size == (256, 192)  # the preview: small enough to be the image itself
    up = result.details.upscale
    assert up.stages == [[128, 96], [256, 192]] and up.sliders == [2, 3] and up.output_size == [256, 192]
    assert up.patch_size == 8 and up.patch_overlap == 2
    calls = [e for e in events if e.detail and "patch" in e.detail]
    assert len(calls) == up.unet_calls  # one event per UNet call, each counted
    assert calls[-1].step == calls[-1].total == up.unet_calls
    assert "Stage 2 of 2 (256×192) · step 3 of 3" in calls[-1].detail
    assert any("decoding tile" in (e.detail or "") for e in events)
    assert float(np.asarray(canvas).std()) > 1  # an image, not a constant
    summary = result.summary()
    assert summary["task"] == "upscale" and summary["upscale"]["unet_calls"] == up.unet_calls


def test_the_same_seed_makes_the_same_image(upscaler):
    first, second = run(request(), upscaler), run(request(), upscaler)
    assert np.array_equal(np.asarray(first.canvas), np.asarray(second.canvas))
    other = run(request(seed=6), upscaler)
    assert not np.array_equal(np.asarray(first.canvas), np.asarray(other.canvas))


def test_the_tile_controlnet_steers_the_patches(upscaler):
    plain = run(request(), upscaler)
    tiled = run(request(tile_controlnet="tiny-controlnet-union", tile_weight=1.0), upscaler)
    assert tiled.details.upscale.tile_controlnet == "tiny-controlnet-union"
    assert not np.array_equal(np.asarray(plain.canvas), np.asarray(tiled.canvas))


@pytest.mark.parametrize("changes, message", [
    (dict(scale=0.5), r"Scale \(scale\) must be a finite number in \[1, 64\], got 0.5"),
    (dict(slider=4), r"Slider \(slider\) must be in \[0, 3\] \(the steps run\), got 4"),
    (dict(slider=-1), r"Slider \(slider\) must be an integer in \[0, 150\], got -1"),
    (dict(tile_controlnet="tiny-controlnet-depth"), r"takes \['depth'\] hints, not 'tile'"),
    (dict(image="not an image"), r"Image \(image\) must be an image"),
])
def test_bad_input_is_refused_before_anything_runs(upscaler, changes, message):
    with pytest.raises(ValueError, match=message):
        run(request(**changes), upscaler)
    assert list(upscaler.scratch_dir.glob("*")) == []  # (a folder not made yet globs empty too)


def test_a_target_beyond_the_pixel_limit_is_refused(upscaler):
    upscaler.upscale_max_pixels = 100 * 100
    with pytest.raises(ValueError, match=r"makes 64×48 into 128×96 .* at most 0 megapixels"):
        run(request(), upscaler)


def test_a_target_beyond_the_free_disk_says_how_much_it_needs(upscaler, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(ValueError, match=r"needs about .* free"):
        run(request(), upscaler)


def test_stop_between_patches_leaves_no_file(upscaler):
    seen = []

    def on_step(event):
        seen.append(event)
        return len(seen) > 12

    with pytest.raises(Stopped, match=r"Stopped: Stage 1 of 1 \(128×96\) · step \d of 3 · patch \d+ of \d+; nothing"):
        run(request(), upscaler, on_step)
    assert list(upscaler.scratch_dir.glob("*")) == []


def test_stop_while_encoding_leaves_no_file(upscaler):
    seen = []

    def on_step(event):
        seen.append(event.detail)
        return "encoding tile 2" in (event.detail or "")

    with pytest.raises(Stopped, match=r"Stopped: Stage 1 of 1 \(128×96\) · encoding tile 2 of \d+; nothing"):
        run(request(), upscaler, on_step)
    assert not any("patch" in (d or "") for d in seen)  # no UNet call after the Stop
    assert list(upscaler.scratch_dir.glob("*")) == []


def test_an_error_in_a_later_stage_leaves_no_file(upscaler, monkeypatch):
    from studio.upscale import sampler

    real, calls = sampler.sample, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # stage 2: stage 1's array is already on disk
            raise RuntimeError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler, "sample", failing)
    with pytest.raises(RuntimeError, match="injected"):
        run(request(scale=4.0), upscaler)
    assert len(calls) == 2 and list(upscaler.scratch_dir.glob("*")) == []


def test_stop_while_decoding_leaves_no_file(upscaler):
    def on_step(event):
        return "decoding" in (event.detail or "")

    with pytest.raises(Stopped, match="decoding tile"):
        run(request(scale=4.0), upscaler, on_step)
    assert list(upscaler.scratch_dir.glob("*")) == []


def test_saving_writes_the_image_its_preview_and_the_deep_zoom_tiles(upscaler, tmp_path, monkeypatch):
    from studio import outputs
    from studio.metadata import read_png_settings
    from studio.upscale import files

    result = run(request(), upscaler)
    shown, full, dzi = outputs.save_canvas(result, tmp_path / "out")
    assert shown == full and full.suffix == ".png"
    with Image.open(full) as image:
        assert image.size == (128, 96)
    task, fields, source = read_png_settings(str(full))
    assert (task, source, fields["scale"], fields["slider"]) == ("upscale", "studio", 2.0, 2)
    assert dzi.suffix == ".dzi" and (dzi.parent / f"{dzi.stem}_files").is_dir()
    assert list(upscaler.scratch_dir.glob("*")) == []  # the scratch array is gone

    monkeypatch.setattr(files, "PNG_LIMIT", 64 * 64)  # past PNG's size: a tiled BigTIFF and a preview PNG
    result = run(request(), upscaler)
    shown, full, dzi = outputs.save_canvas(result, tmp_path / "out", preview_side=64)
    assert full.suffix == ".tif" and shown.name.endswith("-preview.png")
    import tifffile

    assert tifffile.imread(full).shape == (96, 128, 3)
    with Image.open(shown) as image:
        assert max(image.size) <= 2048
        assert "studio" in image.info


def test_a_preset_keeps_the_upscale_section_and_restores_it(registry):
    import json

    from studio import presets as P

    chosen = UpscaleRequest(image=None, model="tiny", scale=8.0, slider=9, phase_weight=0.3, laplacian_fusion=True,
                            tile_controlnet="tiny-controlnet-union", tile_weight=0.8, patch_batch=4, seed=11)
    text = P.preset_json(P.preset_from_request(chosen, "Big print"))
    doc = json.loads(text)
    assert doc["task"] == "upscale" and doc["model"] == "tiny"
    assert doc["upscale"]["scale"] == 8.0 and doc["upscale"]["slider"] == 9
    assert doc["upscale"]["tile_controlnet"] == "tiny-controlnet-union" and "image" not in doc["upscale"]
    restored = P.preset_request(P.parse_preset(text, registry), registry)
    assert restored.record() == chosen.record()


def test_the_png_of_an_upscale_restores_its_settings(upscaler, tmp_path):
    from studio import outputs
    from studio.metadata import read_png_settings

    result = run(request(phase_fusion=False, chess_mask=False, laplacian_fusion=True), upscaler)
    _, full, _ = outputs.save_canvas(result, tmp_path)
    task, fields, _ = read_png_settings(str(full))
    assert task == "upscale"
    assert {k: fields[k] for k in ("phase_fusion", "chess_mask", "laplacian_fusion", "seed")} == {
        "phase_fusion": False, "chess_mask": False, "laplacian_fusion": True, "seed": 5}
