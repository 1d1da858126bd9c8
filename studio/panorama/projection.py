"""Equirectangular <-> perspective projection for 360° panoramas, in py360convert's conventions.

`e2p` is py360convert's; `p2e`, its inverse, is ours (py360convert has none) and must use the
same conventions, read from py360convert 1.0.4 (utils.py: uv2coor, xyzpers, xyz2uv), or a view
pasted back would land a fraction of a pixel off and drift as views are painted over each other:

- equirect pixel (x, y) of an H x W image is centred at lon = ((x + 0.5) / W − 0.5) · 360°,
  lat = (0.5 − (y + 0.5) / H) · 180°: row 0 is the top, lon −180° is the left edge of column 0.
- the direction of (lon, lat) is (cos lat · sin lon, sin lat, cos lat · cos lon): x right, y up,
  z forward (lon 0). More lon is further right, so yaw + turns right and pitch + looks up.
- perspective pixel (i, j) of an n x n view is the camera ray (X, Y, 1) with
  X = −t + 2t · j / (n − 1) and Y = t − 2t · i / (n − 1), t = tan(fov / 2): the FOV spans the
  first to the last pixel CENTRE (np.linspace), not the image's outer edges.
- camera to world: pitch about x first, then yaw about y: d = R_y(yaw) · R_x(−pitch) · (X, Y, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# cv2's flag names; cv2 itself (and py360convert, which pulls in scipy) load on first use
INTERPOLATION = {"nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC"}
BORDER_SAMPLES = 257  # points per side of a view's border when bounding it on the equirect


@dataclass(frozen=True)
class View:
    """A square perspective view, in degrees: yaw + turns right, pitch + looks up (py360convert's
    u_deg, v_deg); `fov` is both the horizontal and the vertical field of view."""

    yaw: float
    pitch: float
    fov: float


def check_mode(mode: str) -> int:
    """The cv2 interpolation flag of a mode name."""
    import cv2

    if mode not in INTERPOLATION:
        raise ValueError(f"`mode` has to be one of {', '.join(INTERPOLATION)} but is {mode!r}.")
    return getattr(cv2, INTERPOLATION[mode])


def e2p(equirect: np.ndarray, view: View, size: int, mode: str = "bilinear") -> np.ndarray:
    """The view as a (size, size[, C]) float32 image sampled from an (H, W[, C]) equirect of any dtype."""
    import py360convert

    check_mode(mode)
    if equirect.ndim not in (2, 3):
        raise ValueError(f"`equirect` has to be (H, W) or (H, W, C) but has shape {equirect.shape}.")
    # py360convert returns the input's dtype (uint8 rounded, float16 kept) and cv2.remap refuses
    # int32, int64 and bool outright, so everything is sampled as float32.
    image = np.asarray(equirect, dtype=np.float32)
    out = py360convert.e2p(image, fov_deg=view.fov, u_deg=view.yaw, v_deg=view.pitch, out_hw=(size, size),
                           mode=mode)
    return np.asarray(out, dtype=np.float32)  # (size, size) for 2D input: py360convert squeezes it back


def camera_to_world(view: View) -> np.ndarray:
    """(3, 3): columns are the camera's right, up and forward axes in world coordinates."""
    yaw, pitch = np.radians(view.yaw), np.radians(view.pitch)
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # R_y(yaw)
    r_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])  # R_x(−pitch): +pitch tilts forward up
    return r_yaw @ r_pitch


def lon_of(x: np.ndarray, width: int) -> np.ndarray:
    """Longitude (radians) of equirect column centres x."""
    return ((np.asarray(x, np.float64) + 0.5) / width - 0.5) * 2 * np.pi


def lat_of(y: np.ndarray, height: int) -> np.ndarray:
    """Latitude (radians) of equirect row centres y."""
    return (0.5 - (np.asarray(y, np.float64) + 0.5) / height) * np.pi


