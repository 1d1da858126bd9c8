"""Masks for inpainting and outpainting: reading, growing, feathering, cropping, pasting back.

Studio's guarantee: every pixel outside the feathered mask is the input's pixel, bit for bit. The
VAE round trip changes every pixel, so the generated image is composited over the original with
alpha = feather(mask); alphas under 1/512, too small to change an 8-bit value, are exactly 0.

Rules:
- Uploaded mask: with a not fully opaque alpha channel, painted = alpha ≥ 128 (a brush layer is
  transparent except where painted); otherwise ITU-R 601 luma ≥ 128 (white = repaint).
- Grow/shrink: dilation/erosion by the disk x² + y² ≤ r².
- Feather: A1111's "mask blur", a Gaussian with σ = blur px over 2·⌈3σ⌉ + 1 taps.
- "fill" masked content: OpenCV's Telea inpainting (Telea 2004, fast marching), radius 5 px.
- Outpaint: edge replication, then a Gaussian blur (σ = 32 px) of the new area only.
Arrays are numpy: masks bool (H, W), alphas float32 (H, W), images uint8 (H, W, 3) RGB.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from studio.images import ALPHA_MODES, KEYED_MODES, to_rgb

MASKED_CONTENT = ("original", "fill", "latent noise")
THRESHOLD = 128  # a mask value ≥ 128 (alpha or grey) is painted: the upper half of 0..255
ASPECT_TOLERANCE = 0.01  # a resized mask may differ in aspect by 1 % (rounding of either side)
# An 8-bit blend round(o + (g − o)·α) equals o when |g − o|·α < 0.5, which holds for every o, g
# when α < 1/512 (255/512 < 0.5); symmetrically it equals g when α > 1 − 1/512. Snapping those
# alphas to 0 and 1 loses nothing visible and makes "alpha == 0" mark the untouched pixels.
ALPHA_EPS = 1 / 512
FILL_RADIUS = 5  # px around each masked pixel that Telea's method averages
MAX_OUTPAINT = 2048  # px added on one side at most
OUTPAINT_BLUR = 32  # σ in px: hides the streaks of edge replication, keeps the average colours
GREY = 127  # mid-grey of 0..255, the VAE's "no information" value


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool (H, W) -> bool (h, w) for size (w, h), nearest neighbour so it stays binary."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(tuple(size), Image.Resampling.NEAREST)) >= THRESHOLD


def _alpha(image: Image.Image) -> np.ndarray | None:
    """The alpha channel uint8 (H, W), or None when the image has none."""
    if image.mode in ALPHA_MODES:
        return np.asarray(image.getchannel("A"))
    if image.mode in KEYED_MODES and "transparency" in image.info:  # one colour is transparent
        return np.asarray(image.convert("RGBA").getchannel("A"))
    return None


def mask_from_upload(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """bool (h, w) for size (w, h) from an uploaded mask image, by the module's rule; a mask of
    another size is resized (nearest) if its aspect is within 1 %, else refused."""
    width, height = size
    mw, mh = mask.size
    if abs((mw / mh) / (width / height) - 1) > ASPECT_TOLERANCE:
        raise ValueError(f"Mask (mask) must have the image's aspect ratio (within 1 %), "
                         f"got {mw}x{mh} for a {width}x{height} image")
    alpha = _alpha(mask)
    if alpha is not None and alpha.min() < 255:
        painted = alpha >= THRESHOLD
    else:  # to_rgb scales 16-bit and float greys; "L" is 601 luma: 0.299 R + 0.587 G + 0.114 B
        painted = np.asarray(to_rgb(mask).convert("L")) >= THRESHOLD
    return _resize_mask(painted, size)


def mask_from_editor(value: dict | None, size: tuple[int, int]) -> np.ndarray | None:
    """bool (h, w) for size (w, h): the union of painted (alpha ≥ 128) pixels over the layers of a
    gr.ImageEditor value (type="pil"); None when there are no layers or nothing is painted."""
    mask = np.zeros((size[1], size[0]), bool)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        alpha = _alpha(layer)
        if alpha is None:  # an opaque layer would silently mean "repaint everything"
            raise ValueError(f"Mask (mask) layers must have an alpha channel, got mode {layer.mode}")
        mask |= _resize_mask(alpha >= THRESHOLD, size)
    return mask if mask.any() else None


def _disk(radius: int) -> np.ndarray:
    """uint8 (2r+1, 2r+1): 1 where x² + y² ≤ r². OpenCV's MORPH_ELLIPSE is squarer at small r
    (at r = 2 it holds (2, 1), √5 px from the centre)."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """bool (H, W): dilated by a disk of radius `pixels`, or eroded by one of radius −pixels.
    OpenCV's default border ignores outside pixels, so a mask touching an edge stays there."""
    if pixels == 0:
        return mask.copy()
    morph = cv2.dilate if pixels > 0 else cv2.erode
    return morph(mask.astype(np.uint8), _disk(abs(pixels))).astype(bool)


