"""Patch grids and blend weights for denoising a latent canvas larger than the UNet's native size.

Each step the canvas is covered by overlapping patches of the UNet's native latent size; their
predictions are blended with smooth separable windows, as in MultiDiffusion (Bar-Tal et al.
2023): a window that fades to ~0 towards a neighbouring patch hides the patch's border, which a
hard cut (or flat averaging) would leave as a visible seam. Every step the interior patches are
shifted by a small random amount (Pixelsmith, Tragakis et al. 2024; DemoFusion, Du et al. 2024),
so the borders move and no seam can settle over the steps. The number of patches never depends
on the shift, so the number of UNet calls per step is fixed and known before sampling.

Boxes are (top, left, bottom, right) in latent pixels, half-open.
"""

from __future__ import annotations

import math

import torch

Box = tuple[int, int, int, int]
WEIGHT_FLOOR = 1e-3  # every covered pixel keeps a weight > 0, so the blend never divides by 0


def check_patch_args(patch: int, overlap: int) -> None:
    """Raise if `patch` < 1 or `overlap` is outside [0, patch)."""
    if patch < 1:
        raise ValueError(f"`patch` has to be >= 1 but is {patch}.")
    if not 0 <= overlap < patch:
        raise ValueError(f"`overlap` has to be in [0, patch) = [0, {patch}) but is {overlap}.")


def even_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Evenly spread starts: first 0, last `length - patch`, neighbours overlapping >= `overlap`."""
    if length <= patch:
        return [0]
    # Spacing (length - patch) / (n - 1) <= patch - overlap, an integer, so rounding keeps it.
    n = math.ceil((length - patch) / (patch - overlap)) + 1
    return [round(i * (length - patch) / (n - 1)) for i in range(n)]


def axis_starts(length: int, patch: int, overlap: int, shift: int = 0) -> list[int]:
    """Patch starts along one axis; `shift` moves every interior start by the same clamped amount.

    The clamp keeps the starts strictly increasing, inside [0, length - patch], and neighbours
    overlapping by at least max(1, overlap // 2) (0 when `overlap` is 0), so the canvas stays
    covered. The first and last starts and the count never change.
    """
    check_patch_args(patch, overlap)
    if length < 1:
        raise ValueError(f"`length` has to be >= 1 but is {length}.")
    starts = even_starts(length, patch, overlap)
    if len(starts) < 3 or shift == 0:
        return starts
    min_overlap = max(1, overlap // 2) if overlap > 0 else 0
    max_gap = patch - min_overlap
    # Interior gaps are unchanged by a uniform shift; only the two outer gaps move.
    # Shift 0 always satisfies both bounds, so lo <= 0 <= hi.
    lo = max(1 - starts[1], starts[-1] - starts[-2] - max_gap)
    hi = min(max_gap - starts[1], starts[-1] - starts[-2] - 1)
    shift = min(max(shift, lo), hi)
    return [starts[0]] + [s + shift for s in starts[1:-1]] + [starts[-1]]


def patch_grid(height: int, width: int, patch: int, overlap: int,
               shift: tuple[int, int] = (0, 0)) -> list[Box]:
    """Row-major boxes covering a (height, width) canvas; `shift` is (dy, dx)."""
    rows = axis_starts(height, patch, overlap, shift[0])
    cols = axis_starts(width, patch, overlap, shift[1])
    h, w = min(patch, height), min(patch, width)
    return [(top, left, top + h, left + w) for top in rows for left in cols]


def count_patches(height: int, width: int, patch: int, overlap: int) -> int:
    """Number of patches (= UNet calls per step) on a (height, width) canvas, for any shift."""
    return len(axis_starts(height, patch, overlap)) * len(axis_starts(width, patch, overlap))


def random_shift(generator: torch.Generator | None, overlap: int) -> tuple[int, int]:
    """A per-step (dy, dx), each uniform in [-overlap // 2, overlap // 2], from a CPU generator."""
    half = overlap // 2
    dy, dx = torch.randint(-half, half + 1, (2,), generator=generator).tolist()
    return dy, dx


def ramp(overlap: int) -> torch.Tensor:
    """Raised-cosine rise over `overlap` pixels, sampled at pixel centres: (overlap,) in (0, 1)."""
    i = torch.arange(overlap, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / overlap)).float()


def window_1d(start: int, end: int, length: int, overlap: int) -> torch.Tensor:
    """(end - start,) window: rises from a side that has a neighbour, flat at the canvas edge."""
    size = end - start
    window = torch.ones(size)
    k = min(overlap, size)
    if overlap > 0 and start > 0:  # neighbour before
        window[:k] = torch.minimum(window[:k], ramp(overlap)[:k])
    if overlap > 0 and end < length:  # neighbour after
        window[size - k:] = torch.minimum(window[size - k:], ramp(overlap)[:k].flip(0))
    return window


def patch_weight(box: Box, height: int, width: int, overlap: int) -> torch.Tensor:
    """Separable blend window (h, w) float32 for `box` on a (height, width) canvas.

    1 in the middle and up to the canvas edges; a raised-cosine ramp over `overlap` pixels
    along sides that have a neighbour (MultiDiffusion-style smooth blending), floored at 1e-3.
    """
    top, left, bottom, right = box
    rows = window_1d(top, bottom, height, overlap)  # (h,)
    cols = window_1d(left, right, width, overlap)  # (w,)
    return (rows[:, None] * cols[None, :]).clamp_min(WEIGHT_FLOOR)  # (h, w)


def blend_denominator(boxes: list[Box], height: int, width: int, overlap: int) -> torch.Tensor:
    """Sum of the patch windows placed at their boxes: (height, width) float32."""
    total = torch.zeros(height, width)
    for box in boxes:
        top, left, bottom, right = box
        total[top:bottom, left:right] += patch_weight(box, height, width, overlap)
    return total
