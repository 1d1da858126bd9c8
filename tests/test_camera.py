"""Camera maths oracles: field of view, horizon row, circle of confusion, thin-lens blur."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studio.camera import (circle_of_confusion_mm, disk_kernel, focal_length_px, fov_degrees, horizon_row,
                           thin_lens_blur)


@pytest.mark.parametrize("f, expected", [(18, 90.0), (50, 39.5978), (24, 73.7398), (200, 10.2855)])
def test_fov_at_known_focal_lengths(f, expected):
    assert fov_degrees(f) == pytest.approx(expected, abs=1e-3)  # 36 mm wide full frame


def test_fov_across_the_short_side():
    assert fov_degrees(12, sensor_mm=24) == pytest.approx(90.0)


def test_horizon_row():
    f_px = focal_length_px(24, 1344, 768)  # 24 mm across 1344 px: 896 px
    assert f_px == pytest.approx(896)
    assert horizon_row(768, f_px, 0) == 384  # level camera: horizon through the centre
    assert horizon_row(768, f_px, 30) == pytest.approx(384 + 896 * math.tan(math.radians(30)))  # looking up: lower
    assert horizon_row(768, f_px, -10) < 384  # looking down: higher
    # At pitch = half the vertical field of view the horizon sits on the frame's edge.
    half_vfov = math.degrees(math.atan(384 / f_px))
    assert horizon_row(768, f_px, -half_vfov) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="pitch must be in"):
        horizon_row(768, f_px, 90)


def test_circle_of_confusion():
    depths = np.array([0.5, 1, 1.5, 2, 3, 5, 20, 1000])
    c = circle_of_confusion_mm(depths, 2.0, 50, 2.0)
    assert c[3] == 0  # the focus plane is sharp
    assert np.all(np.diff(c[:4]) < 0) and np.all(np.diff(c[3:]) > 0)  # grows away from it
    # Worked value: f=50, N=2 (A=25 mm), S1=2000, S2=4000: 25·2000/4000·50/1950 = 0.32051 mm
    assert circle_of_confusion_mm(4.0, 2.0, 50, 2.0) == pytest.approx(25 * 0.5 * 50 / 1950)
    # Proportional to 1/N, and tends to A·f/(S1−f) far away.
    assert np.allclose(circle_of_confusion_mm(depths, 2.0, 50, 4.0), c / 2)
    assert circle_of_confusion_mm(1e9, 2.0, 50, 2.0) == pytest.approx(25 * 50 / 1950, rel=1e-6)
    with pytest.raises(ValueError, match="focus beyond the focal length"):
        circle_of_confusion_mm(1.0, 0.01, 50, 2.0)


def test_disk_kernel():
    assert disk_kernel(0.2).shape == (1, 1)
    k = disk_kernel(4.0)
    assert k.shape == (9, 9) and k.sum() == pytest.approx(1) and k[4, 4] > 0 and k[0, 0] == 0


def two_planes(size=360, near=1.5, far=10.0):
    """Left half a near plane, right half a far plane, dark, with one bright dot on each."""
    image = np.zeros((size, size, 3), np.float32)
    depth = np.full((size, size), far)
    depth[:, : size // 2] = near
    image[size // 2, size // 4] = image[size // 2, 3 * size // 4] = 1.0
    return image, depth


def spot_radius(image: np.ndarray, y: int, x: int) -> float:
    """Radius of the blurred dot at (y, x), from the area it lights up."""
    patch = image[y - 40 : y + 41, x - 40 : x + 41, 0]
    return math.sqrt((patch > 1e-7).sum() / math.pi)


@pytest.mark.parametrize("f_number", [1.4, 2.8])
def test_thin_lens_blur_follows_the_formula(f_number):
    image, depth = two_planes()
    out = thin_lens_blur(image, depth, focus_m=1.5, focal_length_mm=85, f_number=f_number)
    # The in-focus plane, and its dot, are unchanged.
    assert np.array_equal(out[:, :180], image[:, :180])
    # The far plane's dot spreads into the thin-lens blur circle (360 px span 36 mm: 10 px/mm).
    expected = float(circle_of_confusion_mm(10.0, 1.5, 85, f_number)) * 10 / 2
    assert expected > 7
    assert spot_radius(out, 180, 270) == pytest.approx(expected + 0.5, abs=1.0)  # +0.5: anti-aliased rim
    assert out[..., 0].sum() == pytest.approx(2.0, rel=1e-4)  # blur moves light, never adds any


def test_thin_lens_blur_smooths_texture_off_focus_only():
    rng = np.random.default_rng(0)
    image = rng.random((128, 128, 3)).astype(np.float32)
    depth = np.where(np.arange(128)[None, :] < 64, 2.0, 8.0) * np.ones((128, 1))
    out = thin_lens_blur(image, depth, focus_m=2.0, focal_length_mm=50, f_number=1.4)
    assert np.array_equal(out[:, :64], image[:, :64])
    assert out[:, 72:].std() < image[:, 72:].std() * 0.7


def test_sharp_foreground_edges_do_not_bleed():
    size = 128
    image = np.zeros((size, size, 3), np.float32)
    image[:, :64] = [1, 0, 0]  # red subject in focus at 2 m
    image[:, 64:] = [0, 0, 1]  # blue wall at 10 m, heavily blurred
    depth = np.where(np.arange(size)[None, :] < 64, 2.0, 10.0) * np.ones((size, 1))
    out = thin_lens_blur(image, depth, focus_m=2.0, focal_length_mm=85, f_number=1.4)
    assert np.array_equal(out[:, :64], image[:, :64])  # subject untouched
    assert out[:, 64:, 0].max() < 1e-6  # no red halo on the wall next to it
    assert np.allclose(out[:, 64:, 2], 1, atol=1e-5)


def test_defocused_foreground_spills_over_the_background():
    size = 128
    image = np.zeros((size, size, 3), np.float32)
    image[:, :64] = [1, 0, 0]  # red object near the camera, out of focus
    image[:, 64:] = [0, 0, 1]  # blue wall in focus
    depth = np.where(np.arange(size)[None, :] < 64, 0.6, 5.0) * np.ones((size, 1))
    out = thin_lens_blur(image, depth, focus_m=5.0, focal_length_mm=85, f_number=1.4)
    assert out[:, 66, 0].min() > 0.05  # its blur reaches over the wall's edge, as in a real lens
    assert np.allclose(out[:, 110:], image[:, 110:])  # the wall away from it stays sharp


def test_depth_of_field_limits():
    from studio.camera import depth_of_field_limits_m

    # 50 mm f/1.8 focused at 2 m (c = 0.03 mm): the usual tables give 1.92 m to 2.09 m.
    assert depth_of_field_limits_m(2, 50, 1.8) == pytest.approx((1.919, 2.088), abs=1e-3)
    # Focused at or past the hyperfocal distance (24 mm f/8: H = 24²/(8·0.03) + 24 mm = 2.424 m)
    # everything to infinity is sharp, from about H/2.
    near, far = depth_of_field_limits_m(2.424, 24, 8)
    assert far == math.inf and near == pytest.approx(2.424 / 2, abs=0.01)
    narrow, wide = (np.subtract(*reversed(depth_of_field_limits_m(3, 85, n))) for n in (1.4, 4))
    assert narrow < wide  # stopping down deepens the sharp zone


def test_camera_summary_line():
    from studio.ui.camera import camera_summary

    assert camera_summary(None, "", None, None, 1024, 1024) == "Camera off: plain text-to-image."
    line = camera_summary(24, 10, 1.8, 2, 1344, 768)
    assert line.startswith("24 mm: field of view 73.7° × 46.4°")  # 36 mm and 36·768/1344 mm across
    assert f"horizon at row {384 + 896 * math.tan(math.radians(10)):.0f} of 768" in line
    assert "f/1.8 at 2 m is sharp from 1.69 m to 2.45 m" in line
    assert "below the frame" in camera_summary(24, 30, None, None, 1344, 768)  # past half the 46.4° view
    assert camera_summary(50, "up", None, None, 64, 64).startswith("Camera settings not valid yet")
