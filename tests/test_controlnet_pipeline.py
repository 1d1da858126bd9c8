"""ControlNet units on the tiny SDXL model: weight, start/end, stacking, Union modes, hints, the
camera's horizon control, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.pipelines.controlnet import ControlNetRequest, control_hint, run

BASE = dict(prompt="a lighthouse on a cliff", negative_prompt="blurry", model="tiny", width=64, height=64,
            num_inference_steps=4, guidance_scale=5.0, scheduler="Euler", seed=77)


def photo(size=(64, 64)) -> Image.Image:
    """A picture with edges: a bright square and a dark disc on a gradient."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 90.0)], axis=-1)
    rgb[h // 5:h // 2, w // 5:w // 2] = 250
    rgb[(x - 0.7 * w) ** 2 + (y - 0.7 * h) ** 2 < (min(w, h) / 6) ** 2] = 10
    return Image.fromarray(rgb.astype(np.uint8))


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def request(**changes) -> ControlNetRequest:
    return ControlNetRequest(**{**BASE, "control_image": photo(), "control_type": "canny", **changes})


def test_weight_zero_is_plain_text_to_image_and_a_weight_changes_the_image(manager):
    from studio.pipelines import txt2img

    plain = txt2img.run(txt2img.Txt2ImgRequest(**BASE), manager)
    off = run(request(controlnet_conditioning_scale=0.0), manager)
    on = run(request(controlnet_conditioning_scale=1.0), manager)
    assert np.array_equal(pixels(off.images), pixels(plain.images))
    assert np.abs(pixels(on.images) - pixels(plain.images)).mean() > 1.0
    unit = on.details.control[0]
    assert (unit.control_type, unit.controlnet, unit.weight, unit.hint_size) == ("canny", "tiny-controlnet-canny",
                                                                                1.0, [64, 64])
    # The request as run names the ControlNet picked for it, so its PNG remakes it
    assert on.request.controlnet_model == "tiny-controlnet-canny"


def residual_norms(manager, req) -> list[float]:
    """Run `req` and record, per UNet call, the size of the ControlNet residuals the UNet received."""
    norms: list[float] = []

    def hook(module, args, kwargs):
        residuals = kwargs.get("down_block_additional_residuals")
        norms.append(0.0 if residuals is None else float(sum(r.abs().sum() for r in residuals)))

    with manager.lease("tiny", "txt2img", controlnets=["tiny-controlnet-canny"]) as lease:
        handle = lease.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run(req, manager)
    finally:
        handle.remove()
    return norms


def test_start_and_end_gate_the_residuals_the_unet_receives(manager):
    # 4 steps; diffusers keeps step i when i/4 >= start and (i+1)/4 <= end
    assert all(n > 0 for n in residual_norms(manager, request()))
    gated = residual_norms(manager, request(control_guidance_start=0.5, control_guidance_end=1.0))
    assert [n > 0 for n in gated] == [False, False, True, True]
    early = residual_norms(manager, request(control_guidance_start=0.0, control_guidance_end=0.25))
    assert [n > 0 for n in early] == [True, False, False, False]


def test_two_units_equal_diffusers_multi_controlnet_called_directly(manager):
    import torch
    from diffusers import StableDiffusionXLControlNetPipeline
    from diffusers.models.controlnets import MultiControlNetModel

    from studio.hints import canny_hint
    from studio.schedulers import make_scheduler

    depth_hint = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 64, 3)))
    ours = run(request(controlnet_conditioning_scale=0.8, control_guidance_end=0.75, control_hint_2=depth_hint,
                       control_type_2="none", controlnet_model_2="tiny-controlnet-depth",
                       controlnet_conditioning_scale_2=1.3, control_guidance_start_2=0.25), manager)
    assert [u.controlnet for u in ours.details.control] == ["tiny-controlnet-canny", "tiny-controlnet-depth"]
    with manager.lease("tiny", "txt2img") as lease:
        components = dict(lease.pipe.components)
    nets = [manager._loaded[n].model for n in ("tiny-controlnet-canny", "tiny-controlnet-depth")]
    components["scheduler"] = make_scheduler("Euler", components["scheduler"].config)
    direct = StableDiffusionXLControlNetPipeline(**components, controlnet=MultiControlNetModel(nets))(
        prompt=BASE["prompt"], negative_prompt=BASE["negative_prompt"], width=64, height=64,
        image=[canny_hint(photo(), 100, 200), depth_hint], controlnet_conditioning_scale=[0.8, 1.3],
        control_guidance_start=[0.0, 0.25], control_guidance_end=[0.75, 1.0], num_inference_steps=4,
        guidance_scale=5.0, generator=[torch.Generator().manual_seed(77)],
    ).images
    assert np.array_equal(pixels(ours.images), pixels(direct))


def test_union_model_serves_two_units_with_their_own_modes(manager):
    both = run(request(controlnet_model="tiny-controlnet-union", control_image_2=photo(), control_type_2="lineart",
                       controlnet_model_2="tiny-controlnet-union"), manager)
    modes = [(u.control_type, u.control_mode) for u in both.details.control]
    assert modes == [("canny", 3), ("lineart", 3)]
    one = run(request(controlnet_model="tiny-controlnet-union"), manager)
    as_depth = run(request(controlnet_model="tiny-controlnet-union", control_type="depth"), manager)
    assert as_depth.details.control[0].control_mode == 1
    assert not np.array_equal(pixels(one.images), pixels(both.images))
    assert not np.array_equal(pixels(one.images), pixels(as_depth.images))


