"""Maths of the patch upscaler: patch grids, blend weights, phase / chess / band fusion, noising."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from studio.upscale.fusion import (
    apply_chess,
    band_fusion,
    chess_mask,
    laplacian_pyramid,
    noised_guidance,
    phase_fusion,
    random_parity,
    reconstruct,
    release_points,
)
from studio.upscale.patches import (
    axis_starts,
    blend_denominator,
    count_patches,
    patch_grid,
    patch_weight,
    random_shift,
)

# (length, patch, overlap) cases: exact fit, ragged, barely larger, tiny-UNet and SDXL sizes.
AXES = [(64, 8, 2), (37, 8, 3), (9, 8, 4), (256, 128, 32), (300, 128, 64), (200, 16, 15),
        (17, 8, 0), (24, 8, 0)]


# ---- patches -------------------------------------------------------------------------------

@pytest.mark.parametrize("length, patch, overlap", AXES)
def test_axis_starts_span_the_axis_with_enough_overlap(length, patch, overlap):
    starts = axis_starts(length, patch, overlap)
    assert starts[0] == 0 and starts[-1] == length - patch
    assert len(starts) == math.ceil((length - patch) / (patch - overlap)) + 1
    for a, b in itertools.pairwise(starts):
        assert 0 < b - a <= patch - overlap  # strictly increasing, overlap >= `overlap`


def test_axis_starts_under_random_shifts_keep_count_ends_and_half_overlap():
    rng = random.Random(0)
    for _ in range(500):
        patch = rng.randint(2, 40)
        overlap = rng.randint(0, patch - 1)
        length = rng.randint(1, 400)
        shift = rng.randint(-patch, patch)
        plain = axis_starts(length, patch, overlap)
        starts = axis_starts(length, patch, overlap, shift)
        assert len(starts) == len(plain)
        assert starts[0] == 0 and starts[-1] == max(0, length - patch)
        for a, b in itertools.pairwise(starts):
            assert b > a
            assert patch - (b - a) >= overlap // 2
            if overlap > 0:
                assert patch - (b - a) >= 1


def test_axis_starts_moves_interior_starts_by_the_same_amount():
    plain = axis_starts(100, 16, 8)
    shifted = axis_starts(100, 16, 8, shift=3)
    assert [b - a for a, b in zip(plain[1:-1], shifted[1:-1])] == [3] * (len(plain) - 2)


def test_axis_at_most_one_patch_is_one_box_of_the_axis_length():
    assert axis_starts(8, 8, 2) == [0]
    assert axis_starts(5, 8, 2, shift=3) == [0]
    assert patch_grid(5, 20, 8, 2)[0] == (0, 0, 5, 8)
    assert all(bottom - top == 5 for top, _, bottom, _ in patch_grid(5, 20, 8, 2))


@pytest.mark.parametrize("patch, overlap, expected", [
    (0, 0, "`patch` has to be >= 1 but is 0"),
    (8, 8, "[0, 8) but is 8"),
    (8, -1, "[0, 8) but is -1"),
])
def test_bad_patch_arguments_name_expected_and_received(patch, overlap, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace(")", r"\)")):
        axis_starts(64, patch, overlap)


def test_patch_count_does_not_depend_on_shift():
    rng = random.Random(1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        height, width = rng.randint(1, 200), rng.randint(1, 200)
        overlap = rng.randint(0, 7)
        expected = count_patches(height, width, 8, overlap)
        shift = random_shift(generator, overlap)
        assert len(patch_grid(height, width, 8, overlap, shift)) == expected


def test_random_shift_stays_in_range_and_is_reproducible():
    shifts = [random_shift(torch.Generator().manual_seed(7), 16) for _ in range(2)]
    assert shifts[0] == shifts[1]
    generator = torch.Generator().manual_seed(3)
    drawn = [random_shift(generator, 16) for _ in range(300)]
    values = {v for pair in drawn for v in pair}
    assert min(values) == -8 and max(values) == 8
    assert random_shift(generator, 0) == (0, 0)


@pytest.mark.parametrize("shift", [(0, 0), (3, -4), (-8, 8)])
def test_grid_covers_every_pixel_and_normalized_weights_sum_to_one(shift):
    height, width, patch, overlap = 45, 70, 16, 8
    boxes = patch_grid(height, width, patch, overlap, shift)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for top, left, bottom, right in boxes:
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    denominator = blend_denominator(boxes, height, width, overlap)
    assert denominator.min() > 0
    total = torch.zeros(height, width)
    for box in boxes:
        top, left, bottom, right = box
        total[top:bottom, left:right] += (patch_weight(box, height, width, overlap)
                                          / denominator[top:bottom, left:right])
    torch.testing.assert_close(total, torch.ones(height, width), atol=1e-6, rtol=0)


def test_window_is_one_at_canvas_edges_and_inside_and_ramps_towards_neighbours():
    height, width, overlap = 64, 64, 8
    corner = patch_weight((0, 0, 16, 16), height, width, overlap)
    assert corner.dtype == torch.float32 and corner.shape == (16, 16)
    assert torch.all(corner[0, :8] == 1) and torch.all(corner[:8, 0] == 1)  # canvas edges
    assert torch.all(corner[:8, :8] == 1)  # away from the neighbours
    assert corner[-1, -1] < 0.01 and corner[-1, 0] < 0.01  # fades towards the neighbours
    middle = patch_weight((20, 20, 44, 44), height, width, overlap)
    assert torch.all(middle[8:16, 8:16] == 1)
    assert torch.all(middle[0] < 0.01) and torch.all(middle[:, -1] < 0.01)
    assert middle.min() >= 1e-3
    assert torch.all(patch_weight((0, 0, 16, 16), height, width, 0) == 1)


def test_window_is_smooth():
    weight = patch_weight((40, 40, 168, 168), 256, 256, 16)
    jump = max((weight[1:] - weight[:-1]).abs().max(), (weight[:, 1:] - weight[:, :-1]).abs().max())
    assert 0 < jump <= math.pi / (2 * 16) + 1e-6  # max slope of the raised cosine


def test_windows_of_exactly_overlapping_neighbours_sum_to_one():
    # Raised-cosine ramps are complementary: a partition of unity with no normalisation needed.
    left = patch_weight((0, 0, 8, 16), 8, 24, 8)[0]
    right = patch_weight((0, 8, 8, 24), 8, 24, 8)[0]
    torch.testing.assert_close(left[8:] + right[:8], torch.ones(8), atol=1e-6, rtol=0)


# ---- phase fusion --------------------------------------------------------------------------

def seeded(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
def test_phase_fusion_with_itself_or_weight_zero_returns_x(size):
    x, guide = seeded(1, 4, *size), seeded(1, 4, *size, seed=1)
    torch.testing.assert_close(phase_fusion(x, x, 0.5), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(phase_fusion(x, x, 1.0), x, atol=1e-5, rtol=0)
    assert torch.equal(phase_fusion(x, guide, 0.0), x)


@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
def test_phase_fusion_keeps_amplitude_and_moves_phase(size):
    x, guide = seeded(1, 4, *size), seeded(1, 4, *size, seed=1)
    fused = phase_fusion(x, guide, 0.5)
    assert not torch.allclose(fused, x, atol=1e-2)
    spec_x, spec_fused = torch.fft.rfft2(x), torch.fft.rfft2(fused)
    torch.testing.assert_close(spec_fused.abs(), spec_x.abs(), rtol=1e-4, atol=1e-4)

    spec_g, spec_full = torch.fft.rfft2(guide), torch.fft.rfft2(phase_fusion(x, guide, 1.0))
    solid = (spec_x.abs() > 1e-2) & (spec_g.abs() > 1e-2)
    phase_gap = torch.angle(spec_full * spec_g.conj())[solid]
    assert solid.sum() > 100 and phase_gap.abs().max() < 1e-3


def test_phase_fusion_keeps_fp16_and_checks_weight():
    x, guide = seeded(1, 4, 8, 8, dtype=torch.float16), seeded(1, 4, 8, 8, seed=1, dtype=torch.float16)
    assert phase_fusion(x, guide, 0.3).dtype == torch.float16
    with pytest.raises(ValueError, match=r"\[0, 1\] but is 1.5"):
        phase_fusion(x, guide, 1.5)


# ---- chess mask ----------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, cell", [(8, 8, 1), (6, 10, 1), (16, 16, 2), (7, 9, 3)])
def test_chess_parities_are_complements(height, width, cell):
    even, odd = chess_mask(height, width, 0, cell), chess_mask(height, width, 1, cell)
    assert even.dtype == torch.bool and even.shape == (height, width)
    assert torch.equal(even, ~odd)
    if cell == 1 and height * width % 2 == 0:
        assert even.sum() == height * width // 2
    assert even[0, 0] and even[cell - 1, cell - 1]
    if width > cell and height > cell:
        assert not even[0, cell] and not even[cell, 0] and even[cell, cell]


def test_apply_chess_replaces_exactly_the_masked_pixels():
    x, guide = seeded(2, 4, 6, 8), seeded(2, 4, 6, 8, seed=1)
    mask = chess_mask(6, 8, random_parity(torch.Generator().manual_seed(0)))
    out = apply_chess(x, guide, mask)
    assert torch.equal(out[..., mask], guide[..., mask])
    assert torch.equal(out[..., ~mask], x[..., ~mask])
    assert out.data_ptr() not in (x.data_ptr(), guide.data_ptr())


def test_random_parity_draws_both_values_reproducibly():
    generator = torch.Generator().manual_seed(0)
    assert {random_parity(generator) for _ in range(50)} == {0, 1}
    a, b = (random_parity(torch.Generator().manual_seed(5)) for _ in range(2))
    assert a == b


# ---- Laplacian pyramid and band fusion -----------------------------------------------------

@pytest.mark.parametrize("size", [(37, 50), (64, 64), (1, 5)])
@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
def test_pyramid_reconstructs_perfectly(size, levels):
    x = seeded(1, 4, *size)
    bands = laplacian_pyramid(x, levels)
    assert len(bands) <= levels + 1
    assert bands[0].shape == x.shape
    torch.testing.assert_close(reconstruct(bands), x, atol=1e-5, rtol=0)


def test_pyramid_levels_are_clamped_and_checked():
    bands = laplacian_pyramid(seeded(1, 1, 5, 3), 10)
    assert [tuple(b.shape[-2:]) for b in bands] == [(5, 3), (3, 2), (2, 1), (1, 1)]
    with pytest.raises(ValueError, match="`levels` has to be >= 1 but is 0"):
        laplacian_pyramid(seeded(1, 1, 4, 4), 0)


def test_release_points_finest_first_low_pass_last():
    assert release_points(4) == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_band_fusion_ends():
    x, guide = seeded(1, 4, 37, 50), seeded(1, 4, 37, 50, seed=1)
    assert torch.equal(band_fusion(x, guide, 0.0), guide)
    assert torch.equal(band_fusion(x, guide, 1.0), x)


def test_band_fusion_releases_the_finest_band_first():
    x, guide = seeded(1, 4, 37, 50), seeded(1, 4, 37, 50, seed=1)
    bands_x, bands_g = laplacian_pyramid(x, 4), laplacian_pyramid(guide, 4)
    # Just past the first release: only the finest band is x's, so out − guide = its difference.
    out = band_fusion(x, guide, 0.25, levels=4)
    torch.testing.assert_close(out - guide, bands_x[0] - bands_g[0], atol=1e-5, rtol=0)
    # Past every band-pass release: only the low-pass is still the guide's.
    out = band_fusion(x, guide, 0.9, levels=4)
    zeros = [torch.zeros_like(b) for b in bands_x[:-1]]
    low_pass_gap = reconstruct(zeros + [bands_g[-1] - bands_x[-1]])
    assert low_pass_gap.abs().max() > 1e-3
    torch.testing.assert_close(out - x, low_pass_gap, atol=1e-5, rtol=0)


# ---- noising -------------------------------------------------------------------------------

def test_noised_guidance_matches_diffusers_add_noise():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(30)
    z0, noise = seeded(1, 4, 12, 10), seeded(1, 4, 12, 10, seed=1)
    for t in scheduler.timesteps[[0, 10, 29]]:
        expected = scheduler.add_noise(z0, noise, t.reshape(1))
        got = noised_guidance(scheduler.alphas_cumprod, t, z0, noise)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    patch = noised_guidance(scheduler.alphas_cumprod, 500, z0[..., 2:6, 3:9], noise[..., 2:6, 3:9])
    full = noised_guidance(scheduler.alphas_cumprod, 500, z0, noise)
    assert torch.equal(patch, full[..., 2:6, 3:9])
