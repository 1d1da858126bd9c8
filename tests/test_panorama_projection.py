"""studio/panorama/projection.py: e2p and our p2e round-trip in py360convert's conventions, across
the ±180° seam and at the poles; coverage and solid-angle weights."""

import numpy as np
import py360convert
import pytest

from studio.panorama.projection import (View, coverage, directions, e2p, lat_of, lon_of, p2e, solid_angle_weights,
                                        to_plane)

H, W, SIZE = 256, 512, 256
TOL = 1 / 255

VIEWS = [View(0, 0, 90), View(170, 0, 90), View(-170, 10, 60), View(-180, -20, 75), View(30, 60, 90),
         View(-120, -60, 100), View(10, 90, 90), View(-45, -90, 120), View(135, 50, 120)]


def sphere_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 in [0.1, 0.9], a smooth function of the 3D direction (so the poles are one
    value), varying ~0.02 per pixel at 512 wide: a view pasted half a pixel off is out by ~2/255."""
    d = directions(lon_of(np.arange(width), width)[None, :], lat_of(np.arange(height), height)[:, None])
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    channels = [np.sin(6 * x + 2 * y), np.cos(5 * z - 3 * y), np.sin(4 * y + 3 * x * z)]
    return (0.5 + 0.4 * np.stack(channels, axis=-1)).astype(np.float32)


def view_image(size: int) -> np.ndarray:
    """(size, size, 2) float32: smooth, not symmetric (a flip or transpose would show)."""
    u = np.linspace(0, 1, size)
    xx, yy = np.meshgrid(u, u)
    return np.stack([0.5 + 0.4 * np.sin(5 * xx + 2 * yy), 0.3 + 0.5 * xx * yy], axis=-1).astype(np.float32)


def interior(view: View, height: int, width: int, size: int, border: int = 2) -> np.ndarray:
    """(H, W) bool: equirect pixels at least `border` view pixels inside the view's edges."""
    inner = np.zeros((size, size), np.float32)
    inner[border:-border, border:-border] = 1
    return p2e(inner, view, height, width, mode="nearest")[0] > 0.5


@pytest.mark.parametrize("view", VIEWS, ids=str)
def test_e2p_then_p2e_gives_back_the_equirect(view):
    image = sphere_image(H, W)
    values, covered = p2e(e2p(image, view, SIZE), view, H, W)
    inner = interior(view, H, W, SIZE)
    assert inner.sum() > 0.5 * covered.sum() > 0
    assert np.abs(values - image)[inner].max() <= TOL
    assert not values[~covered].any()  # 0 outside the view


@pytest.mark.parametrize("view", VIEWS, ids=str)
def test_p2e_is_the_inverse_of_py360convert_e2p(view):
    persp = view_image(SIZE)
    # an equirect fine enough that its pixels are smaller than the view's, so e2p can sample it back
    values, _ = p2e(persp, view, 1024, 2048)
    back = py360convert.e2p(values, fov_deg=view.fov, u_deg=view.yaw, v_deg=view.pitch, out_hw=(SIZE, SIZE))
    assert np.abs(back - persp)[2:-2, 2:-2].max() <= TOL


@pytest.mark.parametrize("view", VIEWS + [View(179.9, 40, 110), View(-90, 44, 90)], ids=str)
def test_coverage_matches_a_direct_test_of_every_pixel(view):
    """`coverage` and `p2e` only look at the window around the view: it must not cut the view."""
    d = directions(lon_of(np.arange(W), W)[None, :], lat_of(np.arange(H), H)[:, None])
    expected = to_plane(view, d)[2]
    assert (coverage(view, H, W) == expected).all()
    assert (p2e(np.ones((8, 8), np.float32), view, H, W)[1] == expected).all()


def test_a_90_degree_view_on_the_horizon_sees_yaw_plus_minus_45():
    height, width = 180, 360  # 1° pixels, centres at ±0.5°, ±1.5°, ...
    lon, lat = np.degrees(lon_of(np.arange(width), width)), np.degrees(lat_of(np.arange(height), height))
    covered = coverage(View(0, 0, 90), height, width)
    equator = covered[height // 2]
    assert (lon[equator].min(), lon[equator].max()) == pytest.approx((-44.5, 44.5))
    middle = covered[:, width // 2]  # the column at lon +0.5°
    assert (lat[middle].min(), lat[middle].max()) == pytest.approx((-44.5, 44.5))
    # the top edge is a great circle: at lon 30.5° it has come down to atan(cos 30.5°) = 40.75°
    assert lat[covered[:, np.argmin(np.abs(lon - 30.5))]].max() == pytest.approx(40.5)


def test_a_view_across_the_seam_covers_both_ends_of_the_equirect():
    height, width = 180, 360
    lon = np.degrees(lon_of(np.arange(width), width))
    equator = coverage(View(170, 0, 90), height, width)[height // 2]
    expected = (lon > 125) | (lon < -145)  # 170 ± 45, wrapped: centres 125.5 … 179.5 and -179.5 … -145.5
    assert (equator == expected).all()


@pytest.mark.parametrize("pitch, rows", [(90, slice(0, 3)), (-90, slice(-3, None))])
def test_pole_views_cover_the_pole_rows(pitch, rows):
    covered = coverage(View(37, pitch, 90), H, W)
    assert covered[rows].all()
    lat = np.degrees(lat_of(np.arange(H), H))
    assert (np.abs(lat[covered.any(axis=1)]) >= 35).all()  # nothing below the 90° view's corners


def test_solid_angle_weights_sum_to_one_in_proportion_to_cos_latitude():
    weights = solid_angle_weights(90, 180)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert (weights == weights[:, :1]).all()
    cos = np.cos(lat_of(np.arange(90), 90))
    assert weights[:, 0] / weights[45, 0] == pytest.approx(cos / cos[45], rel=1e-9)


def test_e2p_returns_float32_for_any_dtype_and_keeps_2d_2d():
    image = (sphere_image(64, 128) * 255).astype(np.uint8)
    view = View(20, 10, 90)
    out = e2p(image, view, 32)
    assert out.dtype == np.float32 and out.shape == (32, 32, 3)
    assert not np.allclose(out, out.round())  # sampled in float, not rounded to the input's uint8
    for dtype in (np.int32, np.int64, bool):  # py360convert's cv2.remap refuses these
        assert e2p(image[..., 0].astype(dtype), view, 32).shape == (32, 32)


@pytest.mark.parametrize("channels", [2, 5, 6])
def test_p2e_samples_every_channel_as_it_samples_one(channels):
    """Whatever the channel count (cv2 treats 2 channels differently), and (H, W) stays 2D."""
    persp = np.random.default_rng(0).random((16, 16, channels)).astype(np.float32)
    view = View(0, 0, 90)
    values, covered = p2e(persp, view, 64, 128)
    assert values.shape == (64, 128, channels) and covered.shape == (64, 128)
    for k in range(channels):
        single = p2e(persp[..., k], view, 64, 128)[0]
        assert single.shape == (64, 128)
        assert np.abs(values[..., k] - single).max() < 1e-6
    assert p2e(persp[..., 1:2], view, 64, 128)[0].shape == (64, 128, 1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"`persp` has to be a square .* but has shape \(16, 8\)"):
        p2e(np.zeros((16, 8), np.float32), View(0, 0, 90), 32, 64)
    with pytest.raises(ValueError, match="`mode` has to be one of nearest, bilinear, bicubic but is 'cubicle'"):
        e2p(np.zeros((32, 64), np.float32), View(0, 0, 90), 8, mode="cubicle")
