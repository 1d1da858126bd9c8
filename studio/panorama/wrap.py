"""Horizontal wrap for whole-canvas passes over an equirectangular image (the refine pass).

Column W−1 and column 0 of an equirectangular image are neighbours on the sphere, but a sampler
or a VAE sees them at opposite borders. Padding each side with the columns from the other side
puts the seam inside the padded canvas (twice), so patches cross it; `unwrap` then cross-fades
the last `pad` columns into the left padding's copy of them, which was painted next to column 0,
so the two ends meet. Arrays are (H, W, C).
"""

from __future__ import annotations

import numpy as np


def wrap_pad(image: np.ndarray, pad: int) -> np.ndarray:
    """(H, W, C) -> (H, W + 2·pad, C): the last `pad` columns before, the first `pad` after."""
    width = image.shape[1]
    if not 0 < pad <= width // 2:
        raise ValueError(f"`pad` has to be in [1, {width // 2}] (half the width) but is {pad}.")
    return np.concatenate([image[:, width - pad:], image, image[:, :pad]], axis=1)


def unwrap(padded: np.ndarray, pad: int) -> np.ndarray:
    """(H, W + 2·pad, C) -> (H, W, C), continuous across the 0°/360° seam.

    Columns W−pad … W−1 fade linearly from the middle copy (continuous with column W−pad−1) to the
    left padding's copy (painted next to column 0), so no column pair has a cut."""
    width = padded.shape[1] - 2 * pad
    out = padded[:, pad:pad + width].astype(np.float32)
    # (1, pad, 1): 1/pad … 1, so column W−1 is the left copy's last column, painted beside column 0
    w = ((np.arange(pad) + 1) / pad).astype(np.float32)[None, :, None]
    out[:, width - pad:] = (1 - w) * out[:, width - pad:] + w * padded[:, :pad].astype(np.float32)
    return out.round().clip(0, 255).astype(padded.dtype) if padded.dtype == np.uint8 else out
