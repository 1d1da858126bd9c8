"""The NaN guard (studio/pipelines/decode.py): the guarded decode gives diffusers' own images, an
fp16 VAE overflow is decoded again in fp32, and NaN latents or pixels are errors, never images.

fp16 convolutions are unreliable on the CPU, so the overflow is staged: the VAE is really cast to
fp16 (its weights rounded to fp16 beforehand, so that fp16 -> fp32 is exact), and its `decode`
returns NaN or -inf whenever the VAE is not in fp32 and decodes for real in fp32.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch
from PIL import Image

from studio.pipelines.decode import NonFiniteError, generate

SIZE = {"width": 64, "height": 64}


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


@pytest.fixture(scope="module")
def roots():
    """The tiny SDXL and SD1.5 pipelines with a ControlNet each (copied from their UNets), in memory."""
    from diffusers import ControlNetModel

    from studio.models import tiny

    out = {}
    for family, root in (("sdxl", tiny.build_tiny_sdxl()), ("sd15", tiny.build_tiny_sd15())):
        controlnet = ControlNetModel.from_unet(root.unet)
        tiny._make_visible(controlnet, seed=3)  # else its zeroed output layers change nothing
        out[family] = (root, controlnet)
    return out


def inputs() -> tuple[Image.Image, Image.Image]:
    """A noise image and a mask covering its right half."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    return image, Image.fromarray(mask)


def derived(roots, family: str, task: str, **components):
    """(the diffusers pipeline Studio would use for `task`, sharing the family's components except
    `components`; its task-specific arguments)."""
    import diffusers

    root, controlnet = roots[family]
    image, mask = inputs()
    auto, extra = {
        "txt2img": (diffusers.AutoPipelineForText2Image, {}),
        "img2img": (diffusers.AutoPipelineForImage2Image, {"image": image, "strength": 0.5, "num_inference_steps": 2}),
        "inpaint": (diffusers.AutoPipelineForInpainting, {"image": image, "mask_image": mask, "strength": 1.0}),
        "controlnet": (diffusers.AutoPipelineForText2Image, {"image": image}),
        "controlnet-inpaint": (diffusers.AutoPipelineForInpainting,
                               {"image": image, "mask_image": mask, "control_image": image, "strength": 1.0}),
    }[task]
    return auto.from_pipe(root, **components, **({"controlnet": controlnet} if "controlnet" in task else {})), extra


def call(pipe, run, extra: dict):
    """`run(pipe, ...)` for one 64 px image of seed 1, one step (the decode is what is tested)."""
    args = {"prompt": "a red cube", "num_inference_steps": 1, "guidance_scale": 1.0, **SIZE, **extra}
    return run(pipe, generator=torch.Generator("cpu").manual_seed(1), **args)


def plain(pipe, **kwargs):
    return pipe(**kwargs).images


@pytest.mark.parametrize("family, task, vae", [
    *((f, t, None) for f in ("sdxl", "sd15") for t in ("txt2img", "img2img", "inpaint", "controlnet")),
    # the SDXL ControlNet inpainting pipeline upcasts before its decode and skips latents_mean
    ("sdxl", "controlnet-inpaint", None),
    # a VAE with latents_mean/latents_std (Playground v2.5's kind): SDXL's pipelines use them, mostly
    ("sdxl", "txt2img", "stats"),
    ("sdxl", "controlnet-inpaint", "stats"),
])
def test_guarded_images_are_bit_identical_to_the_plain_call(roots, family, task, vae):
    from studio.models.tiny import _vae

    components = {}
    if vae == "stats":
        components["vae"] = _vae()
        components["vae"].register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 1.5, 1.0, 2.0])
    pipe, extra = derived(roots, family, task, **components)
    expected = pixels(call(pipe, plain, extra))
    got = pixels(call(pipe, generate, extra))
    assert len(got) == 1
    assert got[0].std() > 10  # a real (noise-like) image, not a flat one
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


def staged_fp16_vae(monkeypatch, pipe, bad: float) -> list:
    """Round the VAE's weights to fp16 and cast it to fp16; its decode then returns `bad`
    everywhere unless the VAE is in fp32. Returns the dtypes each decode ran in."""
    vae = pipe.vae
    vae.to(torch.float16).to(torch.float32)  # the fp32 reference uses the same (rounded) weights
    real, dtypes = vae.decode, []

    def decode(z, *args, **kwargs):
        dtypes.append(vae.dtype)
        if vae.dtype != torch.float32:
            return (torch.full((z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8), bad, dtype=z.dtype),)
        return real(z, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", decode)
    return dtypes


@pytest.mark.parametrize("family, force_upcast, bad, tried", [
    ("sd15", True, float("-inf"), [torch.float16, torch.float32]),  # SD1.5's pipelines ignore force_upcast;
    # -inf is the overflow that comes out all black
    ("sdxl", False, float("nan"), [torch.float16, torch.float32]),  # like the fp16-fix VAE
    ("sdxl", True, float("nan"), [torch.float32]),  # SDXL's original VAE: fp32 from the start
])
def test_fp16_vae_overflow_is_decoded_again_in_fp32(monkeypatch, roots, family, force_upcast, bad, tried):
    from studio.models.tiny import _vae

    pipe, _ = derived(roots, family, "txt2img", vae=_vae())  # a VAE of its own, to cast and patch
    pipe.vae.register_to_config(force_upcast=force_upcast)
    dtypes = staged_fp16_vae(monkeypatch, pipe, bad)
    expected = pixels(call(pipe, plain, {}))  # the VAE in fp32: real decodes
    dtypes.clear()
    pipe.vae.to(torch.float16)
    got = pixels(call(pipe, generate, {}))
    assert dtypes == tried
    assert pipe.vae.dtype == torch.float16  # the upcast was only for this decode
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))
    assert got[0].std() > 10


