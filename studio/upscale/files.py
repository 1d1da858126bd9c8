"""Files for results too big for memory: a scratch array on disk, the written image, a preview.

A 16K RGB result is 768 MB as uint8; it lives in a memory-mapped scratch file while it is decoded
and written, so the process only holds the pages it touches. Up to PNG_LIMIT pixels the result is
a PNG (written atomically by `studio.outputs.save_png`); beyond it Pillow's PNG writer would need
the whole image as one Image, so it becomes a tiled, zlib-compressed BigTIFF streamed tile by tile.
Every write goes to a ".tmp-" file first and is renamed at the end, so Stop or an error never
leaves a half-written image behind.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from studio.outputs import save_png

PNG_LIMIT = 8192 * 8192  # pixels; beyond this the result is written as a tiled BigTIFF
TIFF_TILE = 256  # TIFF tile side: viewers and tifffile read such tiles without loading the image
HEADROOM = 64 * 2**20  # bytes kept free beyond the estimate: file-system slack, metadata


def scratch_array(height: int, width: int, folder: Path) -> np.memmap:
    """A new (height, width, 3) uint8 array backed by a ".tmp-" file in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".rgb", dir=folder)
    os.close(fd)
    try:
        return np.memmap(name, dtype=np.uint8, mode="w+", shape=(height, width, 3))
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def discard(array: np.ndarray) -> None:
    """Delete the file behind a scratch array (after Stop, an error, or once it is written)."""
    name = getattr(array, "filename", None)
    if name:
        Path(name).unlink(missing_ok=True)


def needed_bytes(width: int, height: int) -> int:
    """Disk bytes a width x height result needs: the scratch array plus the written file.

    The file is estimated at the raw size: zlib rarely saves much on detailed photographs, and an
    estimate that is too high only asks for space that is not used."""
    raw = width * height * 3
    return 2 * raw + HEADROOM


def _existing(folder: Path) -> Path:
    """The folder, or its nearest existing parent: disk_usage needs a path that exists."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_disk(folder: Path, width: int, height: int) -> None:
    """Raise ValueError before sampling when `folder` lacks the space for the result."""
    need = needed_bytes(width, height)
    free = shutil.disk_usage(_existing(folder)).free
    if free < need:
        raise ValueError(f"A {width}x{height} image needs about {need / 1e9:.1f} GB free in {folder}, "
                         f"only {free / 1e9:.1f} GB are free.")


def _tiles(array: np.ndarray, side: int) -> Iterator[np.ndarray]:
    """(side, side, 3) tiles in row-major order, edge tiles zero-padded as TIFF stores them."""
    height, width = array.shape[:2]
    for top in range(0, height, side):
        for left in range(0, width, side):
            part = array[top:top + side, left:left + side]  # (<= side, <= side, 3)
            tile = np.zeros((side, side, 3), np.uint8)
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


def _write_tiff(array: np.ndarray, path: Path, description: str | None) -> None:
    """Stream `array` into a tiled, compressed BigTIFF at `path`, via a temp file and a rename."""
    import tifffile

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tif", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are as readable as the PNGs
        # zlib needs no imagecodecs; `metadata=None` keeps tifffile's own JSON out of the description.
        tifffile.imwrite(tmp, data=_tiles(array, TIFF_TILE), shape=array.shape, dtype=np.uint8,
                         tile=(TIFF_TILE, TIFF_TILE), bigtiff=True, photometric="rgb",
                         compression="zlib", description=description, metadata=None)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(array: np.ndarray, folder: Path, stem: str, pnginfo: PngImagePlugin.PngInfo | None = None,
                description: str | None = None) -> Path:
    """Write a (H, W, 3) uint8 result as folder/<stem>.png, or folder/<stem>.tif beyond PNG_LIMIT.

    `pnginfo` goes into the PNG; `description` (7-bit ASCII, e.g. json.dumps of the settings)
    into the TIFF's ImageDescription tag."""
    folder = Path(folder)
    height, width = array.shape[:2]
    if height * width <= PNG_LIMIT:
        return save_png(Image.fromarray(np.asarray(array)), folder, f"{stem}.png", pnginfo)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.tif"
    _write_tiff(array, path, description)
    return path


def preview(array: np.ndarray, max_side: int = 2048) -> Image.Image:
    """An RGB image whose longer side is at most `max_side`: a box average of the array.

    Each output row averages one band of k rows (k = ceil(longer side / max_side)) and k-column
    groups within it, so only one band is ever float in memory, even for a 16K memmap."""
    height, width = array.shape[:2]
    k = math.ceil(max(height, width) / max_side)
    if k <= 1:
        return Image.fromarray(np.asarray(array))
    starts = np.arange(0, width, k)  # column group starts; the last group may be narrower
    counts = np.diff(np.append(starts, width))[:, None]  # (w_out, 1)
    rows = []
    for top in range(0, height, k):
        band = array[top:top + k].astype(np.float32).mean(axis=0)  # (width, 3)
        rows.append(np.add.reduceat(band, starts, axis=0) / counts)  # (w_out, 3)
    small = np.round(np.stack(rows)).astype(np.uint8)  # (ceil(H/k), ceil(W/k), 3)
    return Image.fromarray(small)
