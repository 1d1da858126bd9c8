"""Masks: upload and editor rules, grow/shrink, feather, the crop window, masked content,
outpaint canvas, and the bit-for-bit paste-back outside the mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.masks import (
    MASKED_CONTENT,
    check_mask,
    composite,
    feather,
    fill_masked,
    grow_mask,
    mask_box,
    mask_coverage,
    mask_from_editor,
    mask_from_upload,
    outpaint_canvas,
    paste_window,
)


def square(size=(40, 40), box=(10, 10, 20, 20)) -> np.ndarray:
    """bool (H, W) with box (left, top, right, bottom) set."""
    mask = np.zeros((size[1], size[0]), bool)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = True
    return mask


def bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def random_image(shape=(48, 64, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- mask_from_upload / mask_from_editor -----------------------------------------------------------

def test_upload_alpha_layer_painted_pixels_are_the_mask():
    # Half-transparent grey paint: colour alone (grey 100 < 128) would say "keep" everywhere.
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[5:10, 5:15, 3] = 200  # painted
    rgba[12:15, 5:15, 3] = 100  # faint stroke: alpha below 128 is not painted
    mask = mask_from_upload(Image.fromarray(rgba, "RGBA"), (30, 20))
    assert mask.dtype == bool and mask.shape == (20, 30)
    np.testing.assert_array_equal(mask, square((30, 20), (5, 5, 15, 10)))


def test_upload_opaque_alpha_falls_back_to_grey():
    rgba = np.full((10, 10, 4), 255, np.uint8)
    rgba[:, :5, :3] = 0  # black left half, white right half, all opaque
    mask = mask_from_upload(Image.fromarray(rgba, "RGBA"), (10, 10))
    assert not mask[:, :5].any() and mask[:, 5:].all()


def test_upload_grey_gradient_thresholded_at_128():
    grey = np.tile(np.arange(100, 201, dtype=np.uint8), (4, 1))  # 100..200 left to right
    mask = mask_from_upload(Image.fromarray(grey, "L"), (101, 4))
    np.testing.assert_array_equal(mask, np.tile(grey[0] >= 128, (4, 1)))
    assert not mask[:, 27].any() and mask[:, 28].all()  # 127 keeps, 128 repaints


def test_upload_aspect_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"Mask \(mask\) must have the image's aspect ratio.*"
                                         r"got 100x100 for a 200x100 image"):
        mask_from_upload(Image.new("L", (100, 100), 255), (200, 100))


def test_upload_same_aspect_is_resized_nearest():
    grey = np.zeros((50, 100), np.uint8)
    grey[:, 50:] = 255
    mask = mask_from_upload(Image.fromarray(grey), (200, 100))
    assert mask.shape == (100, 200)
    assert not mask[:, :100].any() and mask[:, 100:].all()  # still binary, edge where scaled


def test_editor_union_of_layers_and_none_cases():
    def layer(box):
        rgba = np.zeros((20, 30, 4), np.uint8)
        rgba[box[1]:box[3], box[0]:box[2]] = 255
        return Image.fromarray(rgba, "RGBA")

    background = Image.new("RGB", (30, 20))
    value = {"background": background, "layers": [layer((0, 0, 5, 5)), None, layer((20, 10, 30, 20))],
             "composite": background}
    expected = square((30, 20), (0, 0, 5, 5)) | square((30, 20), (20, 10, 30, 20))
    np.testing.assert_array_equal(mask_from_editor(value, (30, 20)), expected)
    big = mask_from_editor(value, (60, 40))  # layers resized (nearest) to the requested size
    np.testing.assert_array_equal(big, expected.repeat(2, axis=0).repeat(2, axis=1))
    assert mask_from_editor(None, (30, 20)) is None
    assert mask_from_editor({"background": background, "layers": [], "composite": None}, (30, 20)) is None
    empty = {"background": background, "layers": [layer((0, 0, 0, 0))], "composite": background}
    assert mask_from_editor(empty, (30, 20)) is None


# --- grow / feather -----------------------------------------------------------------------------------

def test_grow_square_by_two_is_the_14_square_minus_rounded_corners():
    grown = grow_mask(square(), 2)
    assert bounds(grown) == (8, 8, 22, 22)
    assert not grown[8, 8] and not grown[8, 9] and not grown[9, 8]  # outside the disk of radius 2
    assert grown[9, 9] and grown[8, 10] and grown[10, 8]
    assert grown.sum() == 14 * 14 - 4 * 3


def test_shrink_square_by_two_is_the_6_square():
    shrunk = grow_mask(square(), -2)
    np.testing.assert_array_equal(shrunk, square(box=(12, 12, 18, 18)))


def test_grow_zero_is_a_copy():
    mask = square()
    same = grow_mask(mask, 0)
    np.testing.assert_array_equal(same, mask)
    assert same is not mask


def test_feather_exact_zero_outside_one_inside_monotone_edge():
    mask = square((100, 100), (30, 30, 70, 70))
    alpha = feather(mask, 4)
    assert alpha.dtype == np.float32 and alpha.min() == 0.0 and alpha.max() == 1.0
    far_outside = ~grow_mask(mask, 4 * 4)
    assert (alpha[far_outside] == 0.0).all()
    assert (alpha[grow_mask(mask, -4 * 4)] == 1.0).all()
    between = alpha[(alpha > 0) & (alpha < 1)]  # blends an 8-bit image could show: ≥ 1/512 away
    assert between.min() >= 1 / 512 and between.max() <= 1 - 1 / 512
    row = alpha[50, :50]  # from the left border into the mask's middle
    assert (np.diff(row) >= 0).all() and 0 < row[30] < 1


def test_feather_zero_is_the_mask_as_floats():
    mask = square()
    alpha = feather(mask, 0)
    assert alpha.dtype == np.float32
    np.testing.assert_array_equal(alpha, mask.astype(np.float32))


# --- mask_box -----------------------------------------------------------------------------------------

def test_mask_box_padding_and_clipping():
    assert mask_box(square((100, 80), (40, 30, 50, 35)), 8) == (32, 22, 58, 43)
    assert mask_box(square((100, 80), (0, 70, 10, 80)), 8) == (0, 62, 18, 80)  # clipped at edges


def test_mask_box_aspect_growth_stays_inside():
    left, top, right, bottom = mask_box(square((100, 80), (40, 30, 50, 35)), 0, aspect=2.0)
    assert (right - left, bottom - top) == (10, 5)  # already 2:1: unchanged
    box = mask_box(square((100, 80), (40, 30, 50, 35)), 0, aspect=1.0)
    assert box == (40, 28, 50, 38)  # heightened around the centre
    box = mask_box(square((100, 80), (0, 0, 4, 20)), 0, aspect=1.0)
    assert box == (0, 0, 20, 20)  # would start at -8: shifted right
    box = mask_box(square((100, 80), (90, 0, 100, 80)), 0, aspect=2.0)
    assert box == (0, 0, 100, 80)  # needs 160 wide: clipped to the image
    with pytest.raises(ValueError, match=r"Mask \(mask\) is empty"):
        mask_box(np.zeros((10, 10), bool), 4)


# --- fill_masked ----------------------------------------------------------------------------------------

def test_fill_modes():
    image = np.zeros((40, 40, 3), np.uint8)
    image[...] = (200, 100, 50)  # uniform surroundings...
    image[15:25, 15:25] = (0, 255, 0)  # ... and old content to hide
    hole = square(box=(15, 15, 25, 25))
    assert MASKED_CONTENT == ("original", "fill", "latent noise")
    np.testing.assert_array_equal(fill_masked(image, hole, "original"), image)
    filled = fill_masked(image, hole, "fill")
    assert np.abs(filled[hole].astype(int) - (200, 100, 50)).max() <= 2
    noise = fill_masked(image, hole, "latent noise")
    assert (noise[hole] == 127).all()
    for out in (filled, noise):
        np.testing.assert_array_equal(out[~hole], image[~hole])
    rnd, rnd_mask = random_image(), square((64, 48), (5, 5, 30, 20))
    np.testing.assert_array_equal(fill_masked(rnd, rnd_mask, "fill")[~rnd_mask], rnd[~rnd_mask])
    with pytest.raises(ValueError, match="original.*fill.*latent noise.*'blur'"):
        fill_masked(image, hole, "blur")


# --- outpaint_canvas -----------------------------------------------------------------------------------

def test_outpaint_canvas_size_original_and_mask():
    original = random_image((30, 40, 3))
    canvas, mask = outpaint_canvas(Image.fromarray(original), 10, 0, 5, 20)
    assert canvas.mode == "RGB" and canvas.size == (50, 55) and mask.shape == (55, 50)
    pixels = np.asarray(canvas)
    np.testing.assert_array_equal(pixels[5:35, 10:50], original)
    np.testing.assert_array_equal(mask, ~square((50, 55), (10, 5, 50, 35)))
    # The new area is smooth: replicated edges blurred heavily, near the image's colours.
    assert pixels[mask].std(axis=0).max() < original.std(axis=(0, 1)).min()


def test_outpaint_needs_one_pixel():
    with pytest.raises(ValueError, match=r"Outpaint \(left, right, top, bottom\).*got 0, 0, 0, 0"):
        outpaint_canvas(Image.new("RGB", (8, 8)), 0, 0, 0, 0)
    with pytest.raises(ValueError, match="got 0, 4096, 0, 0"):
        outpaint_canvas(Image.new("RGB", (8, 8)), 0, 4096, 0, 0)


# --- composite / paste_window ----------------------------------------------------------------------------

def test_composite_rule():
    original = np.full((1, 3, 3), 100, np.uint8)
    generated = np.full((1, 3, 3), 200, np.uint8)
    out = composite(original, generated, np.array([[0.0, 0.25, 1.0]], np.float32))
    np.testing.assert_array_equal(out[0, :, 0], [100, 125, 200])


def test_feathered_pipeline_keeps_original_bit_for_bit():
    original, generated = random_image((96, 128, 3), seed=1), random_image((96, 128, 3), seed=2)
    mask = square((128, 96), (40, 30, 80, 60))
    alpha = feather(grow_mask(mask, 3), 4)
    out = composite(original, generated, alpha)
    untouched = alpha == 0
    assert untouched[~grow_mask(mask, 3 + 3 * 4)].all()  # beyond 3σ of the grown edge
    assert untouched.sum() > 0.5 * untouched.size
    np.testing.assert_array_equal(out[untouched], original[untouched])
    np.testing.assert_array_equal(out[alpha == 1], generated[alpha == 1])
    assert (alpha[grow_mask(mask, 3 - 3 * 4)] == 1).all()  # 3σ inside: fully generated
    blended = (alpha > 0) & (alpha < 1)
    assert (out[blended] != original[blended]).any()


def test_paste_window_outside_box_untouched():
    original = random_image((48, 64, 3), seed=3)
    mask = square((64, 48), (20, 15, 40, 30))
    alpha = feather(mask, 2)
    box = mask_box(mask, 8, aspect=1.0)
    window = Image.fromarray(random_image((128, 128, 3), seed=4))  # generated at a larger size
    out = np.asarray(paste_window(Image.fromarray(original), window, box, alpha))
    left, top, right, bottom = box
    outside = np.ones((48, 64), bool)
    outside[top:bottom, left:right] = False
    np.testing.assert_array_equal(out[outside], original[outside])
    np.testing.assert_array_equal(out[alpha == 0], original[alpha == 0])
    assert (out[mask] != original[mask]).any()


def test_coverage_and_check():
    assert mask_coverage(square()) == 100 / 1600
    assert check_mask(np.zeros((4, 4), bool)) == "empty"
    assert check_mask(np.ones((4, 4), bool)) == "full"
    assert check_mask(square()) == "partial"
