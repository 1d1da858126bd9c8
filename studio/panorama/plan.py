"""View plans for 360° panoramas painted view after view (Edify Image, NVIDIA 2024, §4.4).

A plan is the list of perspective views in painting order. The first is made by text-to-image;
every later one inpaints what is still empty in it, so each must already show enough painted
canvas to continue from, and together they must cover the sphere. `check_plan` measures both:
a view's painted share is counted over its own image (the mask the inpainting model sees), the
sphere's coverage over equirect pixels weighted by their solid angle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from studio.panorama.projection import View, camera_to_world, directions, lat_of, lon_of, solid_angle_weights, to_plane

# Narrower than 45°, a view is under 5 % of the sphere: with the overlap below, a panorama would
# take 40+ diffusion runs. Wider than 120°, the corners of a square pinhole view are ~68° off axis
# and stretched ~7x; SD models learnt from ordinary photos (~40-90° lenses) and draw that badly.
MIN_FOV = 45.0
MAX_FOV = 120.0
# With less than a quarter of a view painted, the model gets a thin strip of context and starts
# something new beside it. At 25 % the last horizon view also sees a quarter-view of both the
# first view and its other neighbour, so the 0°/360° seam sits well inside what it repaints.
MIN_OVERLAP = 0.25
DEFAULT_FOV = 90.0  # SD models' comfort zone; 8 horizon views at the default overlap
DEFAULT_OVERLAP = 0.5  # half of each horizon view known: the context outpainting commonly uses
MAX_VIEWS = 64  # each view is a diffusion run; more is a mistake in a plan, not a panorama
SHARE_SAMPLES = 64  # samples per side of a view's image when measuring its painted share
COVERAGE_GRID = (128, 256)  # (H, W) of the equirect grid coverage is checked on: ~1.4° cells
GAP_TOLERANCE = 1e-4  # uncovered share of the sphere still counted as covered (grid rounding)
KEYS = ("yaw", "pitch", "fov")


@dataclass(frozen=True)
class PlanReport:
    """What `check_plan` measured: per view, the share of its image new or already painted
    before it; the share of the sphere covered (by solid angle); the smallest overlap of a view
    after the first (1.0 for a single view)."""

    new_share: tuple[float, ...]
    overlap_share: tuple[float, ...]
    covered_share: float
    min_overlap: float


# ---- Measuring --------------------------------------------------------------------------------


def image_rays(view: View, samples: int = SHARE_SAMPLES) -> np.ndarray:
    """(samples², 3) world directions of a grid of the view's pixel centres (FOV edge to edge)."""
    t = math.tan(math.radians(view.fov) / 2)
    x, y = np.meshgrid(np.linspace(-t, t, samples), np.linspace(t, -t, samples))
    plane = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3)
    return plane @ camera_to_world(view).T


def painted_share(view: View, before: list[View]) -> float:
    """The share of the view's image that the views `before` it already painted."""
    rays = image_rays(view)
    painted = np.zeros(len(rays), bool)
    for other in before:
        painted |= to_plane(other, rays)[2]
    return float(painted.mean())


class Sphere:
    """Which pixel centres of an equirect grid the views added so far cover, and the gaps left."""

    def __init__(self, height: int = COVERAGE_GRID[0], width: int = COVERAGE_GRID[1]):
        lon, lat = lon_of(np.arange(width), width)[None, :], lat_of(np.arange(height), height)[:, None]
        self.rays = directions(lon, lat).astype(np.float32)  # (H, W, 3); float32 halves the work
        self.lat = np.degrees(lat_of(np.arange(height), height))  # (H,) row centres
        self.weights = solid_angle_weights(height, width)
        self.covered = np.zeros((height, width), bool)

    def add(self, views: Sequence[View]) -> Sphere:
        for view in views:
            self.covered |= to_plane(view, self.rays)[2]
        return self

    def gap(self, more: Sequence[View] = (), lat_lo: float = -90.0, lat_hi: float = 90.0) -> float:
        """Share of the sphere between two latitudes that is uncovered, were `more` views added too."""
        covered = self.covered.copy()
        for view in more:
            covered |= to_plane(view, self.rays)[2]
        band = (self.lat >= lat_lo) & (self.lat <= lat_hi)
        return float(self.weights[band][~covered[band]].sum())


# ---- Building ---------------------------------------------------------------------------------


def lon_span(pitch: float, fov: float) -> float:
    """Degrees of longitude a view sees along the latitude circle through its centre: the FOV at
    pitch 0, more towards the poles, 360 once it holds the pole.

    Going round that circle from the view's centre, the point's X and Y on the image plane both
    grow while it is in front of the camera, so the view holds one arc [−λ, λ]: bisect for λ."""
    view = View(0.0, pitch, fov)

    def inside(lam: float) -> bool:
        return bool(to_plane(view, directions(np.radians(lam), np.radians(pitch)))[2])

    if inside(180.0):
        return 360.0
    lo, hi = 0.0, 180.0
    for _ in range(50):  # 180° / 2^50: exact to float precision
        lo, hi = ((lo + hi) / 2, hi) if inside((lo + hi) / 2) else (lo, (lo + hi) / 2)
    return 2 * lo


