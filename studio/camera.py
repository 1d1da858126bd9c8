"""Camera geometry made real: field of view, horizon row and thin-lens depth of field.

Focal lengths are full-frame equivalents: the image's long side spans the 36 mm side of a
36 x 24 mm sensor. Pitch is the camera's tilt, positive looking up. Images are (H, W, 3) float
arrays in [0, 1]; depth maps are (H, W) distances in metres.
"""

from __future__ import annotations

import math

import numpy as np

SENSOR_LONG_MM = 36.0  # full frame


def fov_degrees(focal_length_mm: float, sensor_mm: float = SENSOR_LONG_MM) -> float:
    """Angle of view across `sensor_mm` of sensor, pinhole model: fov = 2·atan(sensor / (2·f))."""
    if not focal_length_mm > 0:
        raise ValueError(f"focal_length_mm must be positive, got {focal_length_mm!r}")
    return math.degrees(2 * math.atan(sensor_mm / (2 * focal_length_mm)))


def focal_length_px(focal_length_mm: float, width: int, height: int) -> float:
    """The focal length in pixels of a `width` x `height` image (long side = 36 mm)."""
    return focal_length_mm * max(width, height) / SENSOR_LONG_MM


def horizon_row(height: int, f_px: float, pitch_deg: float) -> float:
    """Image row of a level horizon: y_h = H/2 + f_px·tan(pitch).

    Rows grow downwards, so looking up (pitch > 0) puts the horizon below the centre and looking
    down puts it above; at |pitch| >= the half vertical field of view it leaves the frame.
    """
    if not -89 < pitch_deg < 89:
        raise ValueError(f"pitch must be in (-89, 89) degrees, got {pitch_deg!r}")
    return height / 2 + f_px * math.tan(math.radians(pitch_deg))


def circle_of_confusion_mm(depth_m, focus_m: float, focal_length_mm: float, f_number: float):
    """Blur-circle diameter on the sensor (mm) of points at `depth_m`, thin-lens model.

    c = A·|S2 − S1| / S2 · f / (S1 − f), with aperture diameter A = f / N, focus distance S1 and
    subject distance S2 (all in mm). Zero on the focus plane, growing away from it, ∝ 1/N.
    """
    f = focal_length_mm
    s1 = focus_m * 1000.0
    if not (f_number > 0 and f > 0 and s1 > f):
        raise ValueError(f"need f_number > 0, focal length > 0 and focus beyond the focal length; got "
                         f"N={f_number!r}, f={f!r} mm, focus={focus_m!r} m")
    s2 = np.asarray(depth_m, dtype=np.float64) * 1000.0
    return (f / f_number) * np.abs(s2 - s1) / s2 * f / (s1 - f)


ACCEPTABLE_COC_MM = 0.03  # full frame's conventional "looks sharp" blur circle


def depth_of_field_limits_m(focus_m: float, focal_length_mm: float, f_number: float,
                            coc_mm: float = ACCEPTABLE_COC_MM) -> tuple[float, float]:
    """Nearest and farthest distances (m) that look sharp: with hyperfocal distance
    H = f²/(N·c) + f, near = s·(H − f)/(H + s − 2f) and far = s·(H − f)/(H − s) (inf past H)."""
    f, s = focal_length_mm, focus_m * 1000.0
    h = f * f / (f_number * coc_mm) + f
    near = s * (h - f) / (h + s - 2 * f)
    far = math.inf if s >= h else s * (h - f) / (h - s)
    return near / 1000.0, far / 1000.0


def disk_kernel(radius: float) -> np.ndarray:
    """A normalised, anti-aliased disk of `radius` pixels (the thin lens' blur spot)."""
    if radius < 0.5:
        return np.ones((1, 1), np.float32)
    r = math.ceil(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    k = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0).astype(np.float32)
    return k / k.sum()


