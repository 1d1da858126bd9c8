"""Deep Zoom (DZI) tiles of an image too large to show whole, written with bounded memory.

The layout is Microsoft's Deep Zoom format, which OpenSeadragon reads: `<name>.dzi` (XML: tile
size, overlap, format, full size) and `<name>_files/<level>/<col>_<row>.<fmt>`. Level `max` is the
full resolution; each lower level halves it (`ceil(dim / 2)`) down to level 0, which is 1x1.

A 16K output is 805 MB of uint8, so no level is ever held whole: each level is read one row band
of tiles at a time (from the caller's array, usually a `np.memmap`, or from the level above), and
the next level down is built band by band with a 2x2 box filter into a temporary `np.memmap`.
Only two levels exist on disk at once; their memory is the page cache's, not ours.

Everything is written under a `.tmp-` folder beside the result and renamed at the end, the `.dzi`
last, so a Stop or an error never leaves a half-written viewer behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}


def dzi_levels(width: int, height: int) -> int:
    """How many levels a Deep Zoom pyramid has: ceil(log2(max(width, height))) + 1."""
    if width < 1 or height < 1:
        raise ValueError(f"An image needs a width and height of at least 1, but they are {width} and {height}.")
    return (max(width, height) - 1).bit_length() + 1  # (n - 1).bit_length() == ceil(log2(n)) for n >= 1


def tile_span(index: int, length: int, tile_size: int, overlap: int) -> tuple[int, int]:
    """Pixel range [start, end) of tile `index` along an axis: the tile plus `overlap` on each inner side."""
    start = index * tile_size - (overlap if index > 0 else 0)
    return start, min((index + 1) * tile_size + overlap, length)


def box_downscale_2x(band: np.ndarray) -> np.ndarray:
    """Halve a uint8 (h, w, 3) band with a 2x2 box filter; an odd last row or column is averaged alone."""
    if band.shape[0] % 2:
        band = np.concatenate([band, band[-1:]], axis=0)
    if band.shape[1] % 2:
        band = np.concatenate([band, band[:, -1:]], axis=1)
    total = band[0::2, 0::2].astype(np.uint16)  # 4 * 255 fits in uint16
    total += band[1::2, 0::2]
    total += band[0::2, 1::2]
    total += band[1::2, 1::2]
    total += 2  # round to nearest
    total //= 4
    return total.astype(np.uint8)


def check_inputs(array: np.ndarray, name: str, tile_size: int, overlap: int, fmt: str) -> None:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"`array` must be uint8 (H, W, 3), but it is {array.dtype} {tuple(array.shape)}.")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"`array` must have at least one pixel, but it is {tuple(array.shape)}.")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"`name` must be a plain file name without folders, but it is {name!r}.")
    if tile_size < 1 or overlap < 0:
        raise ValueError(f"`tile_size` must be >= 1 and `overlap` >= 0, but they are {tile_size} and {overlap}.")
    if fmt not in PIL_FORMATS:
        raise ValueError(f"`fmt` must be one of {', '.join(PIL_FORMATS)}, but it is {fmt!r}.")


def dzi_xml(width: int, height: int, tile_size: int, overlap: int, fmt: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image TileSize="{tile_size}" Overlap="{overlap}" Format="{fmt}" xmlns="{DZI_NAMESPACE}">\n'
        f'  <Size Width="{width}" Height="{height}"/>\n'
        "</Image>\n"
    )


def write_level_tiles(level: np.ndarray, folder: Path, tile_size: int, overlap: int, fmt: str, quality: int,
                      should_stop: Callable[[], bool] | None) -> None:
    """Write one level's tiles as `<col>_<row>.<fmt>`, reading one row band of tiles at a time."""
    height, width = level.shape[:2]
    folder.mkdir()
    options = {"quality": quality} if PIL_FORMATS[fmt] == "JPEG" else {}
    for row in range(-(-height // tile_size)):
        if should_stop is not None and should_stop():
            raise InterruptedError("Stopped by the user.")
        top, bottom = tile_span(row, height, tile_size, overlap)
        band = np.ascontiguousarray(level[top:bottom])  # (tile_size + 2 * overlap, width, 3) at most
        for col in range(-(-width // tile_size)):
            left, right = tile_span(col, width, tile_size, overlap)
            tile = Image.fromarray(np.ascontiguousarray(band[:, left:right]))
            tile.save(folder / f"{col}_{row}.{fmt}", PIL_FORMATS[fmt], **options)


def downscale_level(level: np.ndarray, out: np.ndarray, band_rows: int) -> None:
    """Fill `out` (ceil(h / 2), ceil(w / 2), 3) with the box-halved `level`, `band_rows` input rows at a time."""
    band_rows += band_rows % 2  # even, so that each band's pairs of rows line up with the whole image's
    for top in range(0, level.shape[0], band_rows):
        band = np.asarray(level[top:top + band_rows])
        out[top // 2:top // 2 + -(-band.shape[0] // 2)] = box_downscale_2x(band)


def write_dzi(array: np.ndarray, folder: Path, name: str, tile_size: int = 254, overlap: int = 1,
              fmt: str = "jpg", quality: int = 90, should_stop: Callable[[], bool] | None = None) -> Path:
    """Write `<folder>/<name>.dzi` and `<folder>/<name>_files/` for a uint8 (H, W, 3) array; return the .dzi path.

    `array` may be a `np.memmap`: it is read one band of `tile_size + 2 * overlap` rows at a time.
    `should_stop()` is asked before each row of tiles; when it returns True, the partial output is
    removed and InterruptedError is raised. An existing result of the same name is an error."""
    # 0. Check inputs
    check_inputs(array, name, tile_size, overlap, fmt)
    folder = Path(folder)
    dzi_path, files_path = folder / f"{name}.dzi", folder / f"{name}_files"
    for path in (dzi_path, files_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another `name` or remove it first.")
    folder.mkdir(parents=True, exist_ok=True)
    height, width = array.shape[:2]
    top_level = dzi_levels(width, height) - 1

    # 1. Work in a temporary folder beside the result, so the final renames stay on one file system
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=folder))
    try:
        tiles = work / f"{name}_files"
        tiles.mkdir()
        level, below = array, None
        for number in range(top_level, -1, -1):
            # 2. This level's tiles, one row band at a time
            write_level_tiles(level, tiles / str(number), tile_size, overlap, fmt, quality, should_stop)
            if number == 0:
                break
            # 3. The level below, box-halved band by band into a memmap that replaces the previous one
            h, w = level.shape[:2]
            below = np.lib.format.open_memmap(work / f"level-{number - 1}.npy", mode="w+", dtype=np.uint8,
                                              shape=(-(-h // 2), -(-w // 2), 3))
            downscale_level(level, below, band_rows=tile_size)
            if level is not array:
                Path(level.filename).unlink()
            level = below
        level = below = None  # close the last memmap before its folder goes
        (work / f"{name}.dzi").write_text(dzi_xml(width, height, tile_size, overlap, fmt))

        # 4. Publish: the tiles first, then the .dzi that points at them
        tiles.rename(files_path)
        (work / f"{name}.dzi").rename(dzi_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dzi_path
