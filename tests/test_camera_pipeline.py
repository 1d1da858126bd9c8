"""Camera controls through text-to-image with the tiny models: horizon layout, lens blur, words."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studio.camera import camera_terms, focal_length_px
from studio.pipelines.txt2img import Txt2ImgRequest, run

# 256 px so the horizon has room to move; a batch of 4 seeds averages out the tiny model's noise.
LAYOUT = dict(prompt="a lake under the sky", model="tiny", width=256, height=256, num_inference_steps=8,
              guidance_scale=5.0, scheduler="Euler", seed=7, batch_size=4)
SMALL = dict(prompt="a red lighthouse", model="tiny", width=96, height=64, num_inference_steps=2,
             guidance_scale=5.0, scheduler="Euler", seed=3)


def row_profile(images) -> np.ndarray:
    """(H, 3) mean colour of each row, averaged over the batch."""
    return np.stack([np.asarray(im, dtype=np.float64).mean(axis=1) for im in images]).mean(axis=0)


def split_row(profile: np.ndarray, margin: int = 8) -> int:
    """The row that best cuts the profile into two flat parts (least squares, two segments)."""
    h = len(profile)
    costs = [profile[:k].var(axis=0).sum() * k + profile[k:].var(axis=0).sum() * (h - k) for k in range(margin, h - margin)]
    return margin + int(np.argmin(costs))


def pitch_for_row(row: float, focal_mm: float = 50.0, size: int = 256) -> float:
    """The pitch that puts the horizon on `row`: y_h = H/2 + f_px·tan(pitch), inverted."""
    return math.degrees(math.atan((row - size / 2) / focal_length_px(focal_mm, size, size)))


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_horizon_split_follows_pitch(manager):
    found = {}
    for row in (64, 128, 192):
        result = run(Txt2ImgRequest(**LAYOUT, camera_pitch=pitch_for_row(row)), manager)
        assert result.details.camera.horizon_row == pytest.approx(row, abs=0.01)
        found[row] = split_row(row_profile(result.images))
    for row, split in found.items():
        assert abs(split - row) <= 10, found  # where the formula puts it
    assert found[64] < found[128] < found[192]  # looking up moves the horizon down
    assert found[192] - found[64] == pytest.approx(128, abs=12)  # ...by the predicted amount


def test_horizon_separates_the_halves_only_with_a_pitch(manager):
    plain = row_profile(run(Txt2ImgRequest(**LAYOUT), manager).images)
    pitched = row_profile(run(Txt2ImgRequest(**LAYOUT, camera_pitch=0.0), manager).images)

    def contrast(p):  # colour distance between the halves above and below row 128
        return float(np.linalg.norm(p[:128].mean(axis=0) - p[128:].mean(axis=0)))

    assert contrast(pitched) > 10 and contrast(pitched) > 5 * contrast(plain)


def test_a_focal_length_moves_the_horizon_further(manager):
    # The same +8° tilt puts the horizon lower through a long lens (f_px·tan(pitch) grows with f).
    wide = run(Txt2ImgRequest(**LAYOUT, camera_pitch=8.0, focal_length_mm=24), manager)
    long = run(Txt2ImgRequest(**LAYOUT, camera_pitch=8.0, focal_length_mm=85), manager)
    rows = [r.details.camera.horizon_row for r in (wide, long)]
    assert rows == pytest.approx([128 + 256 * 24 / 36 * math.tan(math.radians(8)),
                                  128 + 256 * 85 / 36 * math.tan(math.radians(8))], abs=0.01)
    assert split_row(row_profile(wide.images)) < split_row(row_profile(long.images))


def test_no_camera_and_zero_strength_are_plain_text_to_image(manager):
    plain = run(Txt2ImgRequest(**SMALL), manager)
    explicit = run(Txt2ImgRequest(**SMALL, camera_pitch=None, focal_length_mm=None, aperture_f_number=None,
                                  focus_distance_m=None), manager)
    # A pitch with strength 0 draws exactly diffusers' own initial noise.
    zero = run(Txt2ImgRequest(**SMALL, camera_pitch=20.0, horizon_strength=0.0), manager)
    assert np.array_equal(pixels(plain.images), pixels(explicit.images))
    assert plain.prompt == "a red lighthouse" and plain.originals == []
    # Its prompt gains the camera's words, so compare the noise path with the same words.
    words = run(Txt2ImgRequest(**{**SMALL, "prompt": "a red lighthouse, low-angle shot, looking up"}), manager)
    assert zero.prompt == words.prompt
    assert np.array_equal(pixels(zero.images), pixels(words.images))


def test_camera_words():
    assert camera_terms(24, 30, 1.8, dof_from_prompt=True) == (
        ["wide-angle lens, 24mm", "low-angle shot, looking up", "shallow depth of field, bokeh, f/1.8"], [])
    assert camera_terms(200, -50, 16, dof_from_prompt=True)[0] == [
        "super telephoto lens, 200mm, strongly compressed perspective", "bird's-eye view, looking steeply down",
        "deep depth of field, everything in focus, f/16"]
    # With the lens blur the model is asked for a sharp picture: the blur is ours alone.
    assert camera_terms(None, None, 1.8, dof_from_prompt=False) == (
        ["sharp focus throughout"], ["bokeh, depth of field, blurry background"])
    assert camera_terms(None, None, None, dof_from_prompt=True) == ([], [])
    request = Txt2ImgRequest(prompt="a cat", negative_prompt="ugly", focal_length_mm=85, aperture_f_number=2.0)
    assert request.styled_prompts() == ("a cat, telephoto lens, 85mm, compressed perspective, sharp focus throughout",
                                        "ugly, bokeh, depth of field, blurry background")


@pytest.fixture
def depth_manager(manager):
    manager.depth_model = "tiny-depth"
    return manager


def test_lens_blur_keeps_the_sharp_image(depth_manager):
    plain = run(Txt2ImgRequest(**{**SMALL, "prompt": "a red lighthouse, sharp focus throughout"},
                               negative_prompt="bokeh, depth of field, blurry background"), depth_manager)
    wide_open = run(Txt2ImgRequest(**SMALL, aperture_f_number=1.4, focus_distance_m=0.5), depth_manager)
    stopped_down = run(Txt2ImgRequest(**SMALL, aperture_f_number=16, focus_distance_m=0.5), depth_manager)
    # The sharp originals are exactly what the generator made.
    assert np.array_equal(pixels(wide_open.originals), pixels(plain.images))
    assert np.array_equal(pixels(stopped_down.originals), pixels(plain.images))
    change = [np.abs(pixels(r.images) - pixels(plain.images)).mean() for r in (wide_open, stopped_down)]
    assert change[0] > 1.0 and change[1] < change[0] / 2  # blur ∝ 1/N
    dof = wide_open.details.depth_of_field
    assert dof.depth_model == "tiny-depth" and dof.focus_distance_m == [0.5]
    low, high = dof.depth_range_m[0]
    assert 0.05 <= low < high <= 20.0


def test_lens_blur_follows_a_known_depth(depth_manager, monkeypatch):
    """A scene whose top half is at the focus distance stays sharp there and blurs below."""
    import studio.models.depth as depth

    def two_planes(estimator, image):
        w, h = image.size
        d = np.full((h, w), 2.0, np.float32)
        d[h // 2:] = 20.0
        return d

    monkeypatch.setattr(depth, "estimate_depth_m", two_planes)
    request = Txt2ImgRequest(**SMALL, focal_length_mm=50, aperture_f_number=1.8, focus_distance_m=2.0)
    result = run(request, depth_manager)
    sharp, blurred = pixels(result.originals)[0], pixels(result.images)[0]
    # Blur radius on the far plane: c = (50/1.8)·18000/20000·50/1950 mm, at 96/36 px per mm, halved.
    radius = 50 / 1.8 * (18000 / 20000) * 50 / 1950 * 96 / 36 / 2
    assert radius > 0.5
    assert np.array_equal(blurred[:32], sharp[:32])  # the focus plane is untouched
    assert np.abs(blurred[32 + math.ceil(radius):] - sharp[32 + math.ceil(radius):]).mean() > 1.0
    assert result.details.depth_of_field.focus_distance_m == [2.0]


def test_autofocus_on_the_centre(depth_manager):
    result = run(Txt2ImgRequest(**SMALL, aperture_f_number=2.8), depth_manager)
    (focus,) = result.details.depth_of_field.focus_distance_m
    low, high = result.details.depth_of_field.depth_range_m[0]
    assert low <= focus <= high


def test_prompt_only_depth_of_field_needs_no_depth_model(manager):
    manager.depth_model = "depth-anything-v2-metric-outdoor-small"  # not downloadable here
    result = run(Txt2ImgRequest(**SMALL, aperture_f_number=1.8, dof_mode="prompt"), manager)
    assert "shallow depth of field, bokeh, f/1.8" in result.prompt
    assert result.originals == [] and result.details.depth_of_field is None


def test_missing_depth_model_is_a_clear_error(manager, monkeypatch):
    from studio.models.manager import ModelUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manager.depth_model = "depth-anything-v2-metric-outdoor-small"
    with pytest.raises(ModelUnavailable, match="Depth-Anything-V2-Metric-Outdoor-Small-hf"):
        run(Txt2ImgRequest(**SMALL, aperture_f_number=1.8), manager)


@pytest.mark.parametrize("field, value, message", [
    ("camera_pitch", 75.0, r"Pitch \(camera_pitch\) must be empty or a finite number in \[-60, 60\], got 75.0"),
    ("camera_pitch", "up", r"Pitch \(camera_pitch\) must be empty or a finite number"),
    ("focal_length_mm", 0, r"Focal length \(focal_length_mm\) must be empty or a finite number in \[8, 800\], got 0"),
    ("aperture_f_number", float("nan"), r"Aperture \(aperture_f_number\) must be empty or a finite number"),
    ("focus_distance_m", 0.01, r"Focus distance \(focus_distance_m\) must be empty or a finite number in \[0.1, 10000\]"),
    ("focus_distance_m", 0.15, r"Focus distance \(focus_distance_m\) must be beyond twice the focal length \(100 mm\)"),
    ("dof_mode", "blur", r"Depth of field from \(dof_mode\) must be one of \['lens', 'prompt'\], got 'blur'"),
    ("horizon_strength", -1, r"Horizon layout strength \(horizon_strength\) must be a finite number in \[0, 2\], got -1"),
])
def test_camera_validation(registry, field, value, message):
    request = Txt2ImgRequest(**SMALL, focal_length_mm=100).replace(**{field: value})
    with pytest.raises(ValueError, match=message):
        request.validate(registry)