def thin_lens_blur(image: np.ndarray, depth_m: np.ndarray, focus_m: float, focal_length_mm: float,
                   f_number: float, layers: int = 12) -> np.ndarray:
    """Depth of field by layered gathering, occlusion-aware.

    The scene is cut into `layers` slabs of equal width in disparity (1/depth; the circle of
    confusion is linear in it). Each slab is blurred with its own disk, normalised by its own
    blurred coverage, so a slab's colours never mix with those of a nearer slab: a sharp subject
    keeps clean edges over a blurred background. Slabs are then laid far to near, each one
    spreading only over pixels behind it, as a defocused foreground does in a real lens.
    """
    import cv2

    h, w = depth_m.shape
    assert image.shape[:2] == (h, w), "image and depth map must have the same size"
    px_per_mm = max(h, w) / SENSOR_LONG_MM
    disparity = 1.0 / np.maximum(depth_m, 1e-3)
    edges = np.linspace(disparity.min(), disparity.max(), layers + 1)
    slab = np.clip(np.digitize(disparity, edges[1:-1]), 0, layers - 1)  # (H, W), 0 = farthest
    out = image.astype(np.float32).copy()
    spread = []  # (slab index, colour, coverage) for slabs that blur
    for k in np.unique(slab):
        mask = (slab == k).astype(np.float32)
        depth_k = 1.0 / disparity[slab == k].mean()
        radius = float(circle_of_confusion_mm(depth_k, focus_m, focal_length_mm, f_number)) * px_per_mm / 2
        kernel = disk_kernel(radius)
        if kernel.size == 1:
            continue  # in focus: unchanged
        coverage = cv2.filter2D(mask, -1, kernel, borderType=cv2.BORDER_REFLECT)
        colour = cv2.filter2D(out * mask[..., None], -1, kernel, borderType=cv2.BORDER_REFLECT)
        colour /= np.maximum(coverage, 1e-6)[..., None]
        out[slab == k] = colour[slab == k]
        spread.append((k, colour, coverage))
    result = out.copy()
    for k, colour, coverage in spread:  # far to near: a blurred slab spills over what is behind it
        behind = (slab < k)[..., None]
        a = coverage[..., None]
        result = np.where(behind, colour * a + result * (1 - a), result)
    return result


# Words the text encoders know for what the numbers do. Thresholds follow photographers' usage
# (full-frame focal lengths; pitch in degrees, positive looking up).
FOCAL_TERMS = [(21, "ultra wide-angle lens, {f:g}mm"), (40, "wide-angle lens, {f:g}mm"),
               (70, "standard lens, {f:g}mm"), (136, "telephoto lens, {f:g}mm, compressed perspective"),
               (math.inf, "super telephoto lens, {f:g}mm, strongly compressed perspective")]
PITCH_TERMS = [(-40, "bird's-eye view, looking steeply down"), (-10, "high-angle shot, looking down"),
               (10, "eye-level shot"), (40, "low-angle shot, looking up"), (math.inf, "worm's-eye view, looking steeply up")]


def camera_terms(focal_length_mm: float | None, pitch_deg: float | None, f_number: float | None,
                 dof_from_prompt: bool) -> tuple[list[str], list[str]]:
    """Prompt and negative-prompt terms for the camera settings (None: that control is off).

    With depth of field made by the lens blur (`dof_from_prompt` False) the model is asked for an
    all-sharp picture, so the only blur is the one the numbers give.
    """
    terms, negative = [], []
    if focal_length_mm is not None:
        terms.append(next(t for limit, t in FOCAL_TERMS if focal_length_mm < limit).format(f=focal_length_mm))
    if pitch_deg is not None:
        terms.append(next(t for limit, t in PITCH_TERMS if pitch_deg < limit))
    if f_number is not None and dof_from_prompt:
        if f_number <= 2.8:
            terms.append(f"shallow depth of field, bokeh, f/{f_number:g}")
        elif f_number >= 8:
            terms.append(f"deep depth of field, everything in focus, f/{f_number:g}")
        else:
            terms.append(f"f/{f_number:g}")
    elif f_number is not None:
        terms.append("sharp focus throughout")
        negative.append("bokeh, depth of field, blurry background")
    return terms, negative


def autofocus_m(depth_m: np.ndarray) -> float:
    """Where a camera's centre autofocus would focus: the median depth of the central ninth."""
    h, w = depth_m.shape
    return float(np.median(depth_m[h // 3 : h - h // 3, w // 3 : w - w // 3]))
