"""LDR to HDR for 360° panoramas: inverse tone mapping, bracket merging, HDR files, previews.

Units: radiance is linear light where 1.0 is the white of the 8-bit panorama at EV 0, so diffuse
content keeps its LDR values and the sun sits many stops above 1 (Edify Image shows one panorama
at 0, -2, -5 and -9 EV). `expose(radiance, ev)` is the LDR view of it at an exposure, and
`merge_brackets` returns the same units, so a generated panorama and real brackets compare.
Files are written to a ".tmp-" file in the target folder and renamed, as in
`studio.upscale.files`, so an error never leaves half a file behind.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

REC709 = np.array([0.2126, 0.7152, 0.0722], np.float32)  # luminance weights of linear sRGB/Rec.709
HALF_MAX = 65504.0  # largest finite float16; EXR half channels overflow to Inf beyond it


# sRGB transfer curves (IEC 61966-2-1): a linear toe joined to a 2.4 power with an offset.


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Decode sRGB values in [0, 1]: x / 12.92 up to 0.04045, else ((x + 0.055) / 1.055) ** 2.4."""
    x = np.asarray(x, np.float32)
    curve = ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4  # max() keeps the unused branch finite
    return np.where(x <= 0.04045, x / 12.92, curve).astype(np.float32)


def linear_to_srgb(y: np.ndarray) -> np.ndarray:
    """Encode linear values in [0, 1]: 12.92 y up to 0.0031308, else 1.055 y ** (1 / 2.4) - 0.055."""
    y = np.asarray(y, np.float32)
    curve = 1.055 * np.maximum(y, 0.0031308) ** (1 / 2.4) - 0.055
    return np.where(y <= 0.0031308, 12.92 * y, curve).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.709 luminance Y = 0.2126 R + 0.7152 G + 0.0722 B of linear RGB, (H, W, 3) -> (H, W)."""
    return np.asarray(rgb, np.float32) @ REC709


# Checks shared by every entry point: errors say what was expected and what was received.


def _check_ldr(image: np.ndarray, name: str = "image") -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"`{name}` has to be a (H, W, 3) uint8 RGB array but is "
                         f"{image.shape} {image.dtype}.")


def _check_radiance(radiance: np.ndarray) -> None:
    if radiance.ndim != 3 or radiance.shape[2] != 3 or radiance.dtype.kind != "f":
        raise ValueError(f"`radiance` has to be a (H, W, 3) float array but is "
                         f"{radiance.shape} {radiance.dtype}.")
    bad = int(np.count_nonzero(~np.isfinite(radiance)))
    if bad:
        raise ValueError(f"`radiance` has to be finite but has {bad} NaN or Inf values.")
    low = float(radiance.min())
    if low < 0:
        raise ValueError(f"`radiance` has to be >= 0 (it is light) but its minimum is {low}.")


# Inverse tone mapping.


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """3t² - 2t³ on t clipped to [0, 1]: C¹, flat at both ends, so the gain starts without a kink."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blur_wrapped(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an equirectangular (H, W) field that wraps across the ±180° seam."""
    import cv2

    if sigma <= 0:
        return field
    pad = math.ceil(4 * sigma) + 1  # OpenCV's kernel radius for float images is about 4 sigma
    padded = np.pad(field, ((0, 0), (pad, pad)), mode="wrap")  # longitude is periodic
    blurred = cv2.GaussianBlur(padded, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return blurred[:, pad:-pad]


def expansion_map(lin: np.ndarray, max_stops: float, knee: float, sigma: float) -> np.ndarray:
    """Per-pixel gain in stops, (H, W): 0 below the knee, up to max_stops where the LDR is white.

    t = smoothstep((Y - knee) / (1 - knee)) on linear luminance Y. Banterle et al. (2006, "Inverse
    tone mapping") smooth their expand map over the image so isolated pixels are not expanded;
    here t is multiplied by its Gaussian blur: inside a bright region blur(t) ≈ t, so the stops
    are max_stops · t², while a lone JPEG or noise pixel above the knee is divided by the kernel
    area (about 2π sigma²) and stays near 0. Unlike a bare blur, the product is exactly 0 wherever
    t is, so diffuse pixels beside the sun keep their LDR values at EV 0.
    """
    t = _smoothstep((luminance(lin) - knee) / (1.0 - knee))
    return (max_stops * t * _blur_wrapped(t, sigma)).astype(np.float32)


def inverse_tone_map(ldr: np.ndarray, max_stops: float = 10.0, knee: float = 0.8,
                     sigma: float = 2.0) -> np.ndarray:
    """Expand an 8-bit RGB panorama to radiance, (H, W, 3) uint8 -> (H, W, 3) float32 >= 0.

    Linearise sRGB, then multiply each pixel by 2 ** expansion_map: one gain for the three
    channels keeps hue and saturation. Interpolating the gain in stops (not linearly from 1 to
    2**max_stops) lets a pixel just above the knee gain a fraction of a stop, not tens of times.
    Defaults: max_stops=10 puts clipped white 2**10 above diffuse white. A real sun is ~2**17
    above, but in an LDR panorama its clipped bloom covers a far larger solid angle than the 0.5°
    disk, so 10 stops on that area already makes the sun several times the sky's irradiance, while
    a white cloud wrongly taken for a light stays within float16 range and does not swamp the scene.
    knee=0.8 (linear, sRGB code 231) leaves the top ~10 % of codes, where diffuse white and
    highlights overlap, as the only part expanded. sigma=2 px suits pixel-scale JPEG blocks and
    noise; it is in pixels because those artefacts do not grow with the panorama.
    """
    _check_ldr(ldr, "ldr")
    if not 0.0 < knee < 1.0:
        raise ValueError(f"`knee` has to be in (0, 1) but is {knee}.")
    if max_stops < 0:
        raise ValueError(f"`max_stops` has to be >= 0 but is {max_stops}.")
    lin = srgb_to_linear(ldr.astype(np.float32) / 255.0)  # (H, W, 3)
    gain = np.exp2(expansion_map(lin, max_stops, knee, sigma))  # (H, W)
    return (lin * gain[..., None]).astype(np.float32)


def expose(radiance: np.ndarray, ev: float) -> np.ndarray:
    """The LDR view of radiance at an exposure: radiance · 2**ev, clipped to [0, 1], sRGB, uint8."""
    _check_radiance(radiance)
    scaled = np.clip(radiance.astype(np.float32) * np.float32(2.0**ev), 0.0, 1.0)
    return np.round(linear_to_srgb(scaled) * 255.0).astype(np.uint8)


def luminance_stops(radiance: np.ndarray) -> float:
    """Dynamic range in stops: log2(p99.9 / p0.1) of the luminance.

    Pixels of zero luminance are left out: black carries no ratio (log2 of 0), and sRGB code 0 is
    only 'darker than 0.0003', not an absolute black. The percentiles ignore the odd hot or dead
    pixel, which a max / min would report instead of the scene.
    """
    y = luminance(radiance).ravel()
    y = y[y > 0]
    if y.size == 0:
        return 0.0
    low, high = np.percentile(y, [0.1, 99.9])
    return float(np.log2(high / low))


# Merging exposure brackets (Debevec & Malik 1997, "Recovering high dynamic range radiance maps").


def srgb_response() -> np.ndarray:
    """The camera response OpenCV's MergeDebevec expects for sRGB 8-bit images, (256, 1, 3) float32.

    Entry z is the linear exposure that encodes to code z: srgb_to_linear(z / 255). OpenCV takes
    its log, so code 0 gets the middle of its bin [0, srgb_to_linear(0.5 / 255)) instead of 0.
    """
    response = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)
    response[0] = srgb_to_linear(np.float32(0.5 / 255.0)) / 2.0
    return np.repeat(response[:, None, None], 3, axis=2).astype(np.float32)


