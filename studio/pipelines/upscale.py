"""Upsampling: a cascade of ×2 stages, each Pixelsmith's patch sampler between a tiled encode and a
streaming tiled decode, so the output may be far larger than the GPU could denoise at once.

Per stage (studio/upscale/): Lanczos-upsample the current image; encode it in tiles into the
guidance latent z0; sample the canvas patch by patch, guided by z0 for the Slider's first steps
(sampler.py); decode in tiles, row band by row band, into a memory-mapped array on disk. The
result's `canvas` is that array; saving writes it as PNG (or a tiled BigTIFF when too large for
PNG), with a preview and the deep-zoom tiles the page browses.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from studio.groups import Loras, Model
from studio.groups_upscale import UpscalePrompt, UpscaleSampler, Upsampling, stage_sizes, stage_sliders
from studio.results import Details, Result, StepCallback, StepEvent, Stopped, UpscaleDetails

MAX_PIXELS = 16384 * 16384  # the default limit on the output (--upscale-max-pixels)


@dataclass(frozen=True, kw_only=True)
class UpscaleRequest(Loras, Model, UpscaleSampler, UpscalePrompt, Upsampling):
    TASK: ClassVar[str] = "upscale"
    NEEDS: ClassVar[str] = "img2img"


@dataclass
class Stage:
    index: int  # 0-based
    count: int
    size: tuple[int, int]  # (width, height) of its output
    slider: int

    def label(self) -> str:
        return f"Stage {self.index + 1} of {self.count} ({self.size[0]}×{self.size[1]})"


def plan_stages(request: UpscaleRequest) -> list[Stage]:
    """The cascade for `request`'s image: sizes and Sliders of every stage."""
    sizes = stage_sizes(*request.image.size, request.scale)
    sliders = stage_sliders(request.slider, len(sizes), request.steps_run)
    return [Stage(k, len(sizes), size, slider) for k, (size, slider) in enumerate(zip(sizes, sliders))]


def check_output(request: UpscaleRequest, models: Any, scratch: Path) -> None:
    """Refuse, before anything loads, an output beyond the pixel limit or the free disk."""
    from studio.upscale.files import check_disk

    limit = models.upscale_max_pixels or MAX_PIXELS
    (width, height), (w0, h0) = stage_sizes(*request.image.size, request.scale)[-1], request.image.size
    if width * height > limit:
        raise ValueError(f"Scale (scale) {request.scale:g} makes {w0}×{h0} into {width}×{height} "
                         f"({width * height / 1e6:.0f} megapixels); at most {limit / 1e6:.0f} megapixels are "
                         f"allowed here (--upscale-max-pixels); lower the scale")
    check_disk(scratch, width, height)


