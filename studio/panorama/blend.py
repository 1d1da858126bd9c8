"""Colour matching between views and seam/pole measures of an equirectangular panorama.

Each view is inpainted on its own, and a diffusion model drifts in exposure and white balance from
one run to the next, so a new view takes the colour statistics of what it overlaps before it is
pasted. The measures check the two places a sequentially painted panorama tends to break: the
0°/360° seam and the poles.
"""

from __future__ import annotations

import numpy as np

MIN_KNOWN = 0.01  # below 1 % of the view known, the overlap's statistics are noise: leave the view as it is
GAIN_RANGE = (0.5, 2.0)  # a view's contrast may at most halve or double, so one odd overlap cannot blow it up


def match_colour(generated: np.ndarray, reference: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Reinhard et al. (2001), "Color Transfer between Images": per channel of a decorrelated colour
    space, shift and scale `generated` so its mean and standard deviation over the `known` pixels
    are `reference`'s there; the transfer is applied to the whole of `generated`.

    (H, W, 3) uint8 RGB in and out, `known` (H, W) bool. CIELab stands in for the paper's lαβ (both
    separate lightness from two opponent colour axes; Lab is built into OpenCV)."""
    import cv2

    if generated.shape != reference.shape or generated.ndim != 3 or generated.shape[2] != 3:
        raise ValueError(f"`generated` and `reference` have to be (H, W, 3) RGB of one shape but are "
                         f"{generated.shape} and {reference.shape}.")
    if known.shape != generated.shape[:2]:
        raise ValueError(f"`known` has to be (H, W) = {generated.shape[:2]} but is {known.shape}.")
    if known.mean() < MIN_KNOWN:
        return generated.copy()
    # cv2 takes float32 RGB in [0, 1] to L in [0, 100], a and b in about [-127, 127]
    gen = cv2.cvtColor(generated.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    ref = cv2.cvtColor(reference.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    g, r = gen[known], ref[known]  # (n, 3)
    gain = np.clip(r.std(axis=0) / np.maximum(g.std(axis=0), 1e-6), *GAIN_RANGE)
    lab = (gen - g.mean(axis=0)) * gain + r.mean(axis=0)
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)  # may leave the gamut: clipped below
    return (rgb * 255).round().clip(0, 255).astype(np.uint8)


def as_channels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W, C) float64."""
    image = np.asarray(image, dtype=np.float64)
    return image[..., None] if image.ndim == 2 else image


def wrap_ratio(equirect: np.ndarray) -> float:
    """How much the 0°/360° seam stands out: mean |column 0 − last column| over the median, across
    columns, of the mean |difference of adjacent columns|. About 1 when there is no seam."""
    image = as_channels(equirect)
    seam = float(np.abs(image[:, 0] - image[:, -1]).mean())
    typical = float(np.median(np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))))  # median over the W − 1 pairs
    if typical == 0:
        return 1.0 if seam == 0 else float("inf")
    return seam / typical


def pole_spread(equirect: np.ndarray, rows: int = 1) -> tuple[float, float]:
    """(top, bottom): the standard deviation of the top and of the bottom `rows` rows, per channel,
    averaged over channels. Every pixel of the top row looks at (almost) the same point, so a clean
    pole has a spread near 0; a pole pinched from different views' edges does not."""
    image = as_channels(equirect)
    channels = image.shape[2]
    top = image[:rows].reshape(-1, channels).std(axis=0).mean()
    bottom = image[-rows:].reshape(-1, channels).std(axis=0).mean()
    return float(top), float(bottom)