def directions(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(..., 3) unit vectors of broadcast (lon, lat) in radians."""
    lon, lat = np.broadcast_arrays(lon, lat)
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)


def to_plane(view: View, world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, inside) of world directions (..., 3): the view's image-plane coordinates (z = 1) and
    whether the direction is in the view (in front of it and |X|, |Y| <= tan(fov / 2))."""
    r = camera_to_world(view).tolist()  # Python floats keep float32 rays float32 (NumPy 2 promotion)
    cam = [world[..., 0] * r[0][k] + world[..., 1] * r[1][k] + world[..., 2] * r[2][k] for k in range(3)]  # R^T · d
    return in_view(view, *cam)


def in_view(view: View, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`to_plane` from camera coordinates."""
    front = z > 1e-6
    safe = np.where(front, z, 1)  # behind the camera the ratio means nothing: keep it finite
    x, y = x / safe, y / safe
    t = np.tan(np.radians(view.fov) / 2)
    return x, y, front & (np.abs(x) <= t) & (np.abs(y) <= t)


def window(view: View, height: int, width: int) -> tuple[slice, np.ndarray]:
    """Rows (a slice) and columns (indices, wrapped at ±180°) of the equirect that hold the view.

    A view narrower than 180° is a spherically convex square, and latitude and longitude have no
    extremes on the sphere except at the poles, so unless a pole is inside, the view's bounds are
    its border's. Without a pole inside it cannot reach the meridian opposite its yaw either (the
    arc to it from the centre would cross a pole), so longitudes relative to the yaw do not wrap."""
    t = np.tan(np.radians(view.fov) / 2)
    s = np.linspace(-t, t, BORDER_SAMPLES)
    edge = np.full_like(s, t)
    plane = np.concatenate([np.stack([s, edge], -1), np.stack([s, -edge], -1),
                            np.stack([edge, s], -1), np.stack([-edge, s], -1)])  # (4 · samples, 2)
    rays = np.concatenate([plane, np.ones((len(plane), 1))], axis=1) @ camera_to_world(view).T
    lat = np.arcsin(np.clip(rays[:, 1] / np.linalg.norm(rays, axis=1), -1, 1))
    north, south = (to_plane(view, np.array(pole))[2] for pole in ([0.0, 1.0, 0.0], [0.0, -1.0, 0.0]))
    top = np.pi / 2 if north else lat.max()
    bottom = -np.pi / 2 if south else lat.min()
    rows = slice(max(0, int(np.floor((0.5 - top / np.pi) * height - 0.5)) - 1),
                 min(height, int(np.ceil((0.5 - bottom / np.pi) * height - 0.5)) + 2))
    if north or south:
        return rows, np.arange(width)
    yaw = np.radians(view.yaw)
    rel = (np.arctan2(rays[:, 0], rays[:, 2]) - yaw + np.pi) % (2 * np.pi) - np.pi  # (−π, π] around yaw
    first = int(np.floor(((yaw + rel.min()) / (2 * np.pi) + 0.5) * width - 0.5)) - 1
    last = int(np.ceil(((yaw + rel.max()) / (2 * np.pi) + 0.5) * width - 0.5)) + 1
    if last - first + 1 >= width:
        return rows, np.arange(width)
    return rows, np.arange(first, last + 1) % width


def project(view: View, height: int, width: int) -> tuple[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, X, Y, inside) on the view's window of an H x W equirect; X, Y, inside are
    (rows, cols) float32 / bool arrays as in `to_plane`.

    The direction (cos φ sin λ, sin φ, cos φ cos λ) is separable in latitude φ and longitude λ, so
    camera axis k is cos φ · (R0k sin λ + R2k cos λ) + R1k sin φ: trig per row and per column,
    one multiply-add per pixel (a full (h, w, 3) direction array cost 10x more)."""
    rows, cols = window(view, height, width)
    lat = lat_of(np.arange(height)[rows], height)[:, None]  # (h, 1)
    lon = lon_of(cols, width)[None, :]  # (1, w)
    cos_lat, sin_lat = np.cos(lat).astype(np.float32), np.sin(lat).astype(np.float32)
    r = camera_to_world(view)
    cam = [cos_lat * (r[0, k] * np.sin(lon) + r[2, k] * np.cos(lon)).astype(np.float32)
           + np.float32(r[1, k]) * sin_lat for k in range(3)]
    x, y, inside = in_view(view, *cam)
    return rows, cols, x, y, inside


def paste(out: np.ndarray, rows: slice, cols: np.ndarray, block: np.ndarray) -> None:
    """out[rows, cols] = block, as one or two slice copies (a window's columns wrap at most once;
    slices copy ~10x faster than fancy indexing)."""
    wrap = np.flatnonzero(np.diff(cols) < 0)
    split = int(wrap[0]) + 1 if len(wrap) else len(cols)
    out[rows, cols[0]:cols[split - 1] + 1] = block[:, :split]
    if split < len(cols):
        out[rows, cols[split]:cols[-1] + 1] = block[:, split:]


def coverage(view: View, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the equirect pixels whose centre the view sees."""
    rows, cols, _, _, inside = project(view, height, width)
    covered = np.zeros((height, width), bool)
    paste(covered, rows, cols, inside)
    return covered


def remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation: int) -> np.ndarray:
    """cv2.remap for any channel count, keeping a trailing channel axis. cv2 (5.0) interpolates
    1-, 3- and 4-channel float32 images exactly from float maps but 2-channel ones in 1/32-pixel
    fixed point (measured: up to 1/55 off on noise), so other counts go one channel at a time."""
    import cv2

    def one(part: np.ndarray) -> np.ndarray:
        return cv2.remap(part, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)

    if image.ndim == 2:
        return one(image)
    if image.shape[2] in (1, 3, 4):
        return one(image).reshape(*map_x.shape, image.shape[2])
    return np.stack([one(np.ascontiguousarray(image[..., k])) for k in range(image.shape[2])], axis=-1)


def p2e(persp: np.ndarray, view: View, height: int, width: int,
        mode: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Paste a (size, size[, C]) view into an H x W equirect: (values (H, W[, C]) float32, 0
    outside the view; covered (H, W) bool). Inverse of `e2p` with the same conventions."""
    interpolation = check_mode(mode)
    if persp.ndim not in (2, 3) or persp.shape[0] != persp.shape[1] or persp.shape[0] < 2:
        raise ValueError(f"`persp` has to be a square (size, size[, C]) view, size >= 2, but has shape {persp.shape}.")
    size = persp.shape[0]
    rows, cols, x, y, inside = project(view, height, width)
    # Pixel centres span the FOV (see the module docstring): X = ±t at columns 0 and size − 1.
    half = np.float32((size - 1) / 2)
    t = np.float32(np.tan(np.radians(view.fov) / 2))
    map_x = (x / t + 1) * half
    map_y = (1 - y / t) * half
    # Replicating the border, not padding with zeros: a point on the view's edge maps to size − 1
    # give or take rounding, and must not blend in a sliver of padding. `inside` decides coverage.
    sampled = remap(np.ascontiguousarray(persp, dtype=np.float32), map_x.astype(np.float32),
                    map_y.astype(np.float32), interpolation)
    sampled[~inside] = 0
    values = np.zeros((height, width, *persp.shape[2:]), np.float32)
    covered = np.zeros((height, width), bool)
    paste(values, rows, cols, sampled)
    paste(covered, rows, cols, inside)
    return values, covered


def solid_angle_weights(height: int, width: int) -> np.ndarray:
    """(H, W) float64: each equirect pixel's share of the sphere (sums to 1).

    A row between latitudes a and b covers (sin b − sin a) / 2 of the sphere, which is
    cos(centre latitude) · sin(half the row's height): proportional to the cosine of the centre."""
    edges = np.sin((0.5 - np.arange(height + 1) / height) * np.pi)  # sin(lat) of row edges, top to bottom
    rows = (edges[:-1] - edges[1:]) / 2  # (H,): each row's share, sums to 1
    return np.repeat(rows[:, None] / width, width, axis=1)
