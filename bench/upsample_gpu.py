"""The upsampler at full size on a GPU: SDXL's real UNet and VAE architectures, randomly initialised.

No weights are needed (and none can be downloaded where this runs): the UNet and VAE are built
from SDXL's published configurations written out below, in fp16 on CUDA, so speed and memory are
those of the real model; the pixels are noise. Two measurements, printed in one run:

1. time of 1024² → 4096² in two ×2 stages (tiled encode, patch sampler, streaming tiled decode),
   30 DDIM steps, classifier-free guidance (batch 2 per patch), against UltraPixel's published
   A100 figure for 4096² (52 + 26 + 128 s = 206 s, Ren et al. 2024, Table 4);
2. peak GPU memory (torch.cuda.max_memory_allocated) of sampling a 16384² canvas (2048² latents)
   for one step, and of one UNet call: the two are about equal when memory is bounded per call.

    python bench/upsample_gpu.py [--steps 30] [--patch-batch 4] [--skip-16k]

Without CUDA it says so and exits 0 (CI has no GPU). Untested here: written for the device machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: there is no package install

import numpy as np  # noqa: E402
import torch  # noqa: E402

ULTRAPIXEL_A100_4096_S = 52 + 26 + 128  # seconds for 4096², UltraPixel's A100 figure


def sdxl_unet():
    """SDXL 1.0 base's UNet architecture (its config.json), randomly initialised."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)


def sdxl_vae():
    """SDXL's VAE architecture (sdxl-vae-fp16-fix's config), randomly initialised."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
        scaling_factor=0.13025, force_upcast=False)


def denoiser(unet, canvas_px: tuple[int, int], guidance_scale: float = 6.0):
    """The UNet on a patch batch with CFG and per-patch SDXL crop conditioning (as the pipeline does),
    with zero text embeddings of the real shapes."""
    device, dtype = unet.device, unet.dtype
    height, width = canvas_px

    @torch.no_grad()
    def denoise(xs, t, boxes):
        k = xs.shape[0]
        x_in = torch.cat([xs.to(device, dtype)] * 2)
        ids = [[height, width, a * 8, b * 8, (c - a) * 8, (d - b) * 8] for a, b, c, d in boxes] * 2
        added = {"text_embeds": torch.zeros(2 * k, 1280, device=device, dtype=dtype),
                 "time_ids": torch.tensor(ids, device=device, dtype=dtype)}
        hidden = torch.zeros(2 * k, 77, 2048, device=device, dtype=dtype)
        eps = unet(x_in, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
        uncond, text = eps.chunk(2)
        return (uncond + guidance_scale * (text - uncond)).float().cpu()

    return denoise


def scheduler_for(steps: int):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading")
    scheduler.set_timesteps(steps)
    return scheduler


def stage(unet, vae, image: np.ndarray, size: int, steps: int, slider: int, batch: int, scratch: Path) -> np.ndarray:
    """One ×2 stage at `size`² as the pipeline runs it; returns the decoded array (on disk)."""
    from PIL import Image

    from studio.upscale.files import scratch_array
    from studio.upscale.sampler import GuidancePlan, PatchPlan, sample
    from studio.upscale.tiles import decode_tiled, encode_tiled

    upsampled = np.asarray(Image.fromarray(np.asarray(image)).resize((size, size), Image.LANCZOS))
    with torch.no_grad():
        z0 = encode_tiled(vae, upsampled, tile=128, overlap=16)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=generator)
    scheduler = scheduler_for(steps)
    latents = sample(denoiser(unet, (size, size)), scheduler, z0, noise, scheduler.timesteps,
                     PatchPlan.for_unet(128, batch), GuidancePlan(slider), generator)
    out = scratch_array(size, size, scratch)
    with torch.no_grad():
        decode_tiled(vae, latents, out, tile=128, overlap=16)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--patch-batch", type=int, default=4)
    parser.add_argument("--skip-16k", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU: nothing measured")
        return
    import tempfile

    from studio.upscale.sampler import GuidancePlan, PatchPlan, sample, unet_calls

    torch.manual_seed(0)
    unet, vae = sdxl_unet().to("cuda", torch.float16).eval(), sdxl_vae().to("cuda", torch.float16).eval()
    scratch = Path(tempfile.mkdtemp(prefix="studio-bench-"))
    image = (np.random.default_rng(0).random((1024, 1024, 3)) * 255).astype(np.uint8)

    # 1. 1024² -> 2048² -> 4096², sliders 40 % then 60 % of the steps (the upscale tab's defaults)
    torch.cuda.synchronize()
    start = time.perf_counter()
    first = stage(unet, vae, image, 2048, args.steps, round(0.4 * args.steps), args.patch_batch, scratch)
    final = stage(unet, vae, first, 4096, args.steps, round(0.6 * args.steps), args.patch_batch, scratch)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    calls = sum(unet_calls(s // 8, s // 8, PatchPlan.for_unet(128, args.patch_batch), args.steps) for s in (2048, 4096))
    print(f"1024² -> 4096² ({final.shape[1]}×{final.shape[0]}), {args.steps} steps, {calls} UNet calls: {seconds:.1f} s "
          f"(UltraPixel on an A100: {ULTRAPIXEL_A100_4096_S} s; ratio {seconds / ULTRAPIXEL_A100_4096_S:.2f})")

    # 2. peak GPU memory: one UNet call, then one step over a 16384² canvas
    denoise = denoiser(unet, (16384, 16384))
    torch.cuda.reset_peak_memory_stats()
    denoise(torch.randn(args.patch_batch, 4, 128, 128), torch.tensor(500), [(0, 0, 128, 128)] * args.patch_batch)
    per_call = torch.cuda.max_memory_allocated() / 2**30
    print(f"peak GPU memory of one UNet call ({args.patch_batch} patches of 128² latents, CFG): {per_call:.2f} GiB")
    if not args.skip_16k:
        torch.cuda.reset_peak_memory_stats()
        z0 = torch.randn(1, 4, 2048, 2048)
        scheduler = scheduler_for(args.steps)
        start = time.perf_counter()
        sample(denoise, scheduler, z0, torch.randn_like(z0), scheduler.timesteps[:1],
               PatchPlan.for_unet(128, args.patch_batch), GuidancePlan(1), torch.Generator().manual_seed(0))
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"16384² canvas, one step ({time.perf_counter() - start:.1f} s): peak GPU memory {peak:.2f} GiB "
              f"(weights {torch.cuda.memory_allocated() / 2**30:.2f} GiB); the canvas itself stays in CPU memory")


if __name__ == "__main__":
    main()