def feather(mask: np.ndarray, blur: int) -> np.ndarray:
    """float32 (H, W) in [0, 1]: A1111's mask blur, a Gaussian with σ = blur px; exactly 0 (and 1)
    where the 8-bit blend could not differ from the original (generated), see ALPHA_EPS."""
    if blur < 0:
        raise ValueError(f"Mask blur (mask_blur) must be at least 0, got {blur}")
    alpha = mask.astype(np.float32)
    if blur == 0:
        return alpha
    taps = 2 * math.ceil(3 * blur) + 1  # ±3σ holds 99.7 % of the Gaussian's weight
    # The default border (reflect-101) keeps a mask that touches an edge at 1 there.
    alpha = cv2.GaussianBlur(alpha, (taps, taps), sigmaX=blur, sigmaY=blur)
    alpha[alpha < ALPHA_EPS] = 0.0
    alpha[alpha > 1 - ALPHA_EPS] = 1.0
    return alpha


def _grow_span(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """[lo, hi) widened to `length` (≤ limit) around its centre, shifted to lie in [0, limit)."""
    start = round((lo + hi - length) / 2)
    start = min(max(start, 0), limit - length)
    return start, start + length


def mask_box(mask: np.ndarray, padding: int,
             aspect: float | None = None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right/bottom exclusive: A1111's "only masked" window, the mask's
    bounding box plus `padding` px per side within the image, grown (never shrunk) to `aspect`
    (w / h) around its centre when given, shifted inside, and clipped if the image is too small."""
    if padding < 0:
        raise ValueError(f"Mask padding (mask_padding) must be at least 0, got {padding}")
    if aspect is not None and not aspect > 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("Mask (mask) is empty: paint the area to repaint")
    height, width = mask.shape
    left, right = max(cols[0] - padding, 0), min(cols[-1] + 1 + padding, width)
    top, bottom = max(rows[0] - padding, 0), min(rows[-1] + 1 + padding, height)
    if aspect is not None:
        w, h = right - left, bottom - top
        if w / h < aspect:  # too narrow: widen
            left, right = _grow_span(left, right, min(max(w, round(h * aspect)), width), width)
        else:  # too flat: heighten
            top, bottom = _grow_span(top, bottom, min(max(h, round(w / aspect)), height), height)
    return int(left), int(top), int(right), int(bottom)


def fill_masked(image: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """uint8 (H, W, 3): A1111's "masked content" before inpainting, one of MASKED_CONTENT.
    "original": the image as it is (a copy). "fill": masked pixels by Telea inpainting from the
    surrounding colours, so the model does not see the old content (a full mask: the image's mean
    colour). "latent noise": masked pixels mid-grey (127, about 0 in the VAE's [-1, 1] input); the
    pipeline then starts those latents from pure noise instead of the encoded image.
    Unmasked pixels are always bit-identical."""
    if mode not in MASKED_CONTENT:
        raise ValueError(f"Masked content (masked_content) must be one of {list(MASKED_CONTENT)}, "
                         f"got {mode!r}")
    if mode == "original":
        return image.copy()
    if mode == "fill" and mask.all():  # no surroundings to spread (Telea would keep the image)
        filled = np.full_like(image, image.mean(axis=(0, 1)).round())
    elif mode == "fill":
        filled = cv2.inpaint(image, mask.astype(np.uint8), FILL_RADIUS, cv2.INPAINT_TELEA)
    else:
        filled = np.full_like(image, GREY)
    return np.where(mask[..., None], filled, image)


def _check_outpaint(sides: tuple[int, ...]) -> None:
    if not all(0 <= side <= MAX_OUTPAINT for side in sides) or not any(sides):
        raise ValueError(f"Outpaint (left, right, top, bottom) must each be in [0, {MAX_OUTPAINT}] "
                         f"and add at least one pixel, got {', '.join(map(str, sides))}")


def outpaint_canvas(image: Image.Image, left: int, right: int, top: int,
                    bottom: int) -> tuple[Image.Image, np.ndarray]:
    """(canvas RGB, mask bool (H', W')): `image` at (left, top, left + w, top + h) of a canvas
    extended by those pixels, the new area filled by repeating the edge pixels and blurred (σ =
    OUTPAINT_BLUR) so the model starts from plausible colours; the mask is the new area only."""
    _check_outpaint((left, right, top, bottom))
    pixels = np.asarray(image.convert("RGB"))  # (h, w, 3)
    canvas = cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_REPLICATE)
    mask = np.ones(canvas.shape[:2], bool)  # (H', W')
    mask[top:top + pixels.shape[0], left:left + pixels.shape[1]] = False
    blurred = cv2.GaussianBlur(canvas, (0, 0), sigmaX=OUTPAINT_BLUR)  # taps from σ by OpenCV
    canvas = np.where(mask[..., None], blurred, canvas)
    return Image.fromarray(canvas), mask


def composite(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): round(original·(1 − α) + generated·α), half to even; the original bit for
    bit where α == 0 and the generated image where α == 1 (explicitly, not by float luck)."""
    if not original.shape == generated.shape == alpha.shape + (3,):
        raise ValueError(f"composite needs images (H, W, 3) and alpha (H, W) of one size, got "
                         f"{original.shape}, {generated.shape} and {alpha.shape}")
    a = alpha[..., None]  # (H, W, 1), broadcast over channels
    blend = np.rint(original * (1 - a) + generated * a).clip(0, 255).astype(np.uint8)
    return np.where(a == 0, original, np.where(a == 1, generated, blend))


def paste_window(original: Image.Image, window_image: Image.Image, box: tuple[int, int, int, int],
                 alpha_full: np.ndarray) -> Image.Image:
    """`original` with `window_image`, resized (Lanczos) to `box` (left, top, right, bottom),
    composited inside the box by alpha_full (H, W) restricted to it; outside the box, untouched."""
    left, top, right, bottom = box
    pixels = np.array(original.convert("RGB"))  # (H, W, 3), a writable copy
    if alpha_full.shape != pixels.shape[:2] or not (0 <= left < right <= pixels.shape[1]
                                                    and 0 <= top < bottom <= pixels.shape[0]):
        raise ValueError(f"paste_window needs alpha of the image's size {pixels.shape[:2]} and a "
                         f"box inside it, got {alpha_full.shape} and {box}")
    window = window_image.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    pixels[top:bottom, left:right] = composite(pixels[top:bottom, left:right], np.asarray(window),
                                               alpha_full[top:bottom, left:right])
    return Image.fromarray(pixels)


def mask_coverage(mask: np.ndarray) -> float:
    """Fraction of masked pixels, in [0, 1]."""
    return float(np.count_nonzero(mask)) / mask.size


def check_mask(mask: np.ndarray) -> str:
    """"empty" (callers say so and generate nothing), "full" (callers run image-to-image) or
    "partial"."""
    if not mask.any():
        return "empty"
    return "full" if mask.all() else "partial"
