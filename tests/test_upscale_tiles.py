"""Tiled VAE encode/decode and the big-result files, on the tiny random SDXL VAE (CPU, seconds)."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from studio.upscale import files
from studio.upscale.files import (
    check_disk,
    discard,
    needed_bytes,
    preview,
    scratch_array,
    write_image,
)
from studio.upscale.patches import axis_starts
from studio.upscale.tiles import band_rows, count_tiles, decode_tiled, encode_tiled


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    from studio.models.tiny import _vae

    return _vae().eval()


def smooth_image(height: int, width: int) -> np.ndarray:
    """Linear gradients in R and G, a low-frequency sine in B: (height, width, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([x, y, 0.5 + 0.3 * np.sin(2 * np.pi * (x + y))], axis=-1)
    return np.round(rgb * 255).clip(0, 255).astype(np.uint8)


def smooth_latents(h: int, w: int, amplitude: float = 3.0) -> torch.Tensor:
    """Linear gradients and low-frequency sines in latent space: (1, 4, h, w)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    z = torch.stack([x - 0.5, y - 0.5, torch.sin(2 * torch.pi * (x + y)), torch.cos(2 * torch.pi * x)])
    return z[None] * amplitude


@torch.no_grad()
def whole_encode(vae, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


@torch.no_grad()
def whole_decode(vae, latents: torch.Tensor) -> np.ndarray:
    x = vae.decode(latents / vae.config.scaling_factor).sample
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def tile_edges(h: int, tile: int, overlap: int) -> list[int]:
    """Interior image rows (= columns, square canvas) where a decode tile starts or ends."""
    edges = {b for s in axis_starts(h, tile, overlap) for b in (s, s + tile)}
    return sorted(8 * b for b in edges if 0 < b < h)


def seam_ratio(image: np.ndarray, edges: list[int]) -> float:
    """Mean |gradient| across tile edges / the same 8 pixels before and after them.

    Comparing with neighbours of the same phase (8 = one latent pixel) cancels the decoder's
    periodic texture and the strong zero-padding effects near the canvas border; an image
    without seams scores about 1."""
    a = image.astype(np.float32)
    g = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2)) + np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))
    at = np.array(edges) - 1  # g[i] is the step between pixels i and i + 1
    return float(g[at].mean() / (0.5 * (g[at - 8] + g[at + 8])).mean())


def test_count_tiles():
    assert count_tiles(32, 32, 16, 4) == 9  # starts 0, 8, 16 on each axis
    assert count_tiles(10, 40, 16, 4) == 1 * 3
    with pytest.raises(ValueError, match="overlap"):
        count_tiles(32, 32, 16, 16)


def test_encode_one_tile_equals_whole_encode(vae):
    image = smooth_image(96, 64)
    z = encode_tiled(vae, image, tile=16, overlap=4)
    assert z.shape == (1, 4, 12, 8) and z.dtype == torch.float32
    torch.testing.assert_close(z, whole_encode(vae, image), atol=1e-5, rtol=0)


def test_encode_rejects_sizes_not_divisible_by_8(vae):
    with pytest.raises(ValueError, match=r"divisible by 8.*\(60, 64, 3\)"):
        encode_tiled(vae, np.zeros((60, 64, 3), np.uint8), tile=16, overlap=4)


def test_encode_several_tiles_close_to_whole_encode(vae):
    image = smooth_image(256, 256)
    calls = []
    z = encode_tiled(vae, image, tile=24, overlap=8, on_tile=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 4) for i in range(1, 5)] and count_tiles(32, 32, 24, 8) == 4
    # Each tile's GroupNorm sees only its own statistics, which shifts the random tiny encoder a lot
    # (a trained SDXL VAE far less); the tiled latent must still follow the whole one (measured 0.85).
    corr = np.corrcoef(z.flatten(), whole_encode(vae, image).flatten())[0, 1]
    assert corr > 0.75


def test_decode_one_tile_equals_vae_decode(vae):
    z = smooth_latents(12, 10)
    out = np.zeros((96, 80, 3), np.uint8)
    decode_tiled(vae, z, out, tile=16, overlap=4)
    assert np.abs(out.astype(int) - whole_decode(vae, z)).max() <= 1


def test_decode_blending_hides_tile_seams(vae):
    # The latent is a smooth field of amplitude ~3, like scaled SDXL latents: the random tiny
    # encoder's latents are ~0.03, too flat for the decoder's per-tile GroupNorm to shift tones
    # visibly. With this latent each hard tile gets its own tone, so the test can fail.
    z = smooth_latents(48, 48)
    reference = seam_ratio(whole_decode(vae, z), tile_edges(48, 16, 4))
    assert 0.8 < reference < 1.2  # the measure reads ~1 on a decode without tiles (measured 1.0)
    blended, hard = np.zeros((384, 384, 3), np.uint8), np.zeros((384, 384, 3), np.uint8)
    decode_tiled(vae, z, blended, tile=16, overlap=4)
    decode_tiled(vae, z, hard, tile=16, overlap=0)
    blended_ratio = seam_ratio(blended, tile_edges(48, 16, 4))  # measured 0.72
    hard_ratio = seam_ratio(hard, tile_edges(48, 16, 0))  # measured 2.97
    assert blended_ratio < 1.5
    assert hard_ratio > 1.5 and hard_ratio > blended_ratio + 0.5


def decode_peak(vae, latents: torch.Tensor, folder) -> tuple[int, np.memmap]:
    """Peak bytes numpy allocated during decode_tiled into a scratch memmap (torch is not traced)."""
    out = scratch_array(latents.shape[2] * 8, latents.shape[3] * 8, folder)
    tracemalloc.start()
    try:
        decode_tiled(vae, latents, out, tile=8, overlap=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, out


def test_decode_memory_does_not_grow_with_height(vae, tmp_path):
    assert band_rows(16, 8) == band_rows(64, 8) == 64  # one row of 8-latent tiles
    short, tall = smooth_latents(16, 8), smooth_latents(64, 8)  # 128 and 512 rows, one tile wide
    decode_peak(vae, short, tmp_path)  # warm-up: first-call allocations are not the accumulator's
    short_peak, _ = decode_peak(vae, short, tmp_path)
    tall_peak, out = decode_peak(vae, tall, tmp_path)
    assert isinstance(out, np.memmap)
    assert tall_peak < 1.1 * short_peak
    assert tall_peak < 512 * 64 * 3 * 4 / 2  # far less than the tall image as float32
    plain = np.zeros((512, 64, 3), np.uint8)
    decode_tiled(vae, tall, plain, tile=8, overlap=2)
    np.testing.assert_array_equal(np.asarray(out), plain)


def test_should_stop_interrupts_and_discard_removes_the_scratch_file(vae, tmp_path):
    out = scratch_array(192, 192, tmp_path / "new")
    (name,) = os.listdir(tmp_path / "new")
    assert name.startswith(".tmp-") and out.shape == (192, 192, 3)
    calls = []
    with pytest.raises(InterruptedError):
        decode_tiled(vae, smooth_latents(24, 24), out, tile=8, overlap=2,
                     on_tile=lambda done, total: calls.append(done), should_stop=lambda: len(calls) >= 2)
    assert calls == [1, 2]
    discard(out)
    assert os.listdir(tmp_path / "new") == []


def test_write_image_small_is_a_png_with_text(tmp_path):
    array = smooth_image(40, 56)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse")
    path = write_image(array, tmp_path, "result", pnginfo=info)
    assert path == tmp_path / "result.png"
    with Image.open(path) as image:
        assert image.text["parameters"] == "a lighthouse"
        np.testing.assert_array_equal(np.asarray(image), array)
    assert os.listdir(tmp_path) == ["result.png"]


def test_write_image_large_is_a_tiled_bigtiff(tmp_path, monkeypatch):
    import tifffile

    monkeypatch.setattr(files, "PNG_LIMIT", 100 * 100)
    array = np.random.default_rng(0).integers(0, 256, (300, 520, 3), dtype=np.uint8)  # 2x3 tiles, ragged
    description = json.dumps({"prompt": "a lighthouse", "scale": 4})
    path = write_image(array, tmp_path, "result", description=description)
    assert path == tmp_path / "result.tif"
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert json.loads(page.description) == {"prompt": "a lighthouse", "scale": 4}
        np.testing.assert_array_equal(page.asarray(), array)
    assert os.listdir(tmp_path) == ["result.tif"]


def test_write_image_error_leaves_no_file(tmp_path, monkeypatch):
    def failing_tiles(array, side):
        yield np.zeros((side, side, 3), np.uint8)
        raise OSError("disk full")

    monkeypatch.setattr(files, "PNG_LIMIT", 100 * 100)
    monkeypatch.setattr(files, "_tiles", failing_tiles)
    with pytest.raises(OSError, match="disk full"):
        write_image(np.zeros((300, 520, 3), np.uint8), tmp_path, "result")
    assert os.listdir(tmp_path) == []


def test_check_disk_names_the_needed_space(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    need = needed_bytes(16384, 16384)
    assert need >= 2 * 16384 * 16384 * 3  # scratch array + output file
    with pytest.raises(ValueError, match=rf"needs about {need / 1e9:.1f} GB free in .*only 0.1 GB are free"):
        check_disk(tmp_path / "not-yet", 16384, 16384)
    check_disk(tmp_path, 1024, 1024)  # 6 MB + headroom fit in 100 MB


def test_preview_is_a_box_downscale(tmp_path):
    rng = np.random.default_rng(0)
    array = np.clip(smooth_image(600, 420).astype(int) + rng.integers(-20, 21, (600, 420, 3)), 0, 255)
    array = array.astype(np.uint8)
    small = preview(array, max_side=100)
    assert small.size == (70, 100) and small.mode == "RGB"  # k = 6 rows and columns per pixel
    box = Image.fromarray(array).resize((70, 100), Image.BOX)
    assert np.abs(np.asarray(small).astype(int) - np.asarray(box)).max() <= 1
    ragged = preview(array[:599, :419], max_side=100)
    assert max(ragged.size) <= 100
    full = preview(array, max_side=2048)
    np.testing.assert_array_equal(np.asarray(full), array)
