"""Ways to pull a high-resolution latent towards a guide (the upscaled, re-noised base image).

Pixelsmith (Tragakis et al. 2024) guides the early steps of a patch sampler with the noised
upscaled base latent: its *Slider* fuses the two in Fourier space, keeping the sample's amplitude
and mixing the phases (phase carries structure, amplitude carries texture), and a random
chess-board mask hands half the pixels to the guide each step. `band_fusion` is an alternative
inspired by Edify Image's Laplacian diffusion (NVIDIA 2024): frequency bands are released from
the guide at different times, the finest first. All tensors are (B, C, h, w) latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noised_guidance(alphas_cumprod: torch.Tensor, t: int | torch.Tensor, z0: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """Forward process q(z_t | z_0), Eq. 4 of Ho et al. (2020): g_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε.

    Same as diffusers' `scheduler.add_noise` for DDPM-type schedulers; works on a patch slice.
    """
    if z0.shape != noise.shape:
        raise ValueError(f"`noise` has to have the shape of `z0` {tuple(z0.shape)} but has "
                         f"{tuple(noise.shape)}.")
    alpha_bar = alphas_cumprod.to(device=z0.device, dtype=torch.float32)[t]  # ()
    z = alpha_bar.sqrt() * z0.float() + (1 - alpha_bar).sqrt() * noise.float()
    return z.to(z0.dtype)


def unit_phasor(spectrum: torch.Tensor) -> torch.Tensor:
    """e^{iφ} of a complex tensor; 1 (phase 0, as torch.angle) where the amplitude is 0."""
    amplitude = spectrum.abs()
    safe = torch.where(amplitude > 0, amplitude, torch.ones_like(amplitude))
    return torch.where(amplitude > 0, spectrum / safe, torch.ones_like(spectrum))


def phase_fusion(x: torch.Tensor, guide: torch.Tensor, weight: float) -> torch.Tensor:
    """Keep x's Fourier amplitude; take the weighted circular mean of x's and guide's phases.

    Per channel, X = rfft2(x): result = irfft2(|X|·e^{iφ}) with φ = angle((1−w)·e^{iφx} + w·e^{iφg})
    (Pixelsmith's Slider, Tragakis et al. 2024). Both phase maps are odd in frequency, so the
    mixed spectrum stays Hermitian and the result is real. Computed in float32.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"`weight` has to be in [0, 1] but is {weight}.")
    if x.shape != guide.shape:
        raise ValueError(f"`guide` has to have the shape of `x` {tuple(x.shape)} but has "
                         f"{tuple(guide.shape)}.")
    if weight == 0:
        return x.clone()
    size = x.shape[-2:]  # (h, w)
    spec_x = torch.fft.rfft2(x.float(), s=size)  # (B, C, h, w // 2 + 1) complex
    spec_g = torch.fft.rfft2(guide.float(), s=size)
    phase_x = unit_phasor(spec_x)
    mixed = (1 - weight) * phase_x + weight * unit_phasor(spec_g)
    # Where the mean vanishes (opposite phases at w = 0.5) it has no angle: keep x's phase.
    phase = torch.where(mixed.abs() > 0, unit_phasor(mixed), phase_x)
    fused = torch.fft.irfft2(spec_x.abs() * phase, s=size)  # (B, C, h, w)
    return fused.to(x.dtype)


def chess_mask(height: int, width: int, parity: int, cell: int = 1) -> torch.Tensor:
    """(height, width) bool checkerboard of `cell`-sized squares; True where (row + col) % 2 == parity."""
    if parity not in (0, 1):
        raise ValueError(f"`parity` has to be 0 or 1 but is {parity}.")
    if cell < 1:
        raise ValueError(f"`cell` has to be >= 1 but is {cell}.")
    rows = torch.arange(height)[:, None] // cell  # (h, 1)
    cols = torch.arange(width)[None, :] // cell  # (1, w)
    return (rows + cols) % 2 == parity