def wrap_yaw(yaw: float) -> float:
    """Degrees in [-180, 180) (py360convert wants u_deg in [-180, 180])."""
    return (yaw + 180.0) % 360.0 - 180.0


def ring(pitch: float, fov: float, overlap: float, start_yaw: float = 0.0) -> list[View]:
    """Views evenly spaced in yaw from `start_yaw` (turning right), neighbours overlapping by at
    least `overlap` of a view's longitude span at that pitch (of the FOV on the horizon)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"`overlap` has to be in [0, 1) but is {overlap:g}.")
    span = lon_span(pitch, fov)
    if span >= 360.0:
        return [View(wrap_yaw(start_yaw), pitch, fov)]
    count = math.ceil(360.0 / (span * (1 - overlap)) - 1e-9)
    return [View(wrap_yaw(start_yaw + 360.0 * k / count), pitch, fov) for k in range(count)]


def ring_overlap(fov: float, count: int, pitch: float = 0.0) -> float:
    """Share of a view's longitude span that `count` evenly spaced views at `pitch` share with a neighbour."""
    return 1 - (360.0 / count) / lon_span(pitch, fov)


def cap(sign: int, fov: float, below: list[View]) -> list[View]:
    """The views from the rows `below` to one pole (sign +1 up, -1 down), pole view last.

    The pole view alone where it overlaps the rows below by MIN_OVERLAP and leaves no gap (FOVs
    from ~95°). Otherwise rings in between: the top one low enough that the pole view overlaps it
    by MIN_OVERLAP of its FOV, so the pole itself is still unpainted and gets painted at the
    centre of the pole view, not where several views' stretched corners meet (a ±45° ring of 90°
    views would reach the pole and leave the pole view nothing to paint); more rings below it
    where rows would be further apart than (1 − MIN_OVERLAP) of the FOV. A ring has the fewest
    views (at least 3) that leave no gap up to it (with the pole view, for the top ring): ring
    views also overlap the row below, so their side neighbours need not overlap much."""
    pole = View(0.0, sign * 90.0, fov)
    sphere = Sphere().add(below)
    hemisphere = sorted((0.0, sign * 90.0))
    if painted_share(pole, below) >= MIN_OVERLAP and sphere.gap([pole], *hemisphere) <= GAP_TOLERANCE / 4:
        return [pole]
    step = (1 - MIN_OVERLAP) * fov  # the furthest apart two rows may be, in pitch
    top = 90.0 - step
    rows = max(1, math.ceil(top / step - 1e-9))
    views: list[View] = []
    for k in range(1, rows + 1):
        pitch = sign * top * k / rows
        last = [pole] if k == rows else []
        band = sorted((0.0, sign * 90.0 if last else pitch))
        for count in range(3, MAX_VIEWS):
            ring_views = [View(wrap_yaw(360.0 * j / count), pitch, fov) for j in range(count)]
            # A quarter of the tolerance per band: the bands' slivers add up, and check_plan
            # measures the whole sphere (on the canvas's own grid)
            if sphere.gap(ring_views + last, *band) <= GAP_TOLERANCE / 4:
                break
        sphere.add(ring_views)
        views += ring_views
    return views + [pole]


def default_plan(fov: float = DEFAULT_FOV, overlap: float = DEFAULT_OVERLAP) -> list[View]:
    """The horizon ring from yaw 0 turning right (its last view overlaps the first, so the seam
    is inpainted), then up to the zenith, then down to the nadir.

    At 90° and 0.5: 8 horizon views, 3 at +22.5°, the zenith, 3 at −22.5°, the nadir: 16 views
    (see `cap`), covering the whole sphere; every view after the first starts from at least 47 %
    of its image painted (the seam view from 93 %), and each pole view paints the 22 % around its pole."""
    horizon = ring(0.0, fov, overlap)
    up = cap(+1, fov, horizon)
    return horizon + up + cap(-1, fov, horizon + up)


def plan_for(fov: float, overlap: float) -> list[View]:
    """`default_plan` for a user's FOV and overlap, refusing values it cannot be made from."""
    if not MIN_FOV <= fov <= MAX_FOV:
        raise ValueError(f"`fov` has to be in [{MIN_FOV:g}, {MAX_FOV:g}] degrees but is {fov:g}.")
    if not MIN_OVERLAP <= overlap < 1:
        raise ValueError(f"`overlap` has to be at least {MIN_OVERLAP:g} (and below 1) so each view has painted "
                         f"context to continue from, but is {overlap:g}.")
    views = default_plan(fov, overlap)
    if len(views) > MAX_VIEWS:
        raise ValueError(f"A {fov:g}° FOV with overlap {overlap:g} needs {len(views)} views; at most {MAX_VIEWS} "
                         f"are allowed — lower the overlap or widen the FOV.")
    return views


