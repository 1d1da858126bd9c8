"""Metric depth estimation for the lens blur: a depth map in metres from one image.

Real users get a Depth Anything V2 metric checkpoint from the Hub (for example
`depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf`); tests and offline runs get a tiny,
randomly initialised model of the same class (`DepthAnythingForDepthEstimation`), saved with
`save_pretrained` and read back through the same `load_depth_estimator` path. The tiny model's
depth maps vary across the image but mean nothing.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_DEPTH_M = 0.05  # clamp so that 1 / depth (disparity, used by the lens blur) stays finite
TINY_INPUT = 56  # the tiny model's input side in pixels: 4 patches of 14
METRIC_EXAMPLE = "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf"


def build_tiny_depth():
    """A metric `DepthAnythingForDepthEstimation` with random weights (seeded), and its processor.

    The shapes follow Depth Anything V2 small (Dinov2 backbone, patch 14, four reassembled
    layers, DPT fusion, sigmoid head scaled by `max_depth`) at a few channels each.
    """
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    # With the usual 0.02 the signal fades through the layers and the sigmoid head answers
    # max_depth / 2 everywhere (std ~1e-7 m); 0.15 spreads the random map over ~1-18 m.
    init_std = 0.15
    backbone = Dinov2Config(
        image_size=TINY_INPUT,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_indices=[1, 2, 3, 4],  # one feature map per reassemble layer
        reshape_hidden_states=False,  # Depth Anything reshapes the tokens itself
        initializer_range=init_std,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,  # = the backbone's hidden size
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="metric",
        max_depth=20,  # metres; the indoor checkpoints use 20, the outdoor ones 80
        initializer_range=init_std,
    )
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(config).eval()
    # The same preprocessing as the real checkpoints, at 56 px instead of 518.
    processor = DPTImageProcessor(
        size={"height": TINY_INPUT, "width": TINY_INPUT},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return model, processor


def save_tiny_depth(folder: str | Path) -> None:
    """Write the tiny depth model and its processor into `folder` (safetensors weights)."""
    model, processor = build_tiny_depth()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def check_metric(model) -> None:
    """Raise ValueError unless `model` predicts metric depth (Depth Anything with a metric head)."""
    kind = getattr(model.config, "depth_estimation_type", None)
    if kind != "metric":
        name = model.config.name_or_path or type(model).__name__
        raise ValueError(
            f"the depth model must be metric (config.depth_estimation_type == 'metric', e.g. {METRIC_EXAMPLE}), "
            f"but {name} has depth_estimation_type={kind!r}: relative models predict unitless disparity, not metres"
        )


def load_depth_estimator(source: str, device: str = "cpu", dtype: str = "float32"):
    """A transformers depth-estimation pipeline from a Hub id or a local folder (the one loading path)."""
    import torch
    from transformers import pipeline

    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    estimator = pipeline("depth-estimation", model=source, device=device, dtype=getattr(torch, dtype))
    check_metric(estimator.model)
    return estimator


def estimate_depth_m(estimator, image, min_depth_m: float = MIN_DEPTH_M) -> np.ndarray:
    """Depth in metres of each pixel of PIL `image`: float32 (H, W), every value >= `min_depth_m`.

    Uses the pipeline's raw `predicted_depth` (metres for a metric model), not its `depth` image,
    which is rescaled to 0-255 per image. A relative model predicts disparity (larger = nearer)
    in no unit, which the lens blur cannot use: it is refused with a ValueError.
    """
    import cv2

    check_metric(estimator.model)
    width, height = image.size
    # The pipeline resizes the prediction to the input size (bicubic for DPT-style processors).
    depth = estimator(image.convert("RGB"))["predicted_depth"].float().cpu().numpy()
    if depth.shape != (height, width):
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_LINEAR)
    # Bicubic resizing can overshoot below 0 near edges; the clamp also keeps 1 / depth finite.
    return np.maximum(depth, min_depth_m).astype(np.float32)
