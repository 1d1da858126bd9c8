"""Opening user images safely, turning them into RGB, and fitting them to an output size.

Opening. `open_image` reads the size from the header (PIL's `Image.open` is lazy) and refuses
images over `max_pixels` before any pixel is decoded, so a small file that claims to be huge (a
decompression bomb) costs no memory. Empty, truncated, damaged and non-image files are refused
with a ValueError saying which; animated images (GIF, APNG, WebP) give their first frame. The
EXIF orientation tag is applied, so phone photos come out upright.

RGB rules (`to_rgb`), applied to the decoded image:
- RGB stays as it is.
- Transparency (RGBA, LA, PA, or P/L/RGB with a transparent colour) is composited over WHITE:
  out = a·colour + (1 − a)·255 with a = alpha / 255. White, not black, because that is what a
  browser shows behind a transparent PNG, and a model reads black as content.
- P (palette), L (grey) and 1 (bilevel) become RGB by repeating grey or looking up the palette.
- CMYK becomes RGB by PIL's conversion (R = 255 − C − K, clipped, ...; no colour profile).
- 16-bit grey ("I;16", "I;16B", "I;16L", and "I", which PIL uses for 16-bit PNGs) is scaled to
  8 bits by value / 257 (65535 / 257 = 255 exactly), rounded. PIL's own convert("L") clips
  instead, so every value above 255 would become white.
- "F" (32-bit float grey) is clipped to [0, 255] and rounded: there is no standard range to
  scale from, and 8-bit-like values are the common case.
- Any other mode (YCbCr, LAB, HSV, ...) goes through PIL's convert("RGB").

Resizing (`resize_image`) follows A1111's three modes, all with Lanczos filtering:
- "just resize": stretch to width × height (the aspect may change).
- "crop and resize": scale to cover width × height, then cut the centre (edges are lost).
- "resize and fill": scale to fit inside width × height, centre it, and fill the empty bands by
  repeating the image's edge pixels outward (nothing is lost; bands are smeared edges).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 8192² ≈ 67 MP: twice the side of SDXL's largest useful input and above any phone camera
# (a 48 MP sensor is 8000 × 6000), yet decoding it to RGB takes ~200 MB, not gigabytes.
MAX_INPUT_PIXELS = 8192 * 8192
READABLE = "PNG, JPEG, WebP, GIF, BMP, TIFF"
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
GREY_16_BIT = ("I;16", "I;16B", "I;16L", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
KEYED_MODES = ("P", "L", "RGB", "1")  # modes whose transparency is one colour (info["transparency"])
# What PIL raises while decoding a file that ends early or has broken data.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)


def _megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:,.0f} megapixels"


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (f"the image is {width}×{height} = {_megapixels(width * height)}; "
            f"Studio accepts at most {_megapixels(max_pixels)}")


def open_mask(source: str | Path | bytes, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Like open_image, but the mode is kept (RGBA, LA, L, ...): a mask's transparency says where
    it was painted (studio/masks.mask_from_upload), so it must not be composited over white."""
    if isinstance(source, (bytes, bytearray)):
        return _decode(io.BytesIO(source), max_pixels, convert=False)
    with open(source, "rb") as file:
        return _decode(file, max_pixels, convert=False)


