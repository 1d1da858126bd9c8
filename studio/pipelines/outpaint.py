"""Outpainting: extend the canvas on chosen sides and paint the new area to match.

The new area starts from the image's edges, smeared and blurred (studio/masks.outpaint_canvas),
is masked, and is repainted by the inpainting path (studio/pipelines/inpaint.py). The feathered
seam lies in the new area only, so the original image stays exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from studio.fields import redefault
from studio.groups import Extend, Loras, Model, Prompt, Repaint, Sampler, Style
from studio.results import Result, StepCallback


@dataclass(frozen=True, kw_only=True)
class OutpaintRequest(Loras, Style, Model, Sampler, Prompt, Repaint, Extend):
    TASK: ClassVar[str] = "outpaint"
    NEEDS: ClassVar[str] = "inpaint"
    # The new area has nothing to keep: by default it is painted from pure noise.
    strength: float = redefault(Repaint, "strength", 1.0)

    @property
    def steps_run(self) -> int:
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


def run(request: OutpaintRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Extend `request.image` by the requested pixels on each side."""
    from studio import masks
    from studio.images import MAX_INPUT_PIXELS
    from studio.pipelines.inpaint import Plan, repaint

    request.validate(models.registry)
    image = request.image.convert("RGB")
    width = image.width + request.left + request.right
    height = image.height + request.top + request.bottom
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"Outpaint (left, right, top, bottom) would make a {width}×{height} image; Studio makes "
                         f"at most {MAX_INPUT_PIXELS / 1e6:,.0f} megapixels")
    # 1. The larger canvas, its new area masked
    canvas, mask = masks.outpaint_canvas(image, request.left, request.right, request.top, request.bottom)
    # 2. Feathered into the new area only: the original region keeps alpha 0, so its pixels stay
    alpha = masks.feather(mask, request.mask_blur) * mask
    plan = Plan(canvas, mask, alpha, (0, 0, width, height), "original", "outpaint")
    return repaint(request, models, on_step, plan)
