"""Tiled VAE encode and decode whose memory does not grow with the image.

A 16K image is 256 M pixels: as one float tensor it is 3 GB, and the VAE's activations over it
would be hundreds of GB. So the VAE sees one tile at a time. Tiles overlap and are blended with
smooth weights, because each tile's decoder GroupNorm (and mid-block attention) sees only that
tile's statistics: hard tile edges show as tone steps. The decoded pixels go into a float row band
that holds one row of tiles; rows no later tile can touch are rounded to uint8 and written into
`out` (a `np.memmap` for big images), so the float memory is fixed by the tile size and the width.

`tile` and `overlap` are counted in latent pixels everywhere; one latent pixel is 8 image pixels.
The tile grid and the raised-cosine windows are the patch sampler's (`studio.upscale.patches`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from studio.pipelines.decode import NonFiniteError, all_finite, restored_dtype
from studio.upscale.patches import axis_starts, patch_grid, patch_weight

SCALE = 8  # vae_scale_factor of SD1.5 and SDXL: three 2x downsamplings
OnTile = Callable[[int, int], None]


def _check_grid(tile: int, overlap: int) -> None:
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"Tiles need 0 <= overlap < tile, but tile is {tile} and overlap is {overlap}.")


def count_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    """How many VAE calls a (h, w) latent takes: the progress total."""
    _check_grid(tile, overlap)
    return len(axis_starts(h, tile, overlap)) * len(axis_starts(w, tile, overlap))


def _stop_if_asked(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise InterruptedError("Stopped by the user.")


def _shift(vae) -> float:
    """SDXL's VAE has no shift; SD3/Flux-style VAEs subtract one before scaling."""
    return vae.config.get("shift_factor") or 0.0


@torch.no_grad()
def encode_tiled(vae, image: np.ndarray, tile: int, overlap: int, on_tile: OnTile | None = None,
                 should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The guidance latent z0 of a uint8 (H, W, 3) image: (1, C, H/8, W/8) float32 on the CPU.

    Each tile is encoded to its distribution's mean (deterministic, so the guidance does not
    depend on a seed), shifted and scaled as the UNet expects, and blended in latent space."""
    height, width = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or height % SCALE or width % SCALE:
        raise ValueError(f"The image must be (H, W, 3) with H and W divisible by {SCALE}, "
                         f"but it is {tuple(image.shape)}.")
    _check_grid(tile, overlap)
    h, w = height // SCALE, width // SCALE
    boxes = patch_grid(h, w, tile, overlap)  # latent (top, left, bottom, right), row by row
    z = None  # (1, C, h, w) once the channel count is known
    total_w = torch.zeros(1, 1, h, w)
    for done, (top, left, bottom, right) in enumerate(boxes, start=1):
        _stop_if_asked(should_stop)
        crop = np.ascontiguousarray(image[top * SCALE:bottom * SCALE, left * SCALE:right * SCALE])
        # Only this tile becomes float, on the VAE's device: (1, 3, 8th, 8tw) in [-1, 1].
        x = torch.from_numpy(crop).to(vae.device).permute(2, 0, 1)[None].to(vae.dtype) / 127.5 - 1
        mean = vae.encode(x).latent_dist.mode()  # (1, C, th, tw)
        part = ((mean - _shift(vae)) * vae.config.scaling_factor).float().cpu()
        if z is None:
            z = torch.zeros(1, part.shape[1], h, w)
        wt = patch_weight((top, left, bottom, right), h, w, overlap)  # (th, tw)
        z[:, :, top:bottom, left:right] += part * wt
        total_w[:, :, top:bottom, left:right] += wt
        if on_tile is not None:
            on_tile(done, len(boxes))
    return z / total_w


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8, rounded as diffusers' image processor does; modifies `x`."""
    x /= 2
    x += 0.5
    np.clip(x, 0, 1, out=x)
    x *= 255
    return np.rint(x, out=x).astype(np.uint8)


def band_rows(h: int, tile: int) -> int:
    """Image rows of the float accumulator: one row of tiles, whatever the image height.

    Rows above the next tile row's top are final once a row of tiles is done, so the band only
    ever has to hold the rows from the current tile row's top to its bottom."""
    return min(tile, h) * SCALE