def open_image(source: str | Path | bytes, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """A fully loaded, upright RGB image from a path or the file's bytes (first frame if animated).

    Raises ValueError for an empty, truncated, damaged, non-image or too large (> max_pixels)
    file; a path that cannot be opened raises its own OSError (FileNotFoundError, ...).
    A `max_pixels` above PIL's own limit (Image.MAX_IMAGE_PIXELS, 89 MP) still gets PIL's
    DecompressionBombWarning between that and twice that, and our ValueError beyond.
    """
    if isinstance(source, (bytes, bytearray)):
        return _decode(io.BytesIO(source), max_pixels)
    with open(source, "rb") as file:
        return _decode(file, max_pixels)


def _decode(file: IO[bytes], max_pixels: int, convert: bool = True) -> Image.Image:
    """open_image on an open binary file; the result no longer refers to the file."""
    if not file.read(1):
        raise ValueError("the image file is empty")
    try:
        # Lazy: only the header is read here. PIL refuses sizes over 2 × Image.MAX_IMAGE_PIXELS
        # (179 MP) itself, before we see the size; we report that in our own words.
        image = Image.open(file)
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ValueError(f"the image is over {_megapixels(limit)} (PIL refuses it as a decompression "
                         f"bomb); Studio accepts at most {_megapixels(max_pixels)}") from None
    except UnidentifiedImageError:
        raise ValueError(f"not an image Studio can read ({READABLE}, …)") from None
    except DECODE_ERRORS as e:  # a known format whose header is cut short or broken
        raise ValueError(f"the image file is truncated or damaged ({e})") from None
    width, height = image.size
    if width * height > max_pixels:  # checked before load(): nothing decoded yet
        raise ValueError(_too_large(width, height, max_pixels))
    try:
        image.load()  # the first frame of an animation
        upright = ImageOps.exif_transpose(image)  # a copy, detached from the file
    except DECODE_ERRORS as e:
        raise ValueError(f"the image file is truncated or damaged ({e})") from None
    if not convert and (upright.mode in ALPHA_MODES or "transparency" in upright.info):
        return upright.convert("RGBA")
    return to_rgb(upright)


def _over_white(image: Image.Image) -> Image.Image:
    """Composite an image with alpha over white: a·colour + (1 − a)·255."""
    rgba = image.convert("RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))
    return white


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB by the rules in the module docstring."""
    mode = image.mode
    if mode in ALPHA_MODES or (mode in KEYED_MODES and "transparency" in image.info):
        return _over_white(image)
    if mode in GREY_16_BIT:
        grey = np.asarray(image).astype(np.float64) / 257  # 0..65535 -> 0..255
        return _grey_to_rgb(grey)
    if mode == "F":
        return _grey_to_rgb(np.asarray(image, dtype=np.float64))
    return image.convert("RGB")  # a copy even when already RGB


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """Float grey values, clipped to [0, 255] and rounded, as an RGB image."""
    grey8 = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(grey8, mode="L").convert("RGB")


def resize_image(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """`image` (RGB, RGBA or L, as open_image gives) at exactly width × height by one of
    RESIZE_MODES (see the module docstring)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if not (width >= 1 and height >= 1):
        raise ValueError(f"width and height must be at least 1, got {width} and {height}")
    if mode == "just resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "crop and resize":
        # Cuts the centre to the target aspect, then resizes (same result as scale-then-crop).
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    return _resize_and_fill(image, width, height)


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside width × height, centred; the bands repeat the nearest edge pixel."""
    scale = min(width / image.width, height / image.height)
    fit_w = min(width, max(1, round(image.width * scale)))
    fit_h = min(height, max(1, round(image.height * scale)))
    fitted = np.asarray(image.resize((fit_w, fit_h), Image.Resampling.LANCZOS))
    left, top = (width - fit_w) // 2, (height - fit_h) // 2
    pad = [(top, height - fit_h - top), (left, width - fit_w - left)] + [(0, 0)] * (fitted.ndim - 2)
    return Image.fromarray(np.pad(fitted, pad, mode="edge"))


def fit_size(image_size: tuple[int, int], area: int, multiple: int = 8, *, min_side: int,
             max_side: int) -> tuple[int, int]:
    """(width, height) with `image_size`'s aspect and about `area` pixels, each side a multiple
    of `multiple` in [min_side, max_side]: a small area grows until the short side is min_side, a
    long side shrinks to max_side (very long or tall images lose some aspect there)."""
    iw, ih = image_size
    if not (iw >= 1 and ih >= 1 and area >= 1):
        raise ValueError(f"image size and area must be positive, got {image_size} and {area}")
    lo = math.ceil(min_side / multiple) * multiple
    hi = math.floor(max_side / multiple) * multiple
    if not lo <= hi:
        raise ValueError(f"no multiple of {multiple} lies in [{min_side}, {max_side}]")
    ratio = iw / ih
    w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)  # w/h = ratio, w·h = area
    grow = max(1.0, min_side / min(w, h))  # keep the aspect while the short side is too short
    shrink = min(1.0, max_side / (max(w, h) * grow))  # ... and then while the long side is too long

    def side(v: float) -> int:
        return min(hi, max(lo, round(v * grow * shrink / multiple) * multiple))

    return side(w), side(h)
