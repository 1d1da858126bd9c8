"""Camera controls inside text-to-image: a horizon layout in the initial noise, and depth of field.

Pitch. A pretrained model has no pitch input, but the layout of an image is decided in the first
denoising steps from the low frequencies of the initial noise. So the noise diffusers would draw
is shifted, above the horizon row y_h = H/2 + f_px·tan(pitch) (studio/camera.py), towards the
latent colour of a bright sky and below it towards that of the ground:

    latents = noise + s/2 · d · tanh((y_h − y) / w)      (B, C, H/8, W/8), y in latent rows

where d (C,) is the VAE's latent of a sky colour minus that of a ground colour, scaled to unit
RMS, s is `horizon_strength` and w one latent row of soft edge. s = 0 is plain diffusers.
Limits: it sets where the image is bright/sky-like vs dark/ground-like, not a true horizon; a
strong prompt ("a portrait against a wall") can override it, and scenes without a horizon
(indoors, close-ups) only get a lighter top. Prompt words (low-angle shot, ...) support it.

Depth of field. After generation a metric depth model estimates each image's depth in metres and
the thin-lens blur of studio/camera.py renders the requested aperture and focus distance; the
sharp image is kept too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from studio.camera import autofocus_m, focal_length_px, horizon_row, thin_lens_blur

SKY_RGB = (0.55, 0.72, 0.92)  # a clear daytime sky
GROUND_RGB = (0.33, 0.29, 0.22)  # earth and shadowed ground


def layout_direction(pipe: Any) -> Any:
    """d (C,): latent of a flat sky image minus that of flat ground, with unit RMS."""
    import torch

    vae = pipe.vae
    rgb = torch.tensor([SKY_RGB, GROUND_RGB], dtype=vae.dtype, device=vae.device)  # (2, 3)
    images = rgb[:, :, None, None].expand(2, 3, 64, 64) * 2 - 1  # the VAE takes [-1, 1]
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean.float().mean(dim=(2, 3))  # (2, C)
    d = latents[0] - latents[1]
    rms = d.pow(2).mean().sqrt()
    # A VAE that maps both colours alike (random weights) still gets a layout: brighter on top.
    return d / rms if rms > 1e-6 else torch.ones_like(d)


def horizon_profile(latent_rows: int, horizon_latent_row: float, softness: float = 1.0) -> Any:
    """(rows,) +1 well above the horizon (sky), −1 well below (ground), tanh in between."""
    import torch

    y = torch.arange(latent_rows, dtype=torch.float32) + 0.5  # latent row centres
    return torch.tanh((horizon_latent_row - y) / softness)


def horizon_latents(pipe: Any, request: Any, generators: list) -> Any:
    """The initial latents for `request` with its horizon layout, or None when pitch is off."""
    from diffusers.utils.torch_utils import randn_tensor

    if request.camera_pitch is None:
        return None
    scale = pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    shape = (request.batch_size, channels, request.height // scale, request.width // scale)
    # The same draw diffusers' prepare_latents makes from these generators.
    noise = randn_tensor(shape, generator=generators, device=pipe._execution_device, dtype=pipe.unet.dtype)
    f_px = focal_length_px(request.focal_length, request.width, request.height)
    y_h = horizon_row(request.height, f_px, request.camera_pitch) / scale
    profile = horizon_profile(shape[2], y_h).to(noise.device)  # (H/8,)
    d = layout_direction(pipe).to(noise.device)  # (C,)
    bias = request.horizon_strength / 2 * d[:, None, None] * profile[None, :, None]  # (C, H/8, 1)
    return (noise.float() + bias[None]).to(noise.dtype)


def horizon_control_arguments(request: Any, net: Any) -> dict[str, Any]:
    """Depth ControlNet `net`'s arguments holding the horizon where the camera puts it: the hint is
    the depth of a level ground plane seen from the camera (closed form, studio/hints.py)."""
    from studio.hints import ground_plane_hint

    f_px = focal_length_px(request.focal_length, request.width, request.height)
    hint = ground_plane_hint(request.width, request.height, request.camera_pitch, f_px)
    if net.union:
        return {"control_image": [hint], "control_mode": [net.control_modes["depth"]],
                "controlnet_conditioning_scale": float(request.horizon_control_weight)}
    return {"image": hint, "controlnet_conditioning_scale": float(request.horizon_control_weight)}


def horizon_details(request: Any) -> dict[str, Any]:
    """What the metadata records about the horizon (row in image pixels, may lie outside)."""
    f_px = focal_length_px(request.focal_length, request.width, request.height)
    return {"horizon_row": round(horizon_row(request.height, f_px, request.camera_pitch), 2),
            "focal_length_px": round(f_px, 2)}


def apply_depth_of_field(images: list, estimator: Any, request: Any) -> tuple[list, dict[str, Any]]:
    """Blur each image as the requested lens would; returns the images and per-image details."""
    from PIL import Image

    from studio.models.depth import estimate_depth_m

    out, focus, ranges = [], [], []
    for image in images:
        depth = estimate_depth_m(estimator, image)  # (H, W) metres
        s1 = autofocus_m(depth) if request.focus_distance_m is None else request.focus_distance_m
        s1 = max(s1, 2 * request.focal_length / 1000)  # a lens cannot focus closer
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        blurred = thin_lens_blur(rgb, depth, s1, request.focal_length, request.aperture_f_number)
        out.append(Image.fromarray(np.clip(blurred * 255 + 0.5, 0, 255).astype(np.uint8)))
        focus.append(round(float(s1), 3))
        ranges.append([round(float(depth.min()), 3), round(float(depth.max()), 3)])
    return out, {"focus_distance_m": focus, "depth_range_m": ranges}

