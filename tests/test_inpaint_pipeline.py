"""Inpainting and outpainting on the tiny SDXL models: outside the mask every pixel is the
input's, bit for bit; inside it changes; "only masked" touches only its window."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.pipelines.inpaint import InpaintRequest, run
from studio.pipelines.outpaint import OutpaintRequest
from studio.pipelines.outpaint import run as outpaint

BASE = dict(prompt="a boat", model="tiny", num_inference_steps=4, guidance_scale=5.0, scheduler="Euler", seed=5,
            strength=1.0)


def photo(size=(96, 80)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def box_mask(size=(96, 80), box=(40, 30, 60, 50)) -> Image.Image:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(np.asarray(a) != np.asarray(b), axis=-1)


@pytest.mark.parametrize("inpaint_model", ["", "tiny-inpaint", "tiny-controlnet-union"])
def test_outside_the_feathered_mask_every_pixel_is_the_inputs(manager, inpaint_model):
    image = photo()
    result = run(InpaintRequest(**BASE, image=image, mask=box_mask(), mask_blur=2, inpaint_model=inpaint_model),
                 manager)
    out = result.images[0]
    assert out.size == image.size
    diff = changed(out, image)
    # The mask (40..60, 30..50) feathered with sigma 2: nothing changes beyond 3 sigma of its edge
    outside = np.ones(diff.shape, dtype=bool)
    outside[30 - 7:50 + 7, 40 - 7:60 + 7] = False
    assert not diff[outside].any()
    assert diff[32:48, 42:58].mean() > 0.9  # inside: repainted
    assert result.details.inpaint.mode == "inpaint"
    assert result.details.inpaint.window == [0, 0, 96, 80]


def test_only_masked_repaints_a_window_at_the_models_size(manager):
    image = photo((200, 160))
    result = run(InpaintRequest(**BASE, image=image, mask=box_mask((200, 160), (90, 70, 110, 90)), mask_blur=0,
                                inpaint_only_masked=True, padding=8), manager)
    window = result.details.inpaint.window
    assert window == [82, 62, 118, 98]
    diff = changed(result.images[0], image)
    left, top, right, bottom = window
    assert not diff[:top].any() and not diff[bottom:].any() and not diff[:, :left].any() and not diff[:, right:].any()
    assert not diff[~np.asarray(box_mask((200, 160), (90, 70, 110, 90)), dtype=bool)].any()  # blur 0: the mask only
    assert diff[70:90, 90:110].mean() > 0.9
    assert min(result.details.inpaint.working_size) >= 64  # the model's own size range, not the 36 px window


def test_alpha_mask_from_a_brush_layer_and_grow(manager):
    image = photo()
    layer = np.zeros((80, 96, 4), dtype=np.uint8)
    layer[30:50, 40:60] = (255, 255, 255, 255)  # painted; transparent elsewhere
    grown = run(InpaintRequest(**BASE, image=image, mask=Image.fromarray(layer, "RGBA"), mask_blur=0, mask_grow=4),
                manager)
    diff = changed(grown.images[0], image)
    assert diff[27, 50] and not diff[24, 50]  # grown by 4 px, no further


def test_empty_mask_is_refused_and_a_full_mask_is_image_to_image(manager):
    with pytest.raises(ValueError, match=r"Mask \(mask\) is empty"):
        run(InpaintRequest(**BASE, image=photo(), mask=box_mask(box=(0, 0, 0, 0))), manager)
    full = run(InpaintRequest(**BASE, image=photo(), mask=box_mask(box=(0, 0, 96, 80))), manager)
    assert full.details.inpaint.mode.startswith("image-to-image")


@pytest.mark.parametrize("mask, message", [
    (box_mask((50, 80)), r"Mask \(mask\) must have the image's aspect ratio"),
    (None, r"Mask \(mask\) is missing"),
])
def test_bad_masks(manager, mask, message):
    with pytest.raises(ValueError, match=message):
        run(InpaintRequest(**BASE, image=photo(), mask=mask), manager)


def test_a_mask_of_the_same_aspect_is_resized(manager):
    result = run(InpaintRequest(**BASE, image=photo(), mask=box_mask((48, 40), (20, 15, 30, 25)), mask_blur=0),
                 manager)
    diff = changed(result.images[0], photo())
    assert not diff[:28].any() and diff[32:48, 42:58].all()


def test_inpaint_model_must_suit_the_family(manager):
    with pytest.raises(ValueError, match=r"Inpainting model \(inpaint_model\)"):
        run(InpaintRequest(**BASE, image=photo(), mask=box_mask(), inpaint_model="tiny-controlnet-depth"), manager)


def test_outpaint_keeps_the_original_and_grows_the_canvas(manager):
    image = photo((64, 64))
    result = outpaint(OutpaintRequest(**BASE, image=image, left=16, right=32, top=0, bottom=8, mask_blur=4), manager)
    out = result.images[0]
    assert out.size == (64 + 48, 64 + 8)
    assert np.array_equal(np.asarray(out)[0:64, 16:80], np.asarray(image))
    assert changed(out.crop((80, 0, 112, 64)), Image.new("RGB", (32, 64))).mean() > 0.5
    assert result.details.inpaint.mode == "outpaint"
    with pytest.raises(ValueError, match=r"at least one pixel"):
        outpaint(OutpaintRequest(**BASE, image=image, left=0, right=0, top=0, bottom=0), manager)


def test_a_controlnet_unit_steers_the_repainted_area_only(manager):
    image = photo()
    plain = run(InpaintRequest(**BASE, image=image, mask=box_mask(), mask_blur=0), manager)
    steered = run(InpaintRequest(**BASE, image=image, mask=box_mask(), mask_blur=0, control_image=image,
                                 control_type="canny", controlnet_conditioning_scale=2.0), manager)
    assert steered.details.control[0].controlnet == "tiny-controlnet-canny"
    assert steered.request.controlnet_model == "tiny-controlnet-canny" and plain.request.controlnet_model == ""
    assert plain.details.control is None
    outside = ~np.asarray(box_mask(), dtype=bool)
    assert not changed(steered.images[0], image)[outside].any()
    assert changed(steered.images[0], plain.images[0]).any()
    # Only masked: the hint is made for the whole image and cut to the window, at the working size
    window = run(InpaintRequest(**BASE, image=image, mask=box_mask(), inpaint_only_masked=True, padding=4,
                                control_image=image, control_type="canny"), manager)
    assert window.details.control[0].hint_size == window.details.inpaint.working_size


def test_union_repaint_stacks_with_a_union_unit_but_not_with_a_single_one(manager):
    both = run(InpaintRequest(**BASE, image=photo(), mask=box_mask(), inpaint_model="tiny-controlnet-union",
                              control_image=photo(), control_type="depth", controlnet_model="tiny-controlnet-union"),
               manager)
    assert [u.control_mode for u in both.details.control] == [1]  # the user's unit; the repaint unit is the model
    with pytest.raises(ValueError, match=r"(?i)union"):
        run(InpaintRequest(**BASE, image=photo(), mask=box_mask(), inpaint_model="tiny-controlnet-union",
                           control_image=photo(), control_type="canny"), manager)