def merge_brackets(images: list[np.ndarray], ev: list[float]) -> np.ndarray:
    """Merge 8-bit sRGB brackets shot at exposures `ev` into radiance, (H, W, 3) float32.

    OpenCV weights each code with a hat function and averages log(response(z)) - log(t), with
    exposure time t = 2**ev, so a bracket at EV 0 keeps diffuse values as in `inverse_tone_map`.
    OpenCV averages the hat weight over the channels of a pixel, so in an orange highlight a
    clipped red channel keeps the weight of the unclipped green and blue and comes out 10-15 %
    too dark; merging each channel on its own gives each its own weight. A value clipped in
    every bracket gets only a small weight from each, and OpenCV then returns the mean of their
    bounds; a code of 255 at the shortest exposure proves radiance >= 1 / t, so that bound is used.
    """
    import cv2

    if len(images) != len(ev) or not images:
        raise ValueError(f"`images` and `ev` have to be non-empty and of equal length but have "
                         f"{len(images)} and {len(ev)} items.")
    for i, image in enumerate(images):
        _check_ldr(image, f"images[{i}]")
        if image.shape != images[0].shape:
            raise ValueError(f"`images[{i}]` has to have the shape {images[0].shape} of images[0] "
                             f"but has {image.shape}.")
    times = np.exp2(np.asarray(ev, np.float32)).astype(np.float32)  # OpenCV wants float32 seconds
    response = srgb_response()[:, :, :1].copy()  # (256, 1, 1): one channel at a time
    merge = cv2.createMergeDebevec()
    radiance = np.stack([merge.process([np.ascontiguousarray(image[..., c]) for image in images],
                                       times, response) for c in range(3)], axis=-1)  # (H, W, 3)
    shortest = int(np.argmin(times))
    clipped = images[shortest] == 255  # (H, W, 3)
    return np.where(clipped, np.maximum(radiance, 1.0 / times[shortest]), radiance).astype(np.float32)