def test_nan_pixels_even_in_fp32_are_an_error(monkeypatch, roots):
    from studio.models.tiny import _vae

    pipe, _ = derived(roots, "sd15", "txt2img", vae=_vae().to(torch.float16))
    monkeypatch.setattr(pipe.vae, "decode", lambda z, **kw: (torch.full((1, 3, 64, 64), float("nan")),))
    with pytest.raises(NonFiniteError, match="NaN or infinite pixels even in float32"):
        call(pipe, generate, {})
    assert pipe.vae.dtype == torch.float16  # restored after the failed retry too


def test_nan_latents_stop_the_run_with_a_clear_error(monkeypatch, roots):
    pipe, _ = derived(roots, "sdxl", "txt2img")
    steps, decodes = [], []
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **kw: decodes.append(1))

    def poison(pipe, i, t, kwargs):  # the UNet "overflows" at the second step
        steps.append(i)
        if i == 1:
            kwargs["latents"] = torch.full_like(kwargs["latents"], float("nan"))
        return kwargs

    generators = [torch.Generator("cpu").manual_seed(1)]
    with pytest.raises(NonFiniteError, match=r"NaN or infinite latents at step 2 .*lower guidance scale"):
        generate(pipe, prompt="a", num_inference_steps=4, generator=generators, callback_on_step_end=poison, **SIZE)
    assert steps == [0, 1]  # interrupted there: steps 3 and 4 did not run
    assert decodes == []  # and nothing was decoded


def test_run_raises_on_nan_latents_so_nothing_is_saved(monkeypatch, manager):
    """The UI saves a result only after `run` returns; the error is a ValueError, which it shows
    as a message."""
    from studio.pipelines import sampling
    from studio.pipelines.txt2img import Txt2ImgRequest, run

    own = sampling.step_callback

    def poisoned(*args, **kwargs):
        callback = own(*args, **kwargs)

        def step(pipe, i, t, tensors):
            out = callback(pipe, i, t, tensors)
            out["latents"] = torch.full_like(out["latents"], float("inf"))
            return out

        return step

    monkeypatch.setattr(sampling, "step_callback", poisoned)
    request = Txt2ImgRequest(prompt="a cat", model="tiny", num_inference_steps=2, seed=3, **SIZE)
    with pytest.raises(ValueError, match="latents at step 1") as caught:
        run(request, manager)
    assert isinstance(caught.value, NonFiniteError)


def test_tiled_decode_retries_an_overflowing_tile_in_fp32(monkeypatch):
    from studio.models.tiny import _vae
    from studio.upscale.tiles import decode_tiled

    torch.manual_seed(0)
    vae = _vae().eval().to(torch.float16).to(torch.float32)  # weights rounded to fp16
    # Latents that fp16 holds exactly, unscaled by 1: the "fp16" tiles see the same numbers
    vae.register_to_config(scaling_factor=1.0)
    latents = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0)).half().float()
    expected = np.zeros((64, 128, 3), np.uint8)
    decode_tiled(vae, latents, expected, tile=8, overlap=2)
    twin, real, dtypes = deepcopy(vae), vae.decode, []

    def decode(z, *args, **kwargs):  # "fp16" tiles decode through an fp32 copy; the second overflows
        dtypes.append(vae.dtype)
        if vae.dtype == torch.float32:
            return real(z, *args, **kwargs)
        out = twin.decode(z.float(), *args, **kwargs)
        if len(dtypes) == 2:
            out.sample.fill_(float("nan"))
        return out

    monkeypatch.setattr(vae, "decode", decode)
    vae.to(torch.float16)
    out = np.zeros_like(expected)
    decode_tiled(vae, latents, out, tile=8, overlap=2)
    assert dtypes == [torch.float16, torch.float16, torch.float32, torch.float16]  # 3 tiles, the second retried
    assert vae.dtype == torch.float16
    assert np.array_equal(out, expected)


def test_tiled_decode_refuses_nan_latents():
    from studio.models.tiny import _vae
    from studio.upscale.tiles import decode_tiled

    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 2, 3, 3] = float("nan")
    out = np.full((64, 64, 3), 7, np.uint8)
    with pytest.raises(NonFiniteError, match="NaN or infinite values"):
        decode_tiled(_vae(), latents, out, tile=8, overlap=2)
    assert (out == 7).all()  # nothing was written
