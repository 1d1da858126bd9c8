"""Aspect-ratio buckets: width x height near a family's native area, in multiples of 64.

SDXL was trained on ~1 MP buckets (1024x1024, 1344x768, ...; SDXL paper, appendix), SD1.5 on
512x512. For ratio r = w/h and area A: w = sqrt(A*r), h = sqrt(A/r), each rounded to 64.
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
    r = a / b
    w = max(multiple, round(math.sqrt(area * r) / multiple) * multiple)
    h = max(multiple, round(math.sqrt(area / r) / multiple) * multiple)
    return w, h


def buckets(area: int, multiple: int = 64) -> dict[str, tuple[int, int]]:
    """Every standard ratio's size for this area, e.g. {"16:9": (1344, 768), ...} at 1 MP."""
    return {r: bucket_size(r, area, multiple) for r in RATIOS}
