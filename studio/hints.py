"""ControlNet hint images: what a control unit shows the ControlNet, made from a picture or geometry.

Every hint is an RGB image in which black means "nothing here": no edge, no line, or (for depth)
infinitely far. That is why hints are padded with black, never with stretched edges (prepare_hint).
Depth maps are float (H, W) arrays in metres, +inf for sky; images are PIL images.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from studio.groups_control import CONTROL_TYPES  # noqa: F401  (declared with the control unit's fields)
from studio.images import resize_image

CONTROL_TYPE_HELP = {
    "depth": "Near is bright, far is dark: keeps the scene's layout in depth (or the camera's ground plane).",
    "canny": "White Canny edges on black: keeps outlines and fine detail exactly where they are.",
    "lineart": "White drawn lines on black: keeps the contours of a drawing or of a photo's subjects.",
    "none": "No preprocessing: the image given is the hint itself (your own depth map or sketch).",
}
# A1111's ControlNet extension exposes both Canny thresholds as 1..255 sliders (defaults 100, 200).
CANNY_THRESHOLD_RANGE = (1, 255)


def _check_threshold(label: str, value) -> None:
    lo, hi = CANNY_THRESHOLD_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{label} must be an integer in [{lo}, {hi}], got {value!r}")


def canny_hint(image: Image.Image, low_threshold: int, high_threshold: int) -> Image.Image:
    """White Canny edges on black (RGB): cv2.Canny of the image's grey (RGB2GRAY), in 3 channels.

    Canny (1986): gradients above `high_threshold` are edges, and those above `low_threshold`
    too where they connect to one (hysteresis).
    """
    _check_threshold("Canny low threshold (canny_low_threshold)", low_threshold)
    _check_threshold("Canny high threshold (canny_high_threshold)", high_threshold)
    if low_threshold > high_threshold:
        raise ValueError(f"Canny low threshold (canny_low_threshold) must be at most the high threshold "
                         f"(canny_high_threshold), got {low_threshold} > {high_threshold}")
    grey = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)  # (H, W) uint8
    edges = cv2.Canny(grey, int(low_threshold), int(high_threshold))  # (H, W), 0 or 255
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2))  # (H, W, 3)


def depth_hint(depth_m: np.ndarray) -> Image.Image:
    """The depth ControlNet's hint for a depth map in metres: near is bright.

    Like the MiDaS maps the depth ControlNets were trained on, the hint is disparity (1 / depth)
    min-max normalised over the image to 0..255: the nearest pixel is 255 and the farthest 0;
    sky (+inf) has disparity 0 and so is black. A map with no spread (one constant depth, or all
    sky) has no structure to show: it is all black, the same "no control" value as the padding of
    prepare_hint, rather than a mid grey that would read as a flat wall at some distance.
    Raises ValueError for NaN, for depths <= 0 and for arrays that are not (H, W).
    """
    depth = np.asarray(depth_m, dtype=np.float64)  # (H, W)
    if depth.ndim != 2:
        raise ValueError(f"depth_m must be a (H, W) depth map, got shape {depth.shape}")
    if np.isnan(depth).any():
        raise ValueError(f"depth_m must not contain NaN, got {int(np.isnan(depth).sum())} NaN pixels")
    if not (depth > 0).all():
        raise ValueError(f"depth_m must be positive metres (+inf for sky), got a minimum of {depth.min()!r}")
    disparity = 1.0 / depth  # (H, W), +inf -> 0
    lo, hi = disparity.min(), disparity.max()
    if hi == lo:
        grey = np.zeros(depth.shape, np.uint8)
    else:
        grey = np.round((disparity - lo) / (hi - lo) * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))  # (H, W, 3)


def depth_hint_from_image(estimator, image: Image.Image) -> Image.Image:
    """The depth hint of a picture: metric depth from `estimator` (studio.models.depth), then depth_hint."""
    from studio.models.depth import estimate_depth_m  # imports torch lazily itself

    return depth_hint(estimate_depth_m(estimator, image))


def lineart_hint(detector, image: Image.Image) -> Image.Image:
    """`detector(image)` (a PIL -> PIL line-art annotator) as RGB at the input's size.

    Annotators often work at their own resolution; a different size is brought back with
    Lanczos, so the lines stay where they are in the picture.
    """
    lines = detector(image)
    if not isinstance(lines, Image.Image):
        raise TypeError(f"the line-art detector must return a PIL image, got {type(lines).__name__}")
    lines = lines.convert("RGB")
    if lines.size != image.size:
        lines = lines.resize(image.size, Image.Resampling.LANCZOS)
    return lines


def _check_camera(width: int, height: int, pitch_deg: float, focal_px: float) -> None:
    if not (isinstance(width, int) and isinstance(height, int) and width >= 8 and height >= 8):
        raise ValueError(f"width and height must be integers of at least 8, got {width!r} and {height!r}")
    if not -90 < pitch_deg < 90:  # NaN fails too
        raise ValueError(f"pitch must be in (-90, 90) degrees, got {pitch_deg!r}")
    if not (0 < focal_px < math.inf):
        raise ValueError(f"focal_px must be a positive number of pixels, got {focal_px!r}")


def ground_plane_depth(width: int, height: int, pitch_deg: float, focal_px: float,
                       camera_height_m: float = 1.6) -> np.ndarray:
    """Depth (m, along the optical axis) of a level ground plane seen by a pitched pinhole camera.

    Derivation (world z up, camera at the origin, ground at z = -h, pitch θ positive looking up):
    the optical axis is a = (0, cosθ, sinθ) and the image's "down" is d = (0, sinθ, -cosθ), so the
    pixel y below the centre looks along r = f·a + y·d (plus x sideways), whose height is
    z(r) = f·sinθ - y·cosθ. t·r meets the ground where t·z(r) = -h, i.e. t = h / (y·cosθ - f·sinθ),
    and its depth along the axis is t·f: D(y) = h·f / (y·cosθ - f·sinθ) for y > f·tanθ, else +inf
    (the ray points at or above the horizon: sky). D does not depend on the column x.
    Returns float32 (H, W), sampled at pixel centres y = row + 0.5 - H/2.
    """
    _check_camera(width, height, pitch_deg, focal_px)
    if not camera_height_m > 0:
        raise ValueError(f"camera_height_m must be positive, got {camera_height_m!r}")
    theta = math.radians(pitch_deg)
    y = np.arange(height) + 0.5 - height / 2  # (H,) pixel centres, downward from the centre
    below = y * math.cos(theta) - focal_px * math.sin(theta)  # (H,) > 0 below the horizon
    column = np.full(height, np.inf)  # (H,)
    column[below > 0] = camera_height_m * focal_px / below[below > 0]
    return np.tile(column[:, None], (1, width)).astype(np.float32)  # (H, W)


def ground_plane_hint(width: int, height: int, pitch_deg: float, focal_px: float) -> Image.Image:
    """The depth hint of the bare ground plane: the horizon control for the depth ControlNet.

    Black above the horizon, brightening linearly to white on the bottom row. The camera height
    drops out: disparity 1/D = (y·cosθ - f·sinθ) / (h·f) is linear in y, and min-max
    normalisation cancels its scale 1/(h·f). With the horizon above the frame (looking steeply
    down) the farthest visible ground, the top row, is the black end instead.
    """
    return depth_hint(ground_plane_depth(width, height, pitch_deg, focal_px))


def prepare_hint(hint: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """`hint` as RGB at width × height by one of RESIZE_MODES (studio.images.resize_image).

    "resize and fill" pads the bands with BLACK, not with repeated edge pixels as resize_image
    does for pictures: black is "no edge / no line / far away" for every hint type, whereas a
    smeared edge would tell the ControlNet to draw stripes there. The fitted hint has the same
    size and place as resize_image gives the picture, so the two stay aligned.
    """
    hint = hint.convert("RGB")
    if resize_mode != "resize and fill":
        return resize_image(hint, width, height, resize_mode)  # validates the mode and the size
    if not (width >= 1 and height >= 1):
        raise ValueError(f"width and height must be at least 1, got {width} and {height}")
    # The same fit as studio.images._resize_and_fill: scale to fit inside, round, centre.
    scale = min(width / hint.width, height / hint.height)
    fit_w = min(width, max(1, round(hint.width * scale)))
    fit_h = min(height, max(1, round(hint.height * scale)))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(hint.resize((fit_w, fit_h), Image.Resampling.LANCZOS),
                 ((width - fit_w) // 2, (height - fit_h) // 2))
    return canvas