def _decode_tile(vae, latents: torch.Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
    """Decode one latent box to float32 (8th, 8tw, 3) pixels in [-1, 1] on the CPU; a tile that
    decodes to NaN or ±inf in fp16 is decoded again in fp32 (the NaN guard, studio/pipelines/decode.py)."""
    top, left, bottom, right = box
    z = latents[:, :, top:bottom, left:right] / vae.config.scaling_factor + _shift(vae)
    x = vae.decode(z.to(vae.device, vae.dtype)).sample  # (1, 3, 8th, 8tw)
    if not all_finite(x) and vae.dtype != torch.float32:
        with restored_dtype(vae, vae.dtype):
            vae.to(torch.float32)
            x = vae.decode(z.to(vae.device, torch.float32)).sample
    if not all_finite(x):
        raise NonFiniteError(f"The VAE decoded NaN or infinite pixels even in float32 at latent tile {box}; "
                             "nothing was saved.")
    return x[0].permute(1, 2, 0).float().cpu().numpy()


@torch.no_grad()
def decode_tiled(vae, latents: torch.Tensor, out: np.ndarray, tile: int, overlap: int,
                 on_tile: OnTile | None = None, should_stop: Callable[[], bool] | None = None) -> None:
    """Decode (1, C, h, w) latents into `out`, a uint8 (8h, 8w, 3) array, one tile at a time.

    Overlapping tiles are blended in pixel space with raised-cosine ramps over the overlap
    (weights normalised by their sum). Raises InterruptedError when `should_stop()` is true
    between tiles; `out` is then partly written and the caller discards it."""
    _, _, h, w = latents.shape
    height, width = h * SCALE, w * SCALE
    if out.shape != (height, width, 3) or out.dtype != np.uint8:
        raise ValueError(f"`out` must be uint8 {(height, width, 3)} for latents {tuple(latents.shape)}, "
                         f"but it is {out.dtype} {tuple(out.shape)}.")
    _check_grid(tile, overlap)
    if not all_finite(latents):  # the sampler overflowed: no decode can make an image of that
        raise NonFiniteError("The latents to decode hold NaN or infinite values (the UNet overflowed); "
                             "nothing was saved: try a lower guidance scale or strength, or another sampler.")
    rows, cols = axis_starts(h, tile, overlap), axis_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    band = np.zeros((band_rows(h, tile), width, 3), np.float32)  # weighted pixel sums
    band_w = np.zeros((band.shape[0], width, 1), np.float32)  # sums of weights
    total, done = len(rows) * len(cols), 0
    for i, top in enumerate(rows):
        # Invariant: band row 0 is image row top * 8, the top of this row of tiles.
        for left in cols:
            _stop_if_asked(should_stop)
            box = (top, left, top + th, left + tw)
            x = _decode_tile(vae, latents, box)  # (8th, 8tw, 3)
            px_box = tuple(v * SCALE for v in box)
            wt = patch_weight(px_box, height, width, overlap * SCALE).numpy()[..., None]  # (8th, 8tw, 1)
            band[:, left * SCALE:(left + tw) * SCALE] += x * wt
            band_w[:, left * SCALE:(left + tw) * SCALE] += wt
            done += 1
            if on_tile is not None:
                on_tile(done, total)
        next_top = rows[i + 1] * SCALE if i + 1 < len(rows) else height
        _flush(band, band_w, out, top * SCALE, next_top - top * SCALE)


def _flush(band: np.ndarray, band_w: np.ndarray, out: np.ndarray, first_row: int, n: int) -> None:
    """Write the band's first n (final) rows to out[first_row:], then move the rest up."""
    out[first_row:first_row + n] = _to_uint8(band[:n] / band_w[:n])  # one float temp of n rows
    keep = band.shape[0] - n  # rows the next tile row still adds to
    band[:keep] = band[n:]
    band_w[:keep] = band_w[n:]
    band[keep:] = 0
    band_w[keep:] = 0
