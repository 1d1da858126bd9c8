"""Aspect-ratio buckets: width x height near a family's native area, in multiples of 64.

SDXL was trained on ~1 MP buckets (1024x1024, 1344x768, 1216x832, ...; SDXL paper, appendix),
SD1.5 on 512x512. For ratio r and area A the ideal size is w = sqrt(A*r), h = sqrt(A/r); among
the sizes on the 64-pixel grid we pick the one closest to it in both aspect and area
(cost = |log(w/h / r)| + |log(w*h / A)|) without exceeding A, which reproduces SDXL's
published buckets.
"""

from __future__ import annotations

import math

RATIOS = ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21"]


def bucket_size(ratio: str, area: int, multiple: int = 64) -> tuple[int, int]:
    """(width, height) for `ratio` ("16:9") with about `area` pixels."""
    try:
        a, b = (float(x) for x in ratio.split(":"))
        if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
            raise ValueError
    except ValueError:
        raise ValueError(f"ratio must look like '16:9' with positive numbers, got {ratio!r}") from None
    if a < b:  # portrait buckets are the landscape ones turned on their side
        h, w = bucket_size(f"{b}:{a}", area, multiple)
        return w, h
    r = a / b

    def cost(wh: tuple[int, int]) -> float:
        w, h = wh
        return abs(math.log(w / h / r)) + abs(math.log(w * h / area))

    # Grid sizes around the ideal height, no larger than the native area (as SDXL's buckets).
    ideal_h = math.sqrt(area / r) / multiple
    candidates = [
        (w_units * multiple, h_units * multiple)
        for h_units in range(max(1, math.floor(ideal_h) - 1), math.ceil(ideal_h) + 2)
        for w_units in {max(1, math.floor(h_units * r)), math.ceil(h_units * r)}
        if w_units * h_units * multiple**2 <= area
    ]
    return min(candidates or [(multiple, multiple)], key=cost)


def buckets(area: int, multiple: int = 64, min_side: int = 0) -> dict[str, tuple[int, int]]:
    """Every standard ratio's size for this area, e.g. {"16:9": (1344, 768), ...} at 1 MP.

    A model that cannot go below `min_side` pixels gets its wide buckets grown instead: the
    short side becomes `min_side` (rounded up to the grid) and the long side keeps the ratio."""
    out = {}
    for ratio in RATIOS:
        w, h = bucket_size(ratio, area, multiple)
        if min(w, h) < min_side:
            a, b = (float(x) for x in ratio.split(":"))
            short = math.ceil(min_side / multiple) * multiple
            long = max(short, round(short * max(a, b) / min(a, b) / multiple) * multiple)
            w, h = (long, short) if a >= b else (short, long)
        out[ratio] = (w, h)
    return out