def run(request: UpscaleRequest, models: Any, on_step: StepCallback | None = None) -> Result:
    """Upsample `request.image` by `request.scale` with the model manager `models`."""
    from studio.pipelines.sampling import resolve_seed, waiting
    from studio.upscale.files import discard, preview
    from studio.upscale.patches import count_patches
    from studio.upscale.sampler import PatchPlan, unet_calls

    # 1. Check inputs (before anything is loaded or changed)
    request.validate(models.registry)
    if not hasattr(request.image, "convert"):
        raise ValueError(f"Image (image) must be an image, got {type(request.image).__name__}")
    entry = models.registry.get(request.model)
    scratch = Path(models.scratch_dir or Path(tempfile.gettempdir()) / "studio-upscale")
    check_output(request, models, scratch)
    request, loras = request.with_lora_stack()
    request = request.replace(seed=resolve_seed(request.seed))
    stages, nets = plan_stages(request), [request.tile_controlnet] if request.tile_controlnet else []
    net = models.registry.get(nets[0]) if nets else None
    tile_mode = net.control_modes["tile"] if net is not None and net.union else None  # a Union model's tile mode
    image, canvas, made = request.image.convert("RGB"), None, []

    with models.lease(request.model, "img2img", controlnets=nets, loras=loras,
                      on_wait=waiting(on_step, request.steps_run)) as lease:
        pipe = lease.pipe
        patch = PatchPlan.for_unet(pipe.unet.config.sample_size, request.patch_batch)
        calls = [unet_calls(s.size[1] // 8, s.size[0] // 8, patch, request.steps_run) for s in stages]
        progress = Progress(on_step, sum(calls), pipe)
        try:
            for stage in stages:
                canvas, prompt_details = run_stage(pipe, request, stage, image, scratch, patch, progress, tile_mode)
                made.append(canvas)
                image = canvas  # the next stage upsamples this one
        except BaseException as exc:  # Stop, or an error: no stage's array stays on disk
            for array in made:
                discard(array)
            if isinstance(exc, InterruptedError):
                raise Stopped(f"Stopped: {progress.where}; nothing was saved.") from None
            raise
        for array in made[:-1]:
            discard(array)

    # 2. What lets anyone remake this image (given the same input image)
    (w, h), (lw, lh) = stages[-1].size, (stages[-1].size[0] // 8, stages[-1].size[1] // 8)
    upscale = UpscaleDetails(
        input_size=list(request.image.size), output_size=[w, h], stages=[list(s.size) for s in stages],
        sliders=[s.slider for s in stages], patch_size=patch.size, patch_overlap=patch.overlap,
        patches_last_stage=count_patches(lh, lw, patch.size, patch.overlap), unet_calls=sum(calls),
        tile_controlnet=request.tile_controlnet or None)
    details = Details(family=entry.family, repo_id=entry.repo_id, prompt_encoding=prompt_details,
                      upscale=upscale)
    return Result(request=request, images=[preview(canvas)], seeds=[request.seed], prompt=request.prompt,
                  negative_prompt=request.negative_prompt, steps_done=request.steps_run,
                  total_steps=request.steps_run, interrupted=False, details=details, canvas=canvas)


class Progress:
    """Turns patch and tile events into step events: UNet calls done of all planned, with where."""

    def __init__(self, on_step: StepCallback | None, total: int, pipe: Any):
        self.on_step, self.total, self.pipe, self.done = on_step, total, pipe, 0
        self.where, self.stop = "before the first step", False

    def report(self, where: str, latents: Any = None, advance: int = 0) -> bool:
        """Say where the job is; True (and from then on `stop`) when the user asked to stop."""
        self.done, self.where = self.done + advance, where
        if self.on_step is not None:
            preview = None if latents is None else (lambda: _latent_preview(self.pipe, latents))
            event = StepEvent(step=self.done, total=self.total, preview=preview, detail=where)
            self.stop = self.stop or bool(self.on_step(event))
        return self.stop


def run_stage(pipe: Any, request: UpscaleRequest, stage: Stage, image: Any, scratch: Path, patch: Any,
              progress: Progress, tile_mode: int | None = None) -> tuple[Any, Any]:
    """One ×2 (or final) stage: upsample, encode, sample patch by patch, decode to a scratch array;
    returns (that array, how the prompts were encoded)."""
    import numpy as np
    import torch
    from PIL import Image
    from diffusers.utils.torch_utils import randn_tensor

    from studio.schedulers import make_scheduler
    from studio.upscale.files import discard, scratch_array
    from studio.upscale.sampler import GuidancePlan, sample
    from studio.upscale.tiles import decode_tiled, encode_tiled

    width, height = stage.size
    # 1. The guidance: the current image, Lanczos-upsampled, encoded in tiles -> z0 (1, C, H/8, W/8)
    source = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    upsampled = np.asarray(source.resize((width, height), Image.LANCZOS))  # (H, W, 3) uint8
    vae_tile = pipe.vae.config.sample_size // 8 if isinstance(pipe.vae.config.sample_size, int) else patch.size
    with torch.no_grad(), full_precision_vae(pipe.vae):
        z0 = encode_tiled(pipe.vae, upsampled, tile=vae_tile, overlap=max(1, vae_tile // 8),
                          on_tile=lambda i, n: progress.report(f"{stage.label()} · encoding tile {i} of {n}"),
                          should_stop=lambda: progress.stop)
    # 2. Noise, sampler, prompts and the denoiser of one patch batch
    generator = torch.Generator("cpu").manual_seed(request.seed + stage.index)
    noise = randn_tensor(z0.shape, generator=generator, dtype=torch.float32)  # ε, drawn first as in img2img
    scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)  # our own: the shared one stays as it was
    scheduler.set_timesteps(request.num_inference_steps)
    first = request.num_inference_steps - request.steps_run
    timesteps = scheduler.timesteps[first * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first * scheduler.order)
    denoise, prompt_details = make_denoiser(pipe, request, scheduler, (height, width), upsampled, tile_mode)
    guidance = GuidancePlan(stage.slider, request.phase_weight if request.phase_fusion else None,
                            request.chess_mask, 4 if request.laplacian_fusion else None)

    def on_patch(step: int, done: int, total: int, x: Any) -> bool:
        where = f"{stage.label()} · step {step + 1} of {len(timesteps)} · patch {done} of {total}"
        return progress.report(where, x, advance=1)

    with torch.no_grad():
        latents = sample(denoise, scheduler, z0, noise, timesteps, patch, guidance, generator, on_patch)
    del z0, noise
    # 3. Decode in tiles into an array on disk, row band by row band
    out = scratch_array(height, width, scratch)
    try:
        with torch.no_grad(), full_precision_vae(pipe.vae):
            decode_tiled(pipe.vae, latents, out, tile=vae_tile, overlap=max(1, vae_tile // 8),
                         on_tile=lambda i, n: progress.report(f"{stage.label()} · decoding tile {i} of {n}"),
                         should_stop=lambda: progress.stop)
    except BaseException:
        discard(out)
        raise
    return out, prompt_details


@contextmanager
def full_precision_vae(vae: Any):
    """Run a VAE whose config asks for it (`force_upcast`: SDXL's original VAE overflows in fp16)
    in float32, as diffusers' SDXL pipelines do; the fp16-fix VAE stays in fp16."""
    import torch

    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(dtype)


def make_denoiser(pipe: Any, request: UpscaleRequest, scheduler: Any, canvas_px: tuple[int, int],
                  upsampled: Any, tile_mode: int | None) -> tuple[Any, Any]:
    """(denoise(x, t, boxes) for sampler.sample, the prompt details): the UNet on a batch of patches
    with classifier-free guidance, SDXL micro-conditioning from each patch's true crop in the
    canvas, and the tile ControlNet's residuals when one is used."""
    import torch

    from studio.pipelines.sampling import prompt_inputs

    device, dtype = pipe._execution_device, pipe.unet.dtype
    cfg = request.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None  # as diffusers decides
    kwargs, prompt_details = prompt_inputs(pipe, request.prompt, request.negative_prompt)
    encoded = pipe.encode_prompt(**{"prompt": None, **kwargs}, device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=cfg)
    sdxl = len(encoded) == 4  # SDXL: (embeds, negative, pooled, negative pooled); SD1.5: (embeds, negative)
    embeds = torch.cat([encoded[1], encoded[0]]) if cfg else encoded[0]  # (1 or 2, 77·n, D): [negative, positive]
    pooled = (torch.cat([encoded[3], encoded[2]]) if cfg else encoded[2]) if sdxl else None
    control = tile_control(pipe, request.tile_weight, upsampled, tile_mode) if request.tile_controlnet else None
    height, width = canvas_px

    @torch.no_grad()
    def denoise(xs: Any, t: Any, boxes: Any) -> Any:
        k, rows = xs.shape[0], 2 if cfg else 1
        x_in = xs.to(device, dtype)
        x_in = scheduler.scale_model_input(torch.cat([x_in] * rows), t)  # (rows·k, C, ph, pw)
        hidden = embeds.repeat_interleave(k, dim=0)
        added = None
        if sdxl:  # original = the whole canvas, crop = where the patch lies in it, target = the patch
            ids = [[height, width, a * 8, b * 8, (c - a) * 8, (d - b) * 8] for a, b, c, d in boxes]
            added = {"text_embeds": pooled.repeat_interleave(k, dim=0),
                     "time_ids": torch.tensor(ids * rows, device=device, dtype=dtype)}
        residuals = control(x_in, t, hidden, added, boxes, rows) if control else {}
        eps = pipe.unet(x_in, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False,
                        **residuals)[0]
        if cfg:
            uncond, text = eps.chunk(2)
            eps = uncond + request.guidance_scale * (text - uncond)
        return eps.float().cpu()

    return denoise, prompt_details


def tile_control(pipe: Any, weight: float, upsampled: Any, union_mode: int | None) -> Any:
    """The tile ControlNet's residuals for a patch batch: its hint is the upsampled image under the
    patch (Edify Image / InvokeAI-style structure preservation). A Union model runs in its tile mode."""
    import torch

    net = pipe.controlnet

    def residuals(x_in: Any, t: Any, hidden: Any, added: Any, boxes: Any, rows: int) -> dict:
        crops = [torch.from_numpy(upsampled[a * 8:c * 8, b * 8:d * 8].copy()) for a, b, c, d in boxes]
        hint = torch.stack(crops).permute(0, 3, 1, 2).to(x_in.device, x_in.dtype) / 255  # (k, 3, ph·8, pw·8)
        hint = torch.cat([hint] * rows)
        if union_mode is None:
            down, mid = net(x_in, t, encoder_hidden_states=hidden, controlnet_cond=hint, conditioning_scale=weight,
                            added_cond_kwargs=added, return_dict=False)
        else:
            kinds = torch.zeros(x_in.shape[0], net.config.num_control_type, device=x_in.device, dtype=x_in.dtype)
            kinds[:, union_mode] = 1
            down, mid = net(x_in, t, encoder_hidden_states=hidden, controlnet_cond=[hint], control_type=kinds,
                            control_type_idx=[union_mode], conditioning_scale=weight, added_cond_kwargs=added,
                            return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    return residuals


def _latent_preview(pipe: Any, latents: Any) -> list:
    """A cheap look at the canvas being denoised: the latents pooled to ≤ 64 px, mapped to colours."""
    import torch.nn.functional as F

    from studio.pipelines.previews import latent_to_rgb_map, preview_images

    factor = max(1, max(latents.shape[-2:]) // 64)
    return preview_images(F.avg_pool2d(latents.float(), factor, ceil_mode=True), *latent_to_rgb_map(pipe.vae),
                          max_side=512)

