"""studio/panorama/blend.py: Reinhard colour transfer between views; the seam and pole measures."""

import cv2
import numpy as np
import pytest

from studio.panorama.blend import match_colour, pole_spread, wrap_ratio
from studio.panorama.projection import directions, lat_of, lon_of


def scene(size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8: smooth, colourful, every channel away from 0 and 255."""
    u = np.linspace(0, 1, size)
    xx, yy = np.meshgrid(u, u)
    rgb = [0.5 + 0.3 * np.sin(6 * xx + yy), 0.45 + 0.25 * np.cos(4 * yy - 2 * xx), 0.4 + 0.2 * np.sin(5 * xx * yy)]
    return (np.stack(rgb, axis=-1) * 255).round().astype(np.uint8)


def lab_shift(image: np.ndarray, gain: float, shift: tuple[float, float, float]) -> np.ndarray:
    """The kind of drift a new diffusion run has: lightness contrast and white balance off, in Lab."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab[..., 0] = (lab[..., 0] - 50) * gain + 50
    lab += np.float32(shift)
    return (cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255).round().clip(0, 255).astype(np.uint8)


def test_match_colour_takes_a_drifted_view_back_to_the_reference():
    reference = scene()
    generated = lab_shift(reference, 0.8, (6.0, 5.0, -7.0))
    known = np.zeros(reference.shape[:2], bool)
    known[:, :40] = True  # the overlap: statistics from here, applied everywhere
    out = match_colour(generated, reference, known)
    before = np.abs(generated.mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max()
    after = np.abs(out.mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max()
    assert before > 10 and after < 1.5
    # also where nothing was known: the transfer is of the whole view
    assert np.abs(out[:, 40:].astype(float) - reference[:, 40:]).mean() < 1.5


def test_match_colour_undoes_an_rgb_tint_about_as_well_as_an_affine_in_lab_can():
    """A per-channel RGB tint is not affine in Lab: with the whole view known, means come back within ~2 levels."""
    reference = scene()
    tinted = (reference * np.array([0.85, 1.05, 0.9]) + np.array([15, 0, -5])).clip(0, 255).astype(np.uint8)
    out = match_colour(tinted, reference, np.ones(reference.shape[:2], bool))
    assert np.abs(tinted.mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max() > 15
    assert np.abs(out.mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max() < 2


def test_match_colour_leaves_the_view_alone_with_almost_nothing_known():
    reference, generated = scene(), lab_shift(scene(), 1.0, (0, 20.0, 0))
    known = np.zeros(reference.shape[:2], bool)
    known[0, :80] = True  # 80 of 9216 pixels: under 1 %
    assert np.array_equal(match_colour(generated, reference, known), generated)


def test_match_colour_clamps_the_contrast_gain():
    reference = scene()
    flat = lab_shift(reference, 0.1, (0, 0, 0))  # a tenth of the contrast: matching would scale L by ~10
    out = match_colour(flat, reference, np.ones(reference.shape[:2], bool))
    lightness = [cv2.cvtColor(x.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 0].std() for x in (flat, out)]
    assert lightness[1] / lightness[0] == pytest.approx(2.0, rel=0.1)


def test_match_colour_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"`known` has to be \(H, W\) = \(96, 96\) but is \(96, 95\)"):
        match_colour(scene(), scene(), np.ones((96, 95), bool))


def sphere_canvas(height: int = 128, width: int = 256) -> np.ndarray:
    """(H, W, 3) uint8 from a smooth function of the 3D direction: what a panorama with a clean
    seam and clean poles looks like."""
    d = directions(lon_of(np.arange(width), width)[None, :], lat_of(np.arange(height), height)[:, None])
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    rgb = [np.sin(3 * x + y), np.cos(2 * z - 3 * y), np.sin(4 * x * z + 2 * y)]
    return ((0.5 + 0.4 * np.stack(rgb, axis=-1)) * 255).round().astype(np.uint8)


def test_wrap_ratio_is_about_1_without_a_seam_and_large_with_one():
    height, width = 128, 256
    lon, lat = lon_of(np.arange(width), width)[None, :], lat_of(np.arange(height), height)[:, None]
    periodic = 128 + 100 * np.sin(lon + 3 * lat)  # every column pair differs alike, the seam too
    assert wrap_ratio(periodic) == pytest.approx(1.0, abs=0.05)
    assert wrap_ratio(sphere_canvas()) < 1.6
    stepped = periodic.copy()
    stepped[:, width // 2:] += 30  # one step in the middle (no effect on the median) and one at the seam
    assert wrap_ratio(stepped) > 10
    assert wrap_ratio(np.zeros((8, 16))) == 1.0


def test_pole_spread_is_about_0_for_a_function_of_the_direction():
    top, bottom = pole_spread(sphere_canvas())
    assert top < 1.0 and bottom < 1.0
    # painted per view, not per direction: the top row still shows each view's own colour
    pinched = sphere_canvas()
    pinched[:3, :64] = pinched[:3, :64] // 2
    assert pole_spread(pinched)[0] > 10 and pole_spread(pinched, rows=3)[1] == pytest.approx(bottom, abs=2)