def test_depth_unit_uses_the_managers_depth_estimator_and_init_image_makes_it_image_to_image(manager):
    result = run(request(control_type="depth", init_image=photo(), strength=0.5), manager)
    assert result.details.control[0].controlnet == "tiny-controlnet-depth"
    assert result.total_steps == result.steps_done == 2
    assert result.details.input_image.steps_run == 2


def test_hints_are_kept_for_saving_only_when_asked(manager):
    assert run(request(), manager).hints == []
    kept = run(request(save_hints=True), manager).hints
    assert len(kept) == 1 and kept[0].size == (64, 64)


def test_control_hint_preview(manager):
    from studio.hints import canny_hint

    hint = control_hint(manager, photo((96, 64)), "canny", 50, 150)
    assert hint.size == (96, 64)
    assert np.array_equal(np.asarray(hint), np.asarray(canny_hint(photo((96, 64)), 50, 150)))
    depth = control_hint(manager, photo(), "depth", width=64, height=48)
    assert depth.size == (64, 48) and np.asarray(depth).max() == 255
    with pytest.raises(ValueError, match="control_type"):
        control_hint(manager, photo(), "pose")
    with pytest.raises(ValueError, match="missing"):
        control_hint(manager, None, "canny")


@pytest.mark.parametrize("changes, message", [
    (dict(control_image=None), r"Control image \(control_image\) is missing"),
    (dict(controlnet_conditioning_scale=2.5), r"Control weight \(controlnet_conditioning_scale\) must be"),
    (dict(control_guidance_start=0.6, control_guidance_end=0.6), r"must be below Control end"),
    (dict(control_guidance_end=1.5), r"Control end \(control_guidance_end\) must be"),
    (dict(controlnet_model="controlnet-depth-sd15"), r"is for 'sd15' models"),
    (dict(controlnet_model="tiny-controlnet-depth"), r"takes \['depth'\] hints, not 'canny'"),
    (dict(control_type="none"), r"choose one in ControlNet \(controlnet_model\)"),
    (dict(controlnet_model="tiny", control_type="none"), r"must be a ControlNet"),
    (dict(control_image_2=photo(), controlnet_model_2="tiny-controlnet-union"), r"all use single-condition"),
    (dict(canny_low_threshold=220), r"must not exceed the high threshold"),
    (dict(control_type="none", controlnet_model="tiny-controlnet-union"), r"Union model, which must be told"),
])
def test_bad_units_are_refused_before_anything_runs(manager, changes, message):
    with pytest.raises(ValueError, match=message):
        run(request(**changes), manager)


def test_horizon_control_drives_a_depth_controlnet_with_the_ground_plane(manager):
    from studio.pipelines import txt2img

    camera = dict(BASE, camera_pitch=-10.0, focal_length_mm=35.0, horizon_strength=0.0)
    plain = txt2img.run(txt2img.Txt2ImgRequest(**camera), manager)
    held = txt2img.run(txt2img.Txt2ImgRequest(**camera, horizon_control=True, horizon_control_weight=1.0), manager)
    assert held.details.camera.controlnet == "tiny-controlnet-depth"
    assert plain.details.camera.controlnet is None
    assert np.abs(pixels(held.images) - pixels(plain.images)).mean() > 1.0
    with pytest.raises(ValueError, match=r"needs a pitch"):
        txt2img.run(txt2img.Txt2ImgRequest(**BASE, horizon_control=True), manager)


def test_infotext_records_the_units_and_reads_them_back(manager):
    from studio.metadata import infotext, parse_infotext

    result = run(request(controlnet_conditioning_scale=0.7, control_guidance_end=0.8), manager)
    text = infotext(result.request, result.seed)
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet-canny, Weight: 0.7' in text
    task, fields = parse_infotext(text)
    assert task == "controlnet"
    assert (fields["control_type"], fields["controlnet_model"], fields["controlnet_conditioning_scale"],
            fields["control_guidance_end"]) == ("canny", "tiny-controlnet-canny", 0.7, 0.8)
    a1111 = ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
             'ControlNet 0: "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 0.5, '
             'Resize Mode: Crop and Resize, Guidance Start: 0.1, Guidance End: 0.9"')
    task, fields = parse_infotext(a1111)
    assert task == "controlnet" and fields["control_type"] == "depth" and fields["controlnet_model"] == ""
    assert (fields["controlnet_conditioning_scale"], fields["control_resize_mode"]) == (0.5, "crop and resize")


def test_sd15_models_pair_with_their_own_controlnets(manager):
    result = run(request(model="tiny-sd15", control_type="depth"), manager)
    assert result.details.control[0].controlnet == "tiny-controlnet-depth-sd15"
    assert result.images[0].size == (64, 64)
    with pytest.raises(ValueError, match=r"needs a ControlNet that fits 'tiny-sd15' \(sd15\).*\['depth'\]"):
        run(request(model="tiny-sd15", control_type="canny"), manager)
    with pytest.raises(ValueError, match=r"does not fit 'tiny-sd15'"):
        run(request(model="tiny-sd15", control_type="depth", controlnet_model="controlnet-depth-sd15"), manager)


def test_hint_preparation_is_reported_and_a_stop_then_makes_nothing(manager):
    from studio.results import Stopped

    messages = []

    def on_step(event):
        if event.message:
            messages.append(event.message)
        return False

    run(request(control_type="depth", control_image_2=photo(), control_type_2="canny"), manager, on_step)
    assert messages == ["Preparing the depth hint of unit 1…", "Preparing the canny hint of unit 2…"]
    with pytest.raises(Stopped, match="preparing the hints"):
        run(request(), manager, lambda event: event.message is not None and event.message.startswith("Preparing"))
