"""Learned detectors that draw ControlNet hint images from a photo: controlnet-aux's line art model.

Real users get lllyasviel's weights from the Hub (`lllyasviel/Annotators`: `sk_model.pth` draws
fine lines, `sk_model2.pth` coarse ones); tests and offline runs get "tiny-lineart", the same
architecture (`controlnet_aux.lineart.Generator`) with seeded random weights saved as safetensors,
whose lines mean nothing. Weights are read as tensors only: safetensors, or
`torch.load(weights_only=True)` for the Hub's .pth files; nothing is unpickled.

torch and controlnet-aux are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LINEART_WEIGHTS = ("sk_model", "sk_model2")  # file stems: fine lines, coarse lines
DETECT_RESOLUTION = 512  # the short side the detector sees, as in controlnet-aux


def hub_files(kind: str) -> tuple[str, ...]:
    """The weight files of an annotator of `kind` in its Hub repo."""
    if kind != "lineart":
        raise ValueError(f"annotator kind must be 'lineart', got {kind!r}")
    return tuple(f"{stem}.pth" for stem in LINEART_WEIGHTS)


def build_lineart_generator():
    """The line art network of controlnet-aux, with the 3 residual blocks of lllyasviel's checkpoints."""
    import warnings

    with warnings.catch_warnings():
        # controlnet-aux's package init imports every detector, which warns about optional extras
        # (mediapipe) that the line art one does not use.
        warnings.simplefilter("ignore", UserWarning)
        from controlnet_aux.lineart import Generator

    return Generator(input_nc=3, output_nc=1, n_residual_blocks=3)


def save_tiny_lineart(folder: str | Path) -> None:
    """Write two seeded random line art networks (fine, coarse) into `folder` as safetensors."""
    import torch
    from safetensors.torch import save_file

    for seed, stem in enumerate(LINEART_WEIGHTS):
        torch.manual_seed(seed)
        save_file(build_lineart_generator().state_dict(), str(Path(folder) / f"{stem}.safetensors"))


def read_weights(source: str, stem: str) -> dict:
    """The state dict `stem` from a local folder (safetensors, else .pth) or a Hub repo (.pth)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(source)
    if folder.is_dir():
        if (folder / f"{stem}.safetensors").is_file():
            return load_file(str(folder / f"{stem}.safetensors"))
        path = folder / f"{stem}.pth"
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, f"{stem}.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


class LineartAnnotator:
    """Draws white lines on black from a photo, as controlnet-aux's `lineart` (and `lineart_coarse`)."""

    def __init__(self, fine, coarse):
        self.fine = fine
        self.coarse = coarse

    def __call__(self, image: Image.Image, coarse: bool = False, resolution: int = DETECT_RESOLUTION) -> Image.Image:
        """The line image of `image`, an RGB image of the same size. The network sees the image
        scaled so that its short side is `resolution` pixels."""
        import torch

        model = self.coarse if coarse else self.fine
        parameter = next(model.parameters())
        width, height = image.size
        scale = resolution / min(width, height)
        # The network halves the image twice and doubles it back: sides must be multiples of 4.
        size = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
        pixels = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255.0  # (H, W, 3)
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)  # (1, 3, H, W)
        with torch.inference_mode():
            sketch = model(x)[0, 0].float().clamp(0, 1).cpu().numpy()  # (H, W): 1 is paper, 0 is ink
        lines = np.round((1.0 - sketch) * 255.0).astype(np.uint8)  # inverted: white lines on black
        return Image.fromarray(lines).resize((width, height), Image.BILINEAR).convert("RGB")


def load_lineart(source: str, device: str = "cpu", dtype: str = "float32") -> LineartAnnotator:
    """The line art annotator from a Hub repo id or a local folder (the one loading path)."""
    import torch

    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    models = []
    for stem in LINEART_WEIGHTS:
        model = build_lineart_generator()
        model.load_state_dict(read_weights(source, stem))
        models.append(model.eval().to(device, getattr(torch, dtype)))
    return LineartAnnotator(*models)
