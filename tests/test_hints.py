"""ControlNet hints: Canny edges, depth, line art, the ground-plane horizon and fitting to a size."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from studio.camera import focal_length_px, horizon_row
from studio.hints import (
    CONTROL_TYPE_HELP,
    CONTROL_TYPES,
    canny_hint,
    depth_hint,
    depth_hint_from_image,
    ground_plane_depth,
    ground_plane_hint,
    lineart_hint,
    prepare_hint,
)
from studio.images import resize_image

W, H = 1024, 768
F35 = focal_length_px(35, W, H)  # 995.6 px


def rectangles() -> np.ndarray:
    """(64, 128, 3) uint8 on grey (128): a white rectangle, a faint one (140) and a pinkish red one.

    Sobel's |gx| + |gy| across a step s is about 4·s: 508 for the white one, 48 for the faint
    one. The red one (255, 128, 128) is a step of 38 in RGB2GRAY's grey but of 14.5 if the
    channels were read as BGR, so it tells the channel order apart.
    """
    a = np.full((64, 128, 3), 128, np.uint8)
    a[10:40, 8:40] = 255
    a[20:50, 56:88] = 140
    a[30:58, 98:124] = (255, 128, 128)
    return a


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def test_control_types_each_have_help():
    assert CONTROL_TYPES == ("depth", "canny", "lineart", "none")
    assert set(CONTROL_TYPE_HELP) == set(CONTROL_TYPES) and all(CONTROL_TYPE_HELP.values())


def test_importing_hints_does_not_import_torch():
    code = "import sys, studio.hints; print('torch' in sys.modules, 'gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# Canny


def test_canny_is_cv2_canny_of_the_grey_image():
    a = rectangles()
    expected = cv2.Canny(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), 80, 120)
    assert not np.array_equal(expected, cv2.Canny(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), 80, 120))
    hint = as_array(canny_hint(Image.fromarray(a), 80, 120))
    assert hint.shape == (64, 128, 3)
    for c in range(3):
        np.testing.assert_array_equal(hint[..., c], expected)
    assert set(np.unique(hint)) == {0, 255}
    assert hint[10, 20, 0] == 255 or hint[9, 20, 0] == 255  # the strong rectangle's top edge


def test_canny_thresholds_change_the_edges():
    image = Image.fromarray(rectangles())
    high = as_array(canny_hint(image, 100, 200))[..., 0]
    low = as_array(canny_hint(image, 10, 20))[..., 0]
    faint = (slice(15, 55), slice(50, 94))  # around the faint rectangle only
    assert high[faint].sum() == 0  # its gradient (~48) is below 100
    assert low[faint].sum() > 0
    assert (low > 0).sum() > (high > 0).sum()


@pytest.mark.parametrize("low, high, message", [
    (0, 200, r"Canny low threshold \(canny_low_threshold\) must be an integer in \[1, 255\], got 0"),
    (100, 256, r"Canny high threshold \(canny_high_threshold\) must be an integer in \[1, 255\], got 256"),
    (10.5, 200, r"Canny low threshold \(canny_low_threshold\) must be an integer in \[1, 255\], got 10.5"),
    (True, 200, r"Canny low threshold \(canny_low_threshold\) must be an integer .*got True"),
    (200, 100, r"Canny low threshold \(canny_low_threshold\) must be at most .*got 200 > 100"),
])
def test_canny_threshold_validation(low, high, message):
    with pytest.raises(ValueError, match=message):
        canny_hint(Image.new("RGB", (16, 16)), low, high)


def test_canny_accepts_numpy_integers_and_equal_thresholds():
    hint = canny_hint(Image.fromarray(rectangles()), np.int64(100), 100)
    assert hint.size == (128, 64)


# Depth


def test_depth_hint_of_a_ramp():
    depth = np.tile(np.linspace(1.0, 10.0, 10), (4, 1)).astype(np.float32)  # (4, 10): 1, 2, ... 10 m
    hint = as_array(depth_hint(depth))
    assert hint.shape == (4, 10, 3)
    assert (hint == hint[..., :1]).all()  # grey
    row = hint[0, :, 0].astype(int)
    assert np.all(np.diff(row) < 0)  # farther is darker
    # (1/d − 1/10) / (1 − 1/10) · 255, rounded
    assert row[0] == 255 and row[-1] == 0
    assert row[1] == 113  # 2 m: 0.4 / 0.9 · 255 = 113.3
    assert row[2] == 66  # 3 m: 0.2333 / 0.9 · 255 = 66.1
    assert row[4] == 28  # 5 m: 0.1 / 0.9 · 255 = 28.3


def test_depth_hint_sky_is_black():
    depth = np.full((4, 4), 2.0)
    depth[0] = np.inf
    depth[3] = 4.0
    hint = as_array(depth_hint(depth))[..., 0]
    assert (hint[0] == 0).all()  # disparity 0
    assert (hint[1] == 255).all()  # nearest
    assert (hint[3] == 128).all()  # 4 m: half the nearest disparity, 127.5 rounded


def test_depth_hint_without_spread_is_black():
    assert not as_array(depth_hint(np.full((8, 8), 3.0))).any()
    assert not as_array(depth_hint(np.full((8, 8), np.inf))).any()


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (0.0, "positive"), (-1.0, "positive"),
                                          (-np.inf, "positive")])
def test_depth_hint_refuses_bad_depths(bad, message):
    depth = np.full((4, 4), 2.0)
    depth[1, 2] = bad
    with pytest.raises(ValueError, match=message):
        depth_hint(depth)


def test_depth_hint_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        depth_hint(np.ones((4, 4, 3)))


def test_depth_hint_from_image_uses_the_metric_estimate():
    import torch

    def estimator(image):
        w, h = image.size
        return {"predicted_depth": torch.linspace(1, 10, w).repeat(h, 1)}  # (H, W) metres

    estimator.model = SimpleNamespace(config=SimpleNamespace(depth_estimation_type="metric", name_or_path="fake"))
    hint = as_array(depth_hint_from_image(estimator, Image.new("RGB", (10, 4))))
    assert hint.shape == (4, 10, 3)
    assert hint[0, 0, 0] == 255 and hint[0, -1, 0] == 0 and hint[0, 1, 0] == 113


# Line art


def test_lineart_hint_is_the_detector_output_in_rgb():
    lines = Image.fromarray(rectangles()[..., 0])  # an "L" image

    hint = lineart_hint(lambda image: lines, Image.new("RGB", (128, 64)))
    assert hint.mode == "RGB" and hint.size == (128, 64)
    np.testing.assert_array_equal(np.asarray(hint)[..., 1], rectangles()[..., 0])


def test_lineart_hint_is_resized_back_to_the_input_size():
    hint = lineart_hint(lambda image: Image.new("L", (48, 32), 255), Image.new("RGB", (96, 64)))
    assert hint.size == (96, 64) and hint.mode == "RGB"
    assert (np.asarray(hint) == 255).all()


def test_lineart_detector_must_return_an_image():
    with pytest.raises(TypeError, match="PIL image"):
        lineart_hint(lambda image: np.zeros((4, 4)), Image.new("RGB", (4, 4)))


# Ground plane


def first_ground_row(depth: np.ndarray) -> int:
    return int(np.argmax(np.isfinite(depth[:, 0])))


def ray_depth(x: float, y: float, pitch_deg: float, f: float, h: float) -> float:
    """Depth along the axis by intersecting a rotated ray with z = −h (no closed form used)."""
    t = math.radians(pitch_deg)
    # Camera (x right, y down, z forward) to world (x right, y forward, z up), pitched up by t.
    rotation = np.array([[1, 0, 0], [0, math.sin(t), math.cos(t)], [0, -math.cos(t), math.sin(t)]])
    ray = rotation @ np.array([x, y, f])
    if ray[2] >= 0:
        return math.inf
    point = ray * (-h / ray[2])  # on the ground
    return float(point @ rotation[:, 2])  # along the optical axis (world direction of camera z)


@pytest.mark.parametrize("pitch", [-20, 0, 15])
def test_ground_plane_depth_matches_the_closed_form_and_a_ray_intersection(pitch):
    depth = ground_plane_depth(W, H, pitch, F35, camera_height_m=1.6)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    t = math.radians(pitch)
    first = first_ground_row(depth)
    for row in (first, first + 1, (first + H) // 2, H - 1):
        y = row + 0.5 - H / 2
        closed = 1.6 * F35 / (y * math.cos(t) - F35 * math.sin(t))
        assert depth[row, W // 2] == pytest.approx(closed, rel=1e-6)
        for col in (0, 300, W - 1):  # the same at every column
            assert depth[row, col] == depth[row, W // 2]
            assert depth[row, col] == pytest.approx(ray_depth(col + 0.5 - W / 2, y, pitch, F35, 1.6), rel=1e-5)
    assert np.isinf(depth[:first]).all()  # sky
    assert np.all(np.diff(depth[first:, 0]) < 0)  # nearer towards the bottom


@pytest.mark.parametrize("pitch", [-20, 0, 15])
def test_ground_plane_horizon_is_the_cameras_horizon_row(pitch):
    depth = ground_plane_depth(W, H, pitch, F35)
    first = first_ground_row(depth)
    assert np.isinf(depth[:first]).all() and np.isfinite(depth[first:]).all()
    assert abs(first - horizon_row(H, F35, pitch)) <= 1


def test_ground_plane_horizon_direction():
    assert first_ground_row(ground_plane_depth(W, H, 0, F35)) == H // 2  # level: the centre row
    assert first_ground_row(ground_plane_depth(W, H, -10, F35)) < H // 2  # looking down: above the centre
    assert first_ground_row(ground_plane_depth(W, H, 10, F35)) > H // 2  # looking up: below it


def test_ground_plane_similar_triangles():
    # Level camera, 1.6 m high, f = 1000 px: the ground 10 m away is 1000 · 1.6 / 10 = 160 px below
    # the centre. With 769 rows, row 544 has its centre exactly there.
    depth = ground_plane_depth(8, 769, 0, 1000.0, camera_height_m=1.6)
    assert depth[544, 0] == pytest.approx(10.0)
    assert ground_plane_depth(8, 769, 0, 1000.0, camera_height_m=3.2)[544, 0] == pytest.approx(20.0)


@pytest.mark.parametrize("pitch", [-20, 0, 15])
def test_ground_plane_hint(pitch):
    hint = as_array(ground_plane_hint(W, H, pitch, F35))[..., 0]  # (H, W)
    depth = ground_plane_depth(W, H, pitch, F35)
    first = first_ground_row(depth)
    assert (hint[:first] == 0).all()  # sky
    assert (hint[-1] == 255).all()  # the nearest ground
    # Disparity is linear in y: a ramp from the horizon y_h = f·tanθ to the bottom row.
    y_h = F35 * math.tan(math.radians(pitch))
    for row in (first, (first + H) // 2, H - 2):
        y, y_last = row + 0.5 - H / 2, H - 0.5 - H / 2
        assert abs(int(hint[row, 7]) - 255 * (y - y_h) / (y_last - y_h)) <= 0.5 + 1e-6
    assert (hint == hint[:, :1]).all()


def test_ground_plane_hint_does_not_depend_on_camera_height():
    low = depth_hint(ground_plane_depth(64, 48, -5, 60.0, camera_height_m=0.5))
    high = depth_hint(ground_plane_depth(64, 48, -5, 60.0, camera_height_m=30.0))
    np.testing.assert_array_equal(np.asarray(low), np.asarray(high))
    np.testing.assert_array_equal(np.asarray(low), np.asarray(ground_plane_hint(64, 48, -5, 60.0)))


def test_ground_plane_hint_without_a_horizon_in_the_frame():
    assert not np.asarray(ground_plane_hint(W, H, 40, F35)).any()  # all sky: black
    down = np.asarray(ground_plane_hint(W, H, -60, F35))[..., 0]  # all ground
    assert (down[0] == 0).all() and (down[-1] == 255).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"pitch_deg": 90}, "pitch"), ({"pitch_deg": -90}, "pitch"), ({"pitch_deg": math.nan}, "pitch"),
    ({"focal_px": 0}, "focal_px"), ({"focal_px": math.inf}, "focal_px"), ({"width": 7}, "at least 8"),
    ({"height": 4}, "at least 8"), ({"camera_height_m": 0}, "camera_height_m"),
])
def test_ground_plane_validation(kwargs, message):
    args = {"width": 64, "height": 48, "pitch_deg": 0, "focal_px": 50.0} | kwargs
    with pytest.raises(ValueError, match=message):
        ground_plane_depth(**args)


# Fitting a hint to the output size


@pytest.mark.parametrize("mode", ["just resize", "crop and resize", "resize and fill"])
def test_prepare_hint_sizes(mode):
    hint = prepare_hint(Image.new("L", (100, 50), 200), 64, 96, mode)
    assert hint.size == (64, 96) and hint.mode == "RGB"


def test_prepare_hint_fills_with_black_where_pictures_repeat_edges():
    white = Image.new("RGB", (100, 50), (255, 255, 255))
    hint = np.asarray(prepare_hint(white, 64, 64, "resize and fill"))  # fits as 64 × 32, rows 16..47
    assert (hint[:16] == 0).all() and (hint[48:] == 0).all()
    assert (hint[16:48] == 255).all()
    assert (np.asarray(resize_image(white, 64, 64, "resize and fill")) == 255).all()  # pictures: edges


def test_prepare_hint_stays_aligned_with_the_picture():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(1, 256, (40, 70, 3), dtype=np.uint8))
    hint = np.asarray(prepare_hint(picture, 96, 80, "resize and fill"))
    fitted = np.asarray(resize_image(picture, 96, 80, "resize and fill"))
    inside = hint.any(axis=2)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(hint[inside], fitted[inside])  # the same pixels in the same place
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 66, 0, 95)  # 96 × 55, centred


def test_prepare_hint_refuses_bad_modes_and_sizes():
    with pytest.raises(ValueError, match="resize mode"):
        prepare_hint(Image.new("RGB", (8, 8)), 8, 8, "stretch")
    with pytest.raises(ValueError, match="at least 1"):
        prepare_hint(Image.new("RGB", (8, 8)), 0, 8, "resize and fill")