# ---- JSON -------------------------------------------------------------------------------------


def plan_to_json(views: list[View]) -> str:
    """A JSON list of {"yaw", "pitch", "fov"}, one view a line, numbers to 2 decimals."""
    def number(x: float) -> float | int:
        r = round(float(x), 2)
        return int(r) if r.is_integer() else r

    lines = [json.dumps({k: number(getattr(v, k)) for k in KEYS}) for v in views]
    return "[\n  " + ",\n  ".join(lines) + "\n]"


def read_number(entry: dict, where: str, key: str, lo: float, hi: float) -> float:
    value = entry[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"{where}.{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def plan_from_json(text: str) -> list[View]:
    """Views from `plan_to_json`'s format; ValueError says what was expected and what came."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"The view plan must be JSON (a list of {{\"yaw\", \"pitch\", \"fov\"}}): {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"The view plan must be a JSON list of views, got {type(data).__name__}")
    if not 1 <= len(data) <= MAX_VIEWS:
        raise ValueError(f"The view plan must have 1 to {MAX_VIEWS} views, got {len(data)}")
    views = []
    for i, entry in enumerate(data):
        where = f"views[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object with yaw, pitch and fov, got {entry!r}")
        unknown = sorted(set(entry) - set(KEYS))
        missing = [k for k in KEYS if k not in entry]
        if unknown or missing:
            problem = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
            raise ValueError(f"{where} has {problem}; expected exactly yaw, pitch and fov")
        # Any yaw in [-360, 360] (users write 270 as often as -90), kept in [-180, 180)
        yaw = read_number(entry, where, "yaw", -360, 360)
        views.append(View(yaw=(yaw + 180.0) % 360.0 - 180.0,
                          pitch=read_number(entry, where, "pitch", -90, 90),
                          fov=read_number(entry, where, "fov", MIN_FOV, MAX_FOV)))
    return views


# ---- Checking ---------------------------------------------------------------------------------


def largest_gap(uncovered: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the middle (the pixel farthest from its edge) of the largest
    uncovered region of an equirect mask; regions cut by the 0°/360° seam count as one."""
    import cv2

    count, labels = cv2.connectedComponents(uncovered.astype(np.uint8), connectivity=8)
    root = list(range(count))

    def find(a: int) -> int:
        while root[a] != a:
            a = root[a]
        return a

    for a, b in zip(labels[:, 0], labels[:, -1], strict=True):  # columns 0 and W-1 touch on the sphere
        if a and b:
            root[find(a)] = find(b)
    merged = np.array([find(a) for a in range(count)])[labels]
    area = np.bincount(merged.ravel(), weights.ravel(), minlength=count)
    area[0] = 0  # label 0 is the covered background
    region = (merged == np.argmax(area)).astype(np.uint8)
    width = region.shape[1]
    padded = np.concatenate([region, region, region], axis=1)  # so the distance wraps at the seam
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[:, width:2 * width]
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return math.degrees(lon_of(x, width)), math.degrees(lat_of(y, region.shape[0]))


def check_plan(views: list[View], height: int, width: int) -> PlanReport:
    """Measure a plan for an H x W panorama; ValueError if a FOV is out of range, a view after
    the first overlaps what is painted before it by less than MIN_OVERLAP, or the views leave a gap.
    Coverage is checked on an equirect grid of at most COVERAGE_GRID (the canvas size does not matter)."""
    # 1. Check inputs
    if not views:
        raise ValueError("The view plan has no views; expected at least one.")
    for i, view in enumerate(views):
        if not MIN_FOV <= view.fov <= MAX_FOV:
            raise ValueError(f"views[{i}].fov must be in [{MIN_FOV:g}, {MAX_FOV:g}] degrees, got {view.fov:g}")
    # 2. Each view's context: the share of its image painted before it
    shares = [painted_share(view, views[:k]) for k, view in enumerate(views)]
    for i, share in enumerate(shares[1:], start=1):
        if share < MIN_OVERLAP:
            raise ValueError(f"views[{i}] overlaps what is painted before it by {math.floor(100 * share)} %; at least "
                             f"{100 * MIN_OVERLAP:g} % is needed to inpaint the seam — use more views or a wider FOV")
    # 3. Coverage of the sphere, weighted by solid angle
    sphere = Sphere(min(height, COVERAGE_GRID[0]), min(width, COVERAGE_GRID[1])).add(views)
    gap = sphere.gap()
    if gap > GAP_TOLERANCE:
        yaw, pitch = largest_gap(~sphere.covered, sphere.weights)
        raise ValueError(f"The views leave {100 * gap:.2f} % of the sphere unpainted; the largest gap is around "
                         f"yaw {yaw:.0f}°, pitch {pitch:.0f}° — add views there or use a wider FOV")
    return PlanReport(new_share=tuple(1 - s for s in shares), overlap_share=tuple(shares),
                      covered_share=1 - gap, min_overlap=min(shares[1:], default=1.0))
