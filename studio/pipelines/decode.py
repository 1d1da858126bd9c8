"""The NaN guard: a diffusers pipeline run to latents, then decoded exactly as the pipeline would
decode them, except that NaN or infinite numbers never become a "successful" image.

In fp16 the UNet or the VAE can overflow (SDXL's original VAE is known to; madebyollin's
fp16-fix VAE was fine-tuned not to). Overflowed numbers turn into NaN or ±inf, which the image
processor clamps and rounds into a black or flat image that would be saved as if all went well.
So: NaN latents stop the run with an error (the UNet overflowed: no decode can fix that); NaN
pixels from a VAE that ran in fp16 are decoded again in fp32, and an error is raised if even that
fails.

The decode after `output_type="latent"` follows the tails of diffusers 0.42's SD1.5 and SDXL
pipelines (text-to-image, image-to-image, inpainting and their ControlNet variants): the same
unscaling, the same VAE call, the SDXL watermark and the SD1.5 safety checker, then
`image_processor.postprocess`. tests/test_nan_guard.py checks that the images are bit-identical
to the plain `pipe(...)` call's.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# SDXL's ControlNet inpainting pipelines divide the latents by the scaling factor only; the other
# SDXL pipelines use the VAE's latents_mean/latents_std when its config has them.
SCALE_ONLY = ("StableDiffusionXLControlNetInpaintPipeline", "StableDiffusionXLControlNetUnionInpaintPipeline")
ADVICE = "try a lower guidance scale, another sampler or fewer steps, or a model that is stable in float16"


class NonFiniteError(ValueError):
    """NaN or infinite numbers where an image should be: a model overflowed (usually in fp16).

    A ValueError, so the UI shows the message (the user can change the settings) and saves nothing."""


def all_finite(x: Any) -> bool:
    """True if no element of the tensor `x` is NaN or ±inf."""
    import torch

    return bool(torch.isfinite(x).all())


@contextmanager
def restored_dtype(vae: Any, dtype: Any):
    """The block may cast `vae`; afterwards it is in `dtype` again, also after an error."""
    try:
        yield
    finally:
        if vae.dtype != dtype:
            vae.to(dtype)


def generate(pipe: Any, **kwargs: Any) -> list:
    """`pipe(**kwargs).images` as PIL images, guarded: raises NonFiniteError rather than return
    an image made from NaN or infinite latents or pixels.

    Takes the arguments of `pipe(...)` except `output_type`. The step callback, an interrupt and
    a Stop behave as in the plain call: diffusers returns the latents so far and they are decoded."""
    import torch

    watch = {"step": None}
    home = pipe.vae.dtype  # some SDXL ControlNet pipelines upcast the VAE and never cast it back
    with restored_dtype(pipe.vae, home):
        # 1. Denoise to latents, checking each step's latents (stopping at the first NaN)
        callback = watch_latents(kwargs.pop("callback_on_step_end", None), watch)
        latents = pipe(**kwargs, output_type="latent", callback_on_step_end=callback).images
        if watch["step"] is not None or not all_finite(latents):
            where = f"at step {watch['step']}" if watch["step"] is not None else "after the last step"
            precision = str(pipe.unet.dtype).removeprefix("torch.")
            raise NonFiniteError(f"The model produced NaN or infinite latents {where} (the UNet overflowed in "
                                 f"{precision}); nothing was saved: {ADVICE}.")
        # 2. Decode, in fp32 again if the pixels are not finite
        with torch.no_grad():
            image = decode_latents(pipe, latents, home)
            # 3. What the pipeline does after its decode
            images = finish(pipe, image)
    pipe.maybe_free_model_hooks()  # offload again, as after diffusers' own decode
    return images


def watch_latents(callback: Any, watch: dict) -> Any:
    """A `callback_on_step_end` that runs `callback` and then records the first step whose latents
    are not finite in `watch["step"]`, interrupting the run there (every later step would be NaN).
    The check costs one tiny device sync per step, next to a UNet call."""

    def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        out = callback(pipe, i, t, kwargs) if callback is not None else {}
        latents = out.get("latents", kwargs.get("latents"))
        if watch["step"] is None and latents is not None and not all_finite(latents):
            watch["step"] = i + 1
            pipe._interrupt = True
        return out

    return on_step_end


def decode_latents(pipe: Any, latents: Any, home: Any) -> Any:
    """(B, 3, H, W) float pixels in about [-1, 1]: decoded in the pipeline's own precision, then
    in fp32 if that gave NaN or ±inf.

    Decided from the float output, not from the pixels: an fp16 overflow comes out of the image
    processor as black (NaN and -inf clamp to 0), but so does a legitimately black image, and only
    the float values tell them apart."""
    import torch

    # SDXL's pipelines decode in fp32 when the VAE asks to (`force_upcast`, SDXL's original VAE);
    # SD1.5's decode in the VAE's own dtype.
    upcast = is_sdxl(pipe) and home == torch.float16 and pipe.vae.config.force_upcast
    first = torch.float32 if upcast else home
    image = vae_decode(pipe, latents, first)
    if not all_finite(image) and first != torch.float32:
        log.warning("the VAE decoded NaN or infinite pixels in %s; decoding again in float32",
                    str(first).removeprefix("torch."))
        image = vae_decode(pipe, latents, torch.float32)
    if not all_finite(image):
        raise NonFiniteError(f"The VAE decoded NaN or infinite pixels even in float32 (from finite latents); "
                             f"nothing was saved: {ADVICE}.")
    return image


def is_sdxl(pipe: Any) -> bool:
    """SDXL's pipelines all have a `watermark` attribute (None without invisible-watermark); SD1.5's none."""
    return hasattr(pipe, "watermark")


def vae_decode(pipe: Any, latents: Any, dtype: Any) -> Any:
    """The pipeline's VAE call with the VAE in `dtype`: latents unscaled (and, for SDXL, shifted
    back by latents_mean/latents_std when the VAE config has them)."""
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    if vae.dtype != dtype:
        vae.to(dtype)
    latents = latents.to(dtype)
    config = vae.config
    stats = getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None
    if stats and is_sdxl(pipe) and type(pipe).__name__ not in SCALE_ONLY:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    return vae.decode(latents.to(get_module_execution_device(vae)), return_dict=False)[0]


def finish(pipe: Any, image: Any) -> list:
    """PIL images from decoded pixels: SDXL's invisible watermark (when the package is installed),
    SD1.5's safety checker (when the model has one; flagged images stay black), then postprocess."""
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    if not hasattr(pipe, "run_safety_checker"):
        return pipe.image_processor.postprocess(image, output_type="pil")
    # encode_prompt casts the embeddings to the text encoder's dtype (the UNet's without one)
    dtype = (pipe.text_encoder if pipe.text_encoder is not None else pipe.unet).dtype
    image, nsfw = pipe.run_safety_checker(image, pipe._execution_device, dtype)
    denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
    return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=denormalize)
