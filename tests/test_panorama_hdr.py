"""LDR to HDR for panoramas: sRGB curves, inverse tone mapping, bracket merging, files, views."""

from __future__ import annotations

import os

import cv2
import imageio.v3 as iio
import numpy as np
import OpenEXR
import py360convert
import pytest

from studio.panorama import hdr


def sun_scene(height: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An LDR panorama: sky gradient, dark ground (code 20), a clipped sun with a 4 px glow.

    Returns the (H, 2H, 3) uint8 image, the sun's core mask (code 255) and its disk mask."""
    width = 2 * height
    rows, cols = np.mgrid[0:height, 0:width]
    sky = np.stack([120 + 80 * rows / (height / 2), 160 + 60 * rows / (height / 2),
                    np.full(rows.shape, 230.0)], axis=-1)  # bluer overhead, paler at the horizon
    image = np.where((rows < height // 2)[..., None], sky, 20.0)
    distance = np.hypot(rows - 30, cols - 100)
    glow = np.clip((10 - distance) / 4, 0, 1)[..., None]  # 1 inside radius 6, 0 beyond 10
    image = image * (1 - glow) + 255 * glow
    return np.round(image).astype(np.uint8), distance <= 6, distance < 10


# sRGB curves


def test_srgb_curves_hit_the_standard_and_invert_each_other():
    assert hdr.srgb_to_linear(np.float32(0.5)) == pytest.approx(0.21404, abs=1e-5)
    assert hdr.linear_to_srgb(np.float32(0.18)) == pytest.approx(0.46135, abs=1e-5)
    # The linear toe: 0.04045 / 12.92 = 0.0031308, the breakpoint of the inverse.
    assert hdr.srgb_to_linear(np.float32(0.04045)) == pytest.approx(0.0031308, rel=1e-4)
    assert hdr.srgb_to_linear(np.float32(1.0)) == pytest.approx(1.0, abs=1e-6)
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    assert hdr.srgb_to_linear(x).dtype == np.float32
    np.testing.assert_allclose(hdr.linear_to_srgb(hdr.srgb_to_linear(x)), x, atol=2e-6)
    codes = np.arange(256, dtype=np.float32) / 255
    assert np.array_equal(np.round(hdr.linear_to_srgb(hdr.srgb_to_linear(codes)) * 255), np.arange(256))


# Inverse tone mapping


def test_inverse_tone_map_spans_many_stops_and_keeps_diffuse_values():
    ldr, core, _ = sun_scene()
    radiance = hdr.inverse_tone_map(ldr)
    assert radiance.dtype == np.float32 and radiance.shape == ldr.shape
    assert np.isfinite(radiance).all() and radiance.min() >= 0
    assert hdr.luminance_stops(radiance) >= 9  # about 16.5 for this scene
    assert hdr.luminance_stops(hdr.srgb_to_linear(ldr / 255.0)) < 9  # the LDR alone spans ~7

    shown = hdr.expose(radiance, 0)
    diffuse = hdr.luminance(hdr.srgb_to_linear(ldr / 255.0)) < 0.8  # below the knee
    assert np.abs(shown.astype(int) - ldr)[diffuse].max() <= 2
    assert (shown[core] == 255).all()
    assert radiance[30, 100].min() > 2**9  # the sun's centre is expanded by almost max_stops


def test_lower_exposures_show_detail_in_the_sun():
    ldr, core, disk = sun_scene()
    radiance = hdr.inverse_tone_map(ldr)
    means = [hdr.expose(radiance, ev)[disk].mean() for ev in (0, -2, -5, -9)]
    assert (np.diff(means) < 0).all(), means
    dark = hdr.expose(radiance, -9)
    assert (dark[disk] < 255).any()  # the glow resolves into a gradient
    assert (dark[core] == 255).any()  # and the core is still the brightest thing
    assert dark[~disk].max() < 8  # everything else is (nearly) black at -9 EV


def test_isolated_bright_pixels_are_not_expanded():
    ldr = np.full((64, 128, 3), 100, np.uint8)
    ldr[20, 30] = 255  # a lone hot pixel, e.g. JPEG ringing or sensor noise
    ldr[40:56, 80:112] = 255  # a clipped light source
    radiance = hdr.inverse_tone_map(ldr)
    assert radiance[20, 30].max() < 2.0  # under one stop: the blurred map is small there
    assert radiance[48, 96].min() > 2**9


def test_expansion_commutes_with_yaw():
    ldr = np.full((32, 64, 3), 100, np.uint8)
    ldr[10:20, -2:] = 255  # a light cut by the ±180° seam: 2 columns on the right,
    ldr[10:20, :5] = 255  # 5 on the left
    turned = np.roll(ldr, 8, axis=1)  # the same panorama, yawed so the light is whole
    np.testing.assert_allclose(np.roll(hdr.inverse_tone_map(ldr), 8, axis=1),
                               hdr.inverse_tone_map(turned), rtol=1e-4)


def test_inverse_tone_map_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 .* \(4, 4\) uint8"):
        hdr.inverse_tone_map(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="`knee` has to be in"):
        hdr.inverse_tone_map(np.zeros((4, 8, 3), np.uint8), knee=1.0)


# Bracket merging


def test_srgb_response_is_what_opencv_expects():
    response = hdr.srgb_response()
    assert response.shape == (256, 1, 3) and response.dtype == np.float32
    assert 0 < response[0, 0, 0] < response[1, 0, 0]
    assert response[128, 0, 1] == pytest.approx(hdr.srgb_to_linear(np.float32(128 / 255)))
    assert response[255, 0, 2] == pytest.approx(1.0)


def test_merge_recovers_a_known_radiance():
    stops = np.arange(-5, 5.01, 0.25, dtype=np.float32)  # up to 2**5 above white
    colours = np.array([[1, 1, 1], [1, 0.5, 0.25], [0.2, 0.6, 1.0]], np.float32)
    radiance = np.exp2(stops)[None, :, None] * colours[:, None, :]  # (3, 41, 3)
    evs = [0, -3, -6]
    brackets = [hdr.expose(radiance, ev) for ev in evs]
    merged = hdr.merge_brackets(brackets, evs)
    assert merged.dtype == np.float32 and merged.shape == radiance.shape
    # Every value here has a bracket with a code in [20, 250); coloured highlights included.
    np.testing.assert_allclose(merged, radiance, rtol=0.03)


def test_merge_bounds_values_clipped_in_every_bracket():
    radiance = np.full((2, 2, 3), 2.0**9, np.float32)  # brighter than the -6 EV bracket can hold
    merged = hdr.merge_brackets([hdr.expose(radiance, ev) for ev in (0, -3, -6)], [0, -3, -6])
    assert merged.min() >= 2**6


def test_merge_refuses_mismatched_brackets():
    with pytest.raises(ValueError, match="equal length but have 1 and 2"):
        hdr.merge_brackets([np.zeros((2, 2, 3), np.uint8)], [0, -3])
    with pytest.raises(ValueError, match=r"`images\[1\]` has to have the shape"):
        hdr.merge_brackets([np.zeros((2, 2, 3), np.uint8), np.zeros((2, 4, 3), np.uint8)], [0, -3])


# Files


def random_radiance(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp2(rng.uniform(-8, 10, (16, 32, 3))).astype(np.float32)


def test_hdr_file_reads_back(tmp_path):
    radiance = random_radiance()
    path = hdr.write_hdr(radiance, tmp_path / "pano.hdr")
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # (H, W, 3) BGR float32
    assert back.dtype == np.float32 and np.isfinite(back).all()
    # RGBE keeps 8 bits of mantissa for the largest channel: ~1 % there, less precise for the others.
    peak = radiance.max(axis=-1, keepdims=True)
    assert (np.abs(back[..., ::-1] - radiance) <= 0.01 * peak).all()
    assert [p.name for p in tmp_path.iterdir()] == ["pano.hdr"]


def test_exr_file_reads_back(tmp_path):
    radiance = random_radiance(1)
    path = hdr.write_exr(radiance, tmp_path / "pano.exr")
    f = OpenEXR.File(str(path))
    assert f.header()["compression"] == OpenEXR.ZIP_COMPRESSION
    back = f.channels()["RGB"].pixels
    assert back.dtype == np.float16 and back.shape == radiance.shape
    assert np.isfinite(back).all()
    np.testing.assert_allclose(back.astype(np.float32), radiance, rtol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["pano.exr"]


@pytest.mark.parametrize("write", [hdr.write_hdr, hdr.write_exr])
def test_an_error_mid_write_leaves_no_file(tmp_path, monkeypatch, write):
    def fail(src, dst):
        assert os.path.getsize(src) > 0  # the temp was written, then the rename fails
        raise OSError("disk full")

    monkeypatch.setattr(hdr.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write(random_radiance(), tmp_path / "pano.out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("write", [hdr.write_hdr, hdr.write_exr])
def test_bad_radiance_is_refused(tmp_path, write):
    radiance = random_radiance()
    radiance[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="finite but has 1 NaN or Inf"):
        write(radiance, tmp_path / "pano.out")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) float array but is \(16, 32\)"):
        write(radiance[..., 0], tmp_path / "pano.out")
    assert list(tmp_path.iterdir()) == []


def test_exr_refuses_values_beyond_half(tmp_path):
    with pytest.raises(ValueError, match="<= 65504"):
        hdr.write_exr(np.full((2, 4, 3), 1e5, np.float32), tmp_path / "pano.exr")


# Views


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_cubemap_dice_layout(dtype):
    equirect = np.zeros((64, 128, 3), dtype)
    equirect[:, 48:80] = 200  # a band around yaw 0, the front face
    cube = hdr.cubemap(equirect)
    assert cube.shape == (96, 128, 3) and cube.dtype == dtype  # faces of 128 / 4 = 32
    assert (cube[34:62, 34:62] == 200).all()  # F, the centre of the cross (edges are blended)
    assert (cube[32:64, 96:128] == 0).all()  # B faces yaw 180
    assert hdr.cubemap(equirect, face_size=8).shape == (24, 32, 3)


def test_pan_fov_follows_the_pinhole_aspect():
    assert hdr.pan_fov(90.0, (960, 540)) == pytest.approx((90.0, 58.7155), abs=1e-3)


def test_pan_video_is_written_and_starts_at_yaw_zero(tmp_path):
    rng = np.random.default_rng(0)
    equirect = np.repeat(np.repeat(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8), 8, 0), 8, 1)
    path = hdr.pan_video(equirect, tmp_path / "pan.mp4", seconds=0.5, fps=10, size=(64, 32))
    frames = iio.imread(path, plugin="FFMPEG", index=None)  # (N, H, W, 3); every frame
    assert frames.shape == (5, 32, 64, 3)
    front = py360convert.e2p(equirect, hdr.pan_fov(90.0, (64, 32)), 0.0, 0.0, (32, 64))
    back = py360convert.e2p(equirect, hdr.pan_fov(90.0, (64, 32)), 180.0, 0.0, (32, 64))
    error = np.abs(frames[0].astype(int) - front).mean()
    assert error < 20 and error < np.abs(frames[0].astype(int) - back).mean() / 2
    right = py360convert.e2p(equirect, hdr.pan_fov(90.0, (64, 32)), 72.0, 0.0, (32, 64))
    assert np.abs(frames[1].astype(int) - right).mean() < 20  # 5 frames: 72° apart, turning right
    assert [p.name for p in tmp_path.iterdir()] == ["pan.mp4"]


def test_pan_map_samples_where_py360convert_e2p_does():
    """One map shifted per frame replaces e2p per frame: at yaw 0 they must sample the same spots."""
    y, x = np.mgrid[0:128, 0:256].astype(np.float32)
    smooth = np.stack([np.sin(x / 256 * 2 * np.pi) * 100 + 120, y, np.cos(y / 40) * 60 + 100], -1).astype(np.uint8)
    map_x, map_y = hdr.pan_map((128, 256), (96, 64), hdr.pan_fov(90.0, (96, 64)))
    ours = cv2.remap(smooth, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    theirs = py360convert.e2p(smooth, hdr.pan_fov(90.0, (96, 64)), 0.0, 0.0, (64, 96))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


def test_pan_video_error_leaves_no_file(tmp_path, monkeypatch):
    import cv2 as cv

    calls, remap = [], cv.remap

    def fail_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("render failed")
        return remap(*args, **kwargs)

    monkeypatch.setattr(cv, "remap", fail_third)
    with pytest.raises(RuntimeError, match="render failed"):
        hdr.pan_video(np.zeros((8, 16, 3), np.uint8), tmp_path / "pan.mp4", seconds=1, fps=5,
                      size=(64, 32))
    assert list(tmp_path.iterdir()) == []


def test_pan_video_refuses_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match=r"even numbers \(yuv420p\) but is \(63, 32\)"):
        hdr.pan_video(np.zeros((8, 16, 3), np.uint8), tmp_path / "pan.mp4", size=(63, 32))

