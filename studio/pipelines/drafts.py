"""Fast drafts: which few-step model stands in for a model, and the small request a preview runs.

Distilled generators (SDXL-Turbo, SDXL-Lightning, LCM-LoRA, Hyper-SD; the one-step generators of
EM Distillation, Xie et al. 2024) trade a little quality for 1-8 steps. A registry entry names its
`draft`; LoRA-based drafts load as adapters on the same base, so a preview costs no second model.
"""

from __future__ import annotations

import math

from studio.models.registry import Registry
from studio.pipelines.txt2img import Txt2ImgRequest

PREVIEW_LONG_SIDE = 512  # drafts are small: a quarter of SDXL's pixels, and fast
PREVIEW_SEED = 0  # a random seed would make every preview flicker; a fixed one shows the edit


def draft_partner(registry: Registry, name: str) -> str | None:
    """The model the draft-mode toggle switches to: `name`'s draft, or back to the model whose
    draft `name` is; None when there is neither."""
    entry = registry.get(name)
    if entry.draft is not None:
        return entry.draft
    quality = [m.name for m in registry.models if m.draft == name]
    return quality[0] if quality else None


def draft_request(request: Txt2ImgRequest, registry: Registry) -> Txt2ImgRequest:
    """`request` as a quick preview: the draft model with its own steps, guidance and sampler, one
    image at most PREVIEW_LONG_SIDE pixels on its long side, same prompt, style and camera."""
    entry = registry.get(request.model)
    draft = registry.get(entry.draft or entry.name)
    lo, hi = draft.size_range
    scale = min(1.0, PREVIEW_LONG_SIDE / max(request.width, request.height))

    def side(v: int) -> int:
        return min(hi, max(lo, 8 * max(1, math.floor(v * scale / 8))))

    d = draft.defaults
    return request.replace(
        model=draft.name, width=side(request.width), height=side(request.height),
        num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale, scheduler=d.scheduler,
        batch_size=1, seed=PREVIEW_SEED if request.seed == -1 else request.seed,
    )
