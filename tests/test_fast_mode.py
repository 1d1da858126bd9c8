"""Fast (draft) models shipped as LoRAs: loaded as adapters on the loaded base, switched per request.

"tiny-fast" is a random LoRA ("builtin:tiny-lora") on the tiny SDXL model, so these run on CPU.
"""

from __future__ import annotations

import numpy as np

from studio.pipelines.txt2img import Txt2ImgRequest, run
from studio.schedulers import make_scheduler

# Both models get the same request, so any pixel difference comes from the LoRA.
DRAFT = dict(prompt="a red lighthouse on a cliff", width=64, height=64, num_inference_steps=1,
             guidance_scale=0.0, scheduler="Euler trailing", seed=1234, batch_size=1)


def pixels(model: str, manager) -> np.ndarray:
    result = run(Txt2ImgRequest(**DRAFT, model=model), manager)
    return np.stack([np.asarray(im, dtype=np.int16) for im in result.images])


def test_one_step_draft_runs(manager):
    result = run(Txt2ImgRequest(**DRAFT, model="tiny-fast"), manager)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.steps_done == 1
    image = np.asarray(result.images[0], dtype=np.float32)
    assert np.isfinite(image).all() and image.std() > 0


def test_adapter_is_loaded_on_the_base_not_as_a_second_model(manager):
    with manager.lease("tiny"):
        pass
    with manager.lease("tiny-fast"):
        pass
    assert manager.loaded() == ["tiny"]
    assert manager.adapters("tiny") == ["tiny-fast"]
    assert manager.pipeline("tiny-fast").unet is manager.pipeline("tiny").unet


def test_lora_changes_the_output(manager):
    assert not np.array_equal(pixels("tiny", manager), pixels("tiny-fast", manager))


def test_switching_back_restores_the_base_exactly(manager):
    before = pixels("tiny", manager)
    pixels("tiny-fast", manager)
    assert np.array_equal(pixels("tiny", manager), before)


def test_registry_lora_entries_are_consistent(registry):
    loras = [m for m in registry.models if m.lora is not None]
    assert {m.name for m in loras} >= {"sdxl-lightning", "lcm-lora-sdxl", "tiny-fast"}
    for m in loras:
        base = registry.get(m.lora.base)
        assert base.role == "base" and base.lora is None and base.family == m.family, m.name
    lightning, lcm = registry.get("sdxl-lightning"), registry.get("lcm-lora-sdxl")
    assert lightning.repo_id == "ByteDance/SDXL-Lightning"
    assert lightning.lora.weight_name == "sdxl_lightning_4step_lora.safetensors"
    assert lcm.repo_id == "latent-consistency/lcm-lora-sdxl"
    for m in registry.models:
        if m.draft is not None:
            draft = registry.get(m.draft)
            assert draft.lora is not None and draft.defaults.num_inference_steps <= 8, m.name


def test_few_step_schedulers_build_from_the_model_config(manager):
    config = manager.pipeline("tiny").scheduler.config
    trailing = make_scheduler("Euler trailing", config)
    assert type(trailing).__name__ == "EulerDiscreteScheduler"
    assert trailing.config.timestep_spacing == "trailing"
    assert trailing.config.beta_schedule == config.beta_schedule  # the model's training betas are kept
    trailing.set_timesteps(1)
    assert int(trailing.timesteps[0]) == 999  # one step starts from pure noise, as Lightning needs
    lcm = make_scheduler("LCM", config)
    assert type(lcm).__name__ == "LCMScheduler"
    assert lcm.config.beta_end == config.beta_end