def random_parity(generator: torch.Generator | None) -> int:
    """0 or 1, uniform, from a CPU generator: which squares of the chess mask go to the guide."""
    return int(torch.randint(0, 2, (1,), generator=generator).item())


def apply_chess(x: torch.Tensor, guide: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A new tensor: `guide` where the (h, w) `mask` is True, `x` elsewhere (over all B and C)."""
    if mask.shape != x.shape[-2:]:
        raise ValueError(f"`mask` has to have shape {tuple(x.shape[-2:])} but has "
                         f"{tuple(mask.shape)}.")
    return torch.where(mask.to(x.device), guide, x)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Halve (rounding up) with 2x2 average pooling: (B, C, h, w) -> (B, C, ⌈h/2⌉, ⌈w/2⌉)."""
    return F.avg_pool2d(x, kernel_size=2, ceil_mode=True)


def upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to exactly `size` = (h, w)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid (Burt & Adelson 1983): band-pass bands finest first, then the low-pass.

    band_k = x_k − up(down(x_k)), x_{k+1} = down(x_k). `levels` is the number of band-pass
    bands, cut short once the low-pass is 1x1; the list has levels + 1 items.
    """
    if levels < 1:
        raise ValueError(f"`levels` has to be >= 1 but is {levels}.")
    if x.ndim != 4:
        raise ValueError(f"`x` has to be (B, C, h, w) but has shape {tuple(x.shape)}.")
    bands = []
    current = x
    while len(bands) < levels and current.shape[-2:] != (1, 1):
        coarse = downsample(current)
        bands.append(current - upsample(coarse, current.shape[-2:]))
        current = coarse
    return bands + [current]


def reconstruct(bands: list[torch.Tensor]) -> torch.Tensor:
    """Invert `laplacian_pyramid` exactly: x_k = up(x_{k+1}) + band_k, coarsest first."""
    current = bands[-1]
    for band in reversed(bands[:-1]):
        current = upsample(current, band.shape[-2:]) + band
    return current


def release_points(levels: int) -> list[float]:
    """Progress at which each pyramid item stops coming from the guide: (k + 1) / (levels + 1).

    Items k = 0 (finest band) … levels (low-pass); the low-pass is released at 1.0, i.e. it is
    guided for the whole guided phase.
    """
    if levels < 1:
        raise ValueError(f"`levels` has to be >= 1 but is {levels}.")
    return [(k + 1) / (levels + 1) for k in range(levels + 1)]


def band_fusion(x: torch.Tensor, guide: torch.Tensor, progress: float,
                levels: int = 4) -> torch.Tensor:
    """Laplacian band fusion: each frequency band comes from the guide until its release point.

    Inspired by Edify Image's Laplacian diffusion (NVIDIA 2024), where bands of different
    frequencies are attenuated at different rates. With L levels (after clamping to the canvas
    size) and progress p in [0, 1], the fraction of guided steps done, band k is taken from
    `guide` while p < (k + 1) / (L + 1) and from `x` after: the finest band is released first at
    1/(L+1), the coarsest band-pass at L/(L+1), and the low-pass at 1. So p = 0 returns `guide`
    and p >= 1 returns `x`; in between, detail is the sample's own while layout stays guided.
    """
    if x.shape != guide.shape:
        raise ValueError(f"`guide` has to have the shape of `x` {tuple(x.shape)} but has "
                         f"{tuple(guide.shape)}.")
    if progress < 0:
        raise ValueError(f"`progress` has to be >= 0 but is {progress}.")
    bands_x = laplacian_pyramid(x.float(), levels)
    bands_g = laplacian_pyramid(guide.float(), levels)
    from_guide = [progress < r for r in release_points(len(bands_x) - 1)]
    if not any(from_guide):
        return x.clone()
    if all(from_guide):
        return guide.clone()
    mixed = [g if use_guide else b for b, g, use_guide in zip(bands_x, bands_g, from_guide)]
    return reconstruct(mixed).to(x.dtype)