# Files.


def _replace_atomically(path: Path, suffix: str, write: Callable[[str], None]) -> Path:
    """Call write(tmp) on a ".tmp-*<suffix>" file beside `path`, then rename it to `path`.

    The suffix stays last because OpenCV and ffmpeg pick the format from the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are as readable as the PNGs
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_hdr(radiance: np.ndarray, path: Path) -> Path:
    """Write radiance as a Radiance RGBE .hdr (8-bit mantissas with a shared exponent, ~1 %)."""
    import cv2

    _check_radiance(radiance)
    bgr = np.ascontiguousarray(radiance[..., ::-1], np.float32)  # OpenCV files are BGR

    def write(tmp: str) -> None:
        if not cv2.imwrite(tmp, bgr):
            raise OSError(f"OpenCV could not write a Radiance HDR to {tmp}.")

    return _replace_atomically(path, ".hdr", write)


def write_exr(radiance: np.ndarray, path: Path) -> Path:
    """Write radiance as an OpenEXR file: one RGB layer of float16, ZIP compressed.

    Half floats keep ~0.05 % precision from 6e-5 to 65504, about 30 stops, which covers
    `inverse_tone_map` (at most 2**max_stops) and real brackets; they halve the file against
    float32 and are what renderers and compositors load as environment maps. Values beyond 65504
    would become Inf, so they are refused rather than written. ZIP is lossless.
    """
    import OpenEXR

    _check_radiance(radiance)
    high = float(radiance.max())
    if high > HALF_MAX:
        raise ValueError(f"`radiance` has to be <= {HALF_MAX} to fit an EXR half channel "
                         f"but its maximum is {high}.")
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    # The "RGB" key takes an interleaved (H, W, 3) array and stores the channels R, G and B.
    channels = {"RGB": np.ascontiguousarray(radiance, np.float16)}

    def write(tmp: str) -> None:
        OpenEXR.File(header, channels).write(tmp)

    return _replace_atomically(path, ".exr", write)


# Views: cubemap and pan video.


def cubemap(equirect: np.ndarray, face_size: int | None = None) -> np.ndarray:
    """Six cube faces in the "dice" cross, (3 f, 4 f, C), same dtype as the equirect (H, W, C).

    Dice (U above, L F R B across, D below) keeps neighbouring faces touching, so the file is
    readable as one picture and loads in tools that take a cross. face_size defaults to W / 4:
    a face spans 90°, so this keeps the equator's pixel density.
    """
    import py360convert

    if equirect.ndim != 3 or equirect.shape[1] != 2 * equirect.shape[0]:
        raise ValueError(f"`equirect` has to be (H, 2H, C) but is {equirect.shape}.")
    if face_size is None:
        face_size = equirect.shape[1] // 4
    return py360convert.e2c(equirect, face_w=face_size, mode="bilinear", cube_format="dice")


def pan_fov(fov: float, size: tuple[int, int]) -> tuple[float, float]:
    """(horizontal, vertical) field of view in degrees of a width x height pinhole view.

    A pinhole image's half extents are tan(fov / 2), so the vertical one is scaled by the aspect:
    v = 2 atan(tan(h / 2) · height / width)."""
    width, height = size
    vertical = 2.0 * math.degrees(math.atan(math.tan(math.radians(fov) / 2.0) * height / width))
    return fov, vertical


def pan_map(eq_hw: tuple[int, int], size: tuple[int, int],
            fov_hv: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) float32 (h, w): where each pixel of a pinhole view at yaw 0, pitch 0 samples
    an equirect of (H, W), with py360convert's conventions (yaw 0 = the centre column, pixel centres
    at +0.5, lon = (x + 0.5) / W · 2π − π, lat = π/2 − (y + 0.5) / H · π)."""
    eq_h, eq_w = eq_hw
    width, height = size
    tan_h, tan_v = (np.tan(np.radians(f) / 2) for f in fov_hv)
    x = ((np.arange(width) + 0.5) / width * 2 - 1) * tan_h  # (w,) on the z = 1 image plane, + right
    y = (1 - (np.arange(height) + 0.5) / height * 2) * tan_v  # (h,) + up
    xx, yy = np.meshgrid(x, y)  # (h, w)
    lon = np.arctan2(xx, 1.0)
    lat = np.arctan2(yy, np.hypot(xx, 1.0))
    map_x = (lon / (2 * np.pi) + 0.5) * eq_w - 0.5
    map_y = (0.5 - lat / np.pi) * eq_h - 0.5
    return map_x.astype(np.float32), map_y.astype(np.float32)


