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
    assert result.details.prompt_encoding.handling.startswith("chunked")
    assert result.images[0].size == (1024, 1024)


def test_lightning_loads_as_an_adapter_on_sdxl_base(gpu_manager):
    from studio.pipelines.txt2img import Txt2ImgRequest, run

    req = Txt2ImgRequest(prompt="a red apple on a white table, studio photo", num_inference_steps=4,
                         guidance_scale=0.0, seed=0, scheduler="Euler trailing", model="sdxl-lightning")
    image = np.asarray(run(req, gpu_manager).images[0], dtype=np.float32)
    assert "sdxl-base" in gpu_manager.loaded() and gpu_manager.adapters("sdxl-base") == ["sdxl-lightning"]
    assert image.std() > 20 and image[..., 0].mean() > image[..., 1].mean()


def test_pitch_puts_sky_above_the_horizon(gpu_manager):
    from studio.pipelines.txt2img import Txt2ImgRequest, run

    # Looking up 10° through 50 mm at 1024 px: the horizon at 512 + 1422·tan(10°) ≈ row 763.
    req = Txt2ImgRequest(prompt="a wide open plain under a clear sky, photo", seed=3, num_inference_steps=20,
                         model="sdxl-base", camera_pitch=10.0, focal_length_mm=50.0)
    image = np.asarray(run(req, gpu_manager).images[0], dtype=np.float32)
    sky, ground = image[:700], image[830:]
    assert sky[..., 2].mean() > ground[..., 2].mean() and sky.mean() > ground.mean()  # bluer, brighter


def test_metric_depth_is_in_metres(gpu_manager):
    from PIL import Image

    from studio.models.depth import estimate_depth_m

    # A floor receding to a wall: depth grows from the bottom of the picture to its middle.
    y = np.linspace(0, 1, 384)[:, None, None]
    image = Image.fromarray((np.clip(0.3 + 0.6 * y, 0, 1) * np.ones((384, 512, 3)) * 255).astype(np.uint8))
    with gpu_manager.lease(None, purpose="depth estimation") as lease:
        name, estimator = lease.depth_estimator()
        depth = estimate_depth_m(estimator, image)
    assert name == "depth-anything-v2-metric-outdoor-small"
    assert depth.shape == (384, 512) and 0.1 < np.median(depth) < 80


@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_lora_training_on_cuda_in_mixed_precision_resumes(gpu_manager, tmp_path, mixed_precision):
    """Training's CUDA path (autocast, fp16's loss scaler, gradient checkpointing, the frozen model in
    half precision) on the tiny model: finite losses, a LoRA file, and a Stop + resume that ends on the
    same step count with the scaler state restored (GPU kernels are not bitwise deterministic, so the
    weights are compared loosely)."""
    from PIL import Image
    from safetensors.torch import load_file

    from studio.training.config import TrainConfig
    from studio.training.lora_train import train

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    config = TrainConfig(model="tiny", trigger_word="sks", max_train_steps=8, checkpoint_every=4, batch_size=2,
                         learning_rate=1e-3, mixed_precision=mixed_precision, gradient_checkpointing=True)
    whole = train(config, images, None, gpu_manager, tmp_path / "whole")
    assert whole.state == "done" and all(np.isfinite(whole.losses)) and len(whole.losses) == 8
    stopped = train(config, images, None, gpu_manager, tmp_path / "split", on_step=lambda e: e.step == 4)
    assert stopped.state == "stopped" and stopped.steps_done == 4
    if mixed_precision == "fp16":
        assert any((tmp_path / "split").glob("checkpoint-*/scaler.json"))
    resumed = train(config, images, None, gpu_manager, tmp_path / "split")
    assert resumed.state == "done" and resumed.losses[:4] == stopped.losses
    a, b = load_file(whole.lora_path), load_file(resumed.lora_path)
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 5e-2
