"""The panorama task's fields: the canvas, the view plan, the refine pass and the HDR step.

The method is Edify Image's (NVIDIA 2024, §4.4): a 360° panorama is made by inpainting perspective
views one after another into an equirectangular canvas, then converted from LDR to HDR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.fields import Request, field, redefault
from studio.groups import Repaint, Sampler

EXPOSURE_RANGE = (-16.0, 8.0)  # EV of the preview images: Edify shows 0, −2, −5, −9


def parse_exposures(text: str) -> list[float]:
    """'0, -2, -5' -> [0.0, -2.0, -5.0]; raise ValueError naming the field on anything else."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    lo, hi = EXPOSURE_RANGE
    if not values or len(values) > 8 or not all(lo <= v <= hi for v in values):
        raise ValueError(f"Preview exposures (exposures) must be 1 to 8 numbers in [{lo:g}, {hi:g}] separated by "
                         f"commas (EV, e.g. '0, -2, -5, -9'), got {text!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class PanoramaSampler(Request):
    """The sampler fields of text-to-image (declared there); one image per view."""

    num_inference_steps: int = redefault(Sampler, "num_inference_steps", 30)
    guidance_scale: float = redefault(Sampler, "guidance_scale", 6.0)
    seed: int = redefault(Sampler, "seed", -1)
    scheduler: str = redefault(Sampler, "scheduler", "DPM++ 2M Karras")


@dataclass(frozen=True, kw_only=True)
class Panorama(Request):
    width: int = field(2048, "Canvas width", "int", lo=512, hi=8192, multiple_of=16, step=16,
                       help="Width of the equirectangular panorama; its height is half (2:1 covers 360° × 180°).")
    views: str = field("", "Views (plan JSON)", "text", hi=20000,
                       help="Empty: the plan made from the FOV and overlap below. Or a JSON list of "
                            '{"yaw", "pitch", "fov"} in degrees, painted in that order (the first by text-to-image).')
    fov: float = field(90.0, "View FOV", "float", lo=45, hi=120, step=5,
                       help="Field of view of each perspective view (degrees). 90° suits SD models; wider views "
                            "mean fewer of them but more stretched edges.")
    overlap: float = field(0.5, "Overlap", "float", lo=0.25, hi=0.9, step=0.05,
                           help="Share of each view already painted by its neighbours: the context inpainting "
                                "continues from (at least 25 %, or the seam has too little to continue). The last "
                                "horizon view overlaps the first, so 0°/360° is painted over.")
    inpaint_model: str = redefault(Repaint, "inpaint_model", "")
    mask_blur: int = redefault(Repaint, "mask_blur", 8, help="Feathers each new view into the canvas "
                               "(Gaussian sigma in view pixels); painted pixels outside the feather stay as they are.")
    refine_strength: float = field(0.0, "Refine strength", "float", lo=0, hi=0.6, step=0.05,
                                   help="0: off. Otherwise a low-strength pass over the whole canvas, patch by patch, "
                                        "with patches that wrap across the 0°/360° seam (evens out view borders).")
    max_stops: float = field(10.0, "Highlight expansion (stops)", "float", lo=0, hi=16, step=0.5,
                             help="Inverse tone mapping: how many stops above diffuse white the brightest pixels "
                                  "(the sun, lamps) reach in the HDR. 0 keeps the LDR range.")
    bracket: bool = field(False, "Bracket the brightest view", "bool",
                          help="Repaint the brightest view at −3 and −6 EV and merge the brackets (Debevec) into "
                               "the HDR, so highlights get real detail, not only expansion. Two more diffusion runs.")
    exposures: str = field("0, -2, -5, -9", "Preview exposures (EV)", "text", hi=100,
                           help="LDR previews of the HDR written at these exposures (Edify shows 0, −2, −5, −9).")
    video: bool = field(True, "360° pan video", "bool", help="Also write an 8-second MP4 that pans once around.")

    @property
    def height(self) -> int:
        return self.width // 2

    def check(self, registry: Any, entry: Any) -> None:
        parse_exposures(self.exposures)
        try:
            self.view_plan()  # a bad plan (JSON, FOV, overlap, gaps) is refused before anything loads
        except ValueError as exc:  # say which field: the caller's own plan, or the one FOV and overlap made
            raise ValueError(f"Views (views): {exc}" if self.views.strip() else str(exc)) from None

    def view_plan(self) -> list[Any]:
        """The views in painting order: the user's JSON, or the plan made from FOV and overlap;
        checked for FOV, overlap and gaps in the sphere's coverage."""
        from studio.panorama.plan import check_plan, plan_for, plan_from_json

        views = plan_from_json(self.views) if self.views.strip() else plan_for(self.fov, self.overlap)
        check_plan(views, self.height, self.width)
        return views