def pan_video(equirect: np.ndarray, path: Path, seconds: float = 8.0, fps: int = 30,
              size: tuple[int, int] = (960, 540), fov: float = 90.0) -> Path:
    """Write a 360° pan at the horizon (yaw 0 to 360, pitch 0) as an H.264 MP4.

    size is (width, height). yuv420p is the pixel format browsers and phones decode, and it
    halves the chroma, so both sides have to be even. The last frame stops one step short of
    360°, so the video loops without a repeated frame. Frames are streamed to ffmpeg one by one.
    """
    import cv2
    import imageio_ffmpeg

    _check_ldr(equirect, "equirect")
    width, height = size
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"`size` has to be two positive even numbers (yuv420p) but is {size}.")
    count = max(1, round(seconds * fps))
    map_x, map_y = pan_map(equirect.shape[:2], size, pan_fov(fov, size))
    eq_width = equirect.shape[1]

    def write(tmp: str) -> None:
        # quality 6 is CRF 20 in imageio-ffmpeg; +faststart puts the index first for web playback.
        writer = imageio_ffmpeg.write_frames(tmp, (width, height), fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", quality=6, macro_block_size=2,
                                             output_params=["-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        try:
            for i in range(count):
                # At pitch 0 turning by a yaw is a horizontal shift of the equirect: one sampling
                # map serves every frame (BORDER_WRAP crosses the 0°/360° seam).
                shift = np.float32(eq_width * i / count)
                frame = cv2.remap(equirect, map_x + shift, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()

    return _replace_atomically(path, ".mp4", write)
