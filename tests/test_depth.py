"""Metric depth estimation with the tiny Depth Anything model, loaded from disk like a Hub model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.models.depth import MIN_DEPTH_M, build_tiny_depth, estimate_depth_m, load_depth_estimator
from studio.models.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def estimator(tiny_cache):
    path = ensure_tiny_model("tiny-depth", tiny_cache)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "preprocessor_config.json").is_file()
    return load_depth_estimator(str(path))


def gradient_image(width: int, height: int) -> Image.Image:
    """A smooth colour ramp, so the model sees structure rather than a flat colour."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def test_tiny_model_is_metric_depth_anything(estimator):
    assert type(estimator.model).__name__ == "DepthAnythingForDepthEstimation"
    assert estimator.model.config.depth_estimation_type == "metric"


def test_depth_map_has_the_image_size_and_is_metres(estimator):
    depth = estimate_depth_m(estimator, gradient_image(96, 64))
    assert depth.shape == (64, 96)
    assert depth.dtype == np.float32
    assert np.isfinite(depth).all()
    assert depth.min() >= MIN_DEPTH_M
    assert depth.max() <= estimator.model.config.max_depth * 1.1  # sigmoid head; bicubic may overshoot a bit
    assert depth.std() > 0.01, "the random model should still vary over the image"


def test_depth_is_deterministic(estimator):
    image = gradient_image(96, 64)
    np.testing.assert_array_equal(estimate_depth_m(estimator, image), estimate_depth_m(estimator, image))


def test_relative_model_is_refused(tmp_path):
    model, processor = build_tiny_depth()
    model.config.depth_estimation_type = "relative"  # saved as a relative (disparity) model
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="must be metric.*'relative'"):
        load_depth_estimator(str(tmp_path))


def test_bad_dtype_is_refused(tiny_cache):
    with pytest.raises(ValueError, match="dtype must be"):
        load_depth_estimator(str(ensure_tiny_model("tiny-depth", tiny_cache)), dtype="float64")
