"""Real models on a real GPU (skipped without CUDA): the same paths the tiny tests cover."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_manager(registry, tiny_cache):
    from studio.models.manager import ModelManager

    return ModelManager(registry, cache_dir=tiny_cache)  # real probe, real Hub


def test_sdxl_turbo_one_step(gpu_manager):
    from studio.pipelines.txt2img import Txt2ImgRequest, run

    req = Txt2ImgRequest(prompt="a red apple on a white table, studio photo", width=512, height=512,
                         num_inference_steps=1, guidance_scale=0.0, seed=0, scheduler="Euler a",
                         model="sdxl-turbo")
    result = run(req, gpu_manager)
    pipe = gpu_manager.pipeline("sdxl-turbo")
    assert str(pipe.unet.dtype) == "torch.float16"
    image = np.asarray(result.images[0], dtype=np.float32)
    assert image.shape == (512, 512, 3)
    red, green = image[..., 0].mean(), image[..., 1].mean()
    assert image.std() > 20 and red > green  # a real, mostly red-tinted picture, not noise or black


def test_sdxl_base_long_prompt(gpu_manager):
    from studio.pipelines.txt2img import Txt2ImgRequest, run

    prompt = ", ".join(["a cozy cabin in a snowy pine forest at night"] * 6)
    req = Txt2ImgRequest(prompt=prompt, width=1024, height=1024, num_inference_steps=20, seed=1,
                         model="sdxl-base", scheduler="DPM++ 2M Karras")
    result = run(req, gpu_manager)
    assert result.metadata["prompt_handling"].startswith("chunked")
    assert result.images[0].size == (1024, 1024)
