"""LoRA training core: config checks, buckets and data order, the objective, checkpoints and the
finished LoRA file on the tiny SDXL model (64 px, CPU, a few steps)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from studio.training import checkpoints
from studio.training.config import TrainConfig
from studio.training.data import (
    batch_at,
    batches_per_epoch,
    epoch_plan,
    nearest_bucket,
    prepare_examples,
)


def photos(sizes=((64, 64), (80, 64), (64, 72))) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def tiny_config(**overrides) -> TrainConfig:
    settings = {"model": "tiny", "trigger_word": "sks", "max_train_steps": 6, "batch_size": 2, "checkpoint_every": 3,
                "learning_rate": 1e-3}
    return TrainConfig(**{**settings, **overrides})


# -- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, images, message", [
    ({"rank": 0}, 3, "rank must be an integer in [1, 128], got 0"),
    ({"rank": 129}, 3, "rank must be an integer in [1, 128], got 129"),
    ({"max_train_steps": 20001}, 3, "max_train_steps must be an integer in [1, 20000], got 20001"),
    ({"learning_rate": 0.0}, 3, "learning_rate must be a finite number in (0, 0.01], got 0.0"),
    ({"learning_rate": 0.1}, 3, "learning_rate must be a finite number in (0, 0.01], got 0.1"),
    ({"learning_rate": float("nan")}, 3, "learning_rate must be a finite number in (0, 0.01], got nan"),
    ({"trigger_word": "   "}, 3, "trigger_word must be 1 to 64 characters, not only whitespace, got '   '"),
    ({"trigger_word": "x" * 65}, 3, "trigger_word must be 1 to 64 characters"),
    ({"trigger_word": ""}, 3, "trigger_word must be 1 to 64 characters"),
    ({}, 2, "images must be count in [3, 30], got 2"),
    ({}, 31, "images must be count in [3, 30], got 31"),
    ({"num_samples": 0}, 3, "num_samples must be an integer in [1, 8], got 0"),
    ({"sample_steps": 151}, 3, "sample_steps must be an integer in [1, 150], got 151"),
    ({"sample_prompt": " "}, 3, "sample_prompt must not be empty, got ' '"),
    ({"class_prompt": "a dog", "num_class_images": 0}, 3, "num_class_images must be an integer in [1, 1000], got 0"),
    ({"class_prompt": "a dog", "num_class_images": 1001}, 3, "num_class_images must be an integer in [1, 1000], got 1001"),
    ({"class_prompt": "a dog", "class_steps": 0}, 3, "class_steps must be an integer in [1, 150], got 0"),
    ({"class_prompt": "a dog", "prior_loss_weight": 0.0}, 3, "prior_loss_weight must be a finite number in (0, 10], got 0.0"),
    ({"class_prompt": "a dog", "prior_loss_weight": 11.0}, 3, "prior_loss_weight must be a finite number in (0, 10], got 11.0"),
    ({"class_prompt": "a dog", "prior_loss_weight": float("inf")}, 3, "prior_loss_weight must be a finite number in (0, 10], got inf"),
    ({"train_text_encoder": True, "text_encoder_lr": 0.02}, 3, "text_encoder_lr must be a finite number in (0, 0.01], got 0.02"),
    ({"train_text_encoder": True, "text_encoder_lr": float("nan")}, 3, "text_encoder_lr must be a finite number in (0, 0.01], got nan"),
    ({"train_text_encoder": 1}, 3, "train_text_encoder must be True or False, got 1"),
    ({"optimizer": "sgd"}, 3, "optimizer must be one of 'adamw', 'prodigy', got 'sgd'"),
    ({"optimizer": "prodigy", "learning_rate": 11.0}, 3, "learning_rate must be a finite number in (0, 10], got 11.0"),
    ({"learning_rate": 1.0}, 3, "learning_rate must be a finite number in (0, 0.01], got 1.0"),  # 1.0 is Prodigy's
    ({"mixed_precision": "fp8"}, 3, "mixed_precision must be one of 'auto', 'bf16', 'fp16', 'no', got 'fp8'"),
    ({"gradient_checkpointing": "yes"}, 3, "gradient_checkpointing must be True or False, got 'yes'"),
])
def test_config_errors_name_field_range_and_value(overrides, images, message):
    with pytest.raises(ValueError) as caught:
        tiny_config(**overrides).validate(images)
    assert message in str(caught.value)


def test_default_config_is_valid_and_prompt_has_trigger():
    config = TrainConfig(model="tiny", trigger_word="sks")
    config.validate(3)
    assert (config.rank, config.lora_alpha, config.learning_rate, config.max_train_steps) == (16, 16.0, 1e-4, 800)
    assert config.prompt == "a photo of sks" and config.samples_prompt == "a photo of sks"
    assert (config.num_samples, config.sample_steps, config.optimizer, config.mixed_precision) == (2, 25, "adamw", "auto")
    assert not config.prior_preservation and config.num_class_images == 100 and config.prior_loss_weight == 1.0
    assert not config.train_text_encoder and config.text_encoder_lr == 5e-5 and config.gradient_checkpointing


def test_options_off_are_not_validated_and_prodigy_takes_rate_one():
    # settings of an option that is off cannot make a run fail
    tiny_config(num_class_images=0, prior_loss_weight=0.0, text_encoder_lr=1.0).validate(3)
    tiny_config(optimizer="prodigy", learning_rate=1.0).validate(3)
    tiny_config(class_prompt="a dog", num_class_images=1000, prior_loss_weight=10.0).validate(3)


# -- buckets and order ----------------------------------------------------------------------------

def test_images_go_to_their_nearest_bucket_and_are_cut_to_it():
    sizes = [(64, 64), (128, 64), (64, 128)]
    assert nearest_bucket((200, 100), sizes) == (128, 64)
    assert nearest_bucket((90, 100), sizes) == (64, 64)
    assert nearest_bucket((30, 100), sizes) == (64, 128)
    examples = prepare_examples(photos([(300, 140), (50, 50), (40, 100)]), [None, "my caption", ""], "a photo of sks",
                                sizes)
    assert [e.bucket for e in examples] == [(128, 64), (64, 64), (64, 128)]
    assert [e.image.size for e in examples] == [(128, 64), (64, 64), (64, 128)]
    assert [e.caption for e in examples] == ["a photo of sks", "my caption", "a photo of sks"]
    # 300x140 covers 128x64 at scale 64/140: 137x64, so 4 columns are cut on the left
    assert examples[0].original_size == (140, 300) and examples[0].crop_top_left == (0, 4)


def test_flips_are_reproducible_per_epoch_and_off_when_asked():
    buckets = [(64, 64)] * 10
    assert epoch_plan(0, 3, buckets, 2, True) == epoch_plan(0, 3, buckets, 2, True)
    flips = [epoch_plan(0, e, buckets, 2, True)[1] for e in range(4)]
    assert any(flips[0]) and not all(flips[0]) and len({tuple(f) for f in flips}) > 1
    assert not any(epoch_plan(0, 3, buckets, 2, False)[1])


def test_batches_never_mix_buckets_and_each_epoch_sees_every_image_once():
    buckets = [(64, 64), (128, 64), (64, 64), (64, 64), (128, 64)]
    batches, _ = epoch_plan(7, 0, buckets, 2, True)
    assert len(batches) == batches_per_epoch(buckets, 2) == 3
    assert all(len({buckets[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_batch_k_is_computable_from_seed_and_k_alone():
    buckets = [(64, 64), (128, 64), (64, 64)]
    sequential = []  # the order an uninterrupted loop sees, epoch after epoch
    for epoch in range(5):
        batches, flips = epoch_plan(3, epoch, buckets, 2, True)
        sequential += [[(i, flips[i]) for i in b] for b in batches]
    assert [batch_at(3, k, buckets, 2, True) for k in range(len(sequential))] == sequential
    assert [batch_at(3, k, buckets, 2, True) for k in reversed(range(10))] == sequential[:10][::-1]


# -- objective ------------------------------------------------------------------------------------

def test_min_snr_weight_caps_low_noise_steps():
    import torch

    from studio.training.objective import min_snr_weight

    snr = torch.tensor([0.5, 5.0, 50.0])
    assert torch.allclose(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.1]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "v_prediction"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))


def test_loss_on_a_fixed_batch_decreases(manager):
    import torch

    from studio.models.loading import load_from_pretrained
    from studio.training.lora_train import _batch_loss, _prepare, bucket_sizes

    config = tiny_config(learning_rate=1e-2, random_flip=False)
    entry = manager.registry.get("tiny")
    pipe = load_from_pretrained(manager.source(entry), entry, "float32")
    examples = prepare_examples(photos(), None, config.prompt, bucket_sizes(config, entry))
    run = _prepare(config, pipe, examples, "cpu")
    losses = []
    for _ in range(20):
        run.optimizer.zero_grad()
        loss = _batch_loss(run, 0)  # batch 0 every time: same examples, noise and timesteps
        loss.backward()
        run.optimizer.step()
        losses.append(loss.item())
    # LoRA on a tiny UNet's attention has little capacity, so the drop is steady rather than steep
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert all(torch.isfinite(torch.tensor(losses)))


# -- a short real run -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(registry, tiny_cache, tmp_path_factory):
    """(manager, run folder, result) of a 6-step run on the tiny SDXL model."""
    from conftest import cpu_probe

    from studio.models.manager import ModelManager
    from studio.training.lora_train import train

    models = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)
    run_dir = tmp_path_factory.mktemp("lora-run")
    events = []
    result = train(tiny_config(), photos(), None, models, run_dir, on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1].message == f"loss {result.losses[-1]:.4f}"
    return models, run_dir, result


def test_run_ends_done_with_a_lora_of_the_unet(trained):
    from safetensors import safe_open

    _, run_dir, result = trained
    assert (result.state, result.steps_done, len(result.losses)) == ("done", 6, 6)
    assert result.lora_path == run_dir / "lora.safetensors"
    with safe_open(str(result.lora_path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") and "lora" in k for k in keys)
    # diffusers' layout, as its training scripts save: lora.down (A) and lora.up (B) per projection
    assert any(".attn1.to_q.lora.down." in k for k in keys) and any(".attn2.to_out.0.lora.up." in k for k in keys)
    assert meta["studio_lora"] == "1" and meta["trigger_word"] == "sks" and meta["base_model"] == "tiny"
    assert (meta["rank"], meta["steps"]) == ("16", "6") and meta["date"]


def test_lora_changes_the_pipeline_and_weight_zero_gives_the_base_exactly(trained):
    from studio.models.loading import load_from_pretrained

    models, _, result = trained
    entry = models.registry.get("tiny")
    pipe = load_from_pretrained(models.source(entry), entry, "float32")

    def image():
        import torch

        return pipe("a photo of sks", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    base = image()
    pipe.load_lora_weights(str(result.lora_path), adapter_name="trained")
    with_lora = image()
    assert np.abs(with_lora - base).max() > 1e-4
    pipe.set_adapters(["trained"], [0.0])
    assert np.array_equal(image(), base)


def test_checkpoints_hold_only_safetensors_and_json(trained):
    _, run_dir, _ = trained
    folders = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert folders == ["checkpoint-3", "checkpoint-6"]
    for folder in folders:
        files = {p.name for p in (run_dir / folder).iterdir()}
        assert "manifest.json" in files and "lora.safetensors" in files and "optimizer.safetensors" in files
        assert all(name.endswith((".safetensors", ".json")) for name in files), files
    state = checkpoints.load_checkpoint(run_dir / "checkpoint-6")
    assert state.step == 6 and len(state.losses) == 6 and state.rng["torch_cpu"].dtype.is_floating_point is False
    assert state.lora and all(k.startswith("unet.") and ".lora_" in k for k in state.lora)
    assert state.scaler is None and "scaler.json" not in files  # only fp16 runs have a gradient scaler


def test_incomplete_checkpoints_are_ignored(tmp_path):
    assert checkpoints.latest_checkpoint(tmp_path) is None
    for name in ("checkpoint-4", "checkpoint-12.tmp", "checkpoint-8"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # no manifest: a copy cut short
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    checkpoints.remove_incomplete(tmp_path)
    assert not (tmp_path / "checkpoint-12.tmp").exists()


def test_optimizer_state_round_trips_without_pickle():
    import torch

    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([p], lr=1e-3)
    p.sum().backward()
    optimizer.step()
    tensors, rest = checkpoints.flatten_optimizer(optimizer.state_dict())
    assert set(tensors) == {"state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3)
    restored.load_state_dict(checkpoints.unflatten_optimizer(tensors, rest))
    for name, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(restored.state_dict()["state"][0][name], value)


def test_prodigy_state_round_trips_through_a_checkpoint_without_pickle(tmp_path):
    """Prodigy keeps per-parameter tensors and an int step, and in its parameter groups its
    step-size estimate (d, d_max, sums) as floats and growth_rate = inf, which JSON cannot hold."""
    import math

    import torch
    from prodigyopt import Prodigy

    def optimizer_of(p):
        return Prodigy([p], lr=1.0, weight_decay=0.01, safeguard_warmup=True, use_bias_correction=True)

    def steps(p, optimizer, n):
        for _ in range(n):
            optimizer.zero_grad()
            ((p - 3.0) ** 2).sum().backward()
            optimizer.step()

    p = torch.nn.Parameter(torch.linspace(-1, 1, 5))
    optimizer = optimizer_of(p)
    steps(p, optimizer, 3)
    scaler = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}
    state = checkpoints.CheckpointState(3, {"unet.p": p.detach()}, optimizer.state_dict(), {}, {}, scaler=scaler)
    folder = checkpoints.save_checkpoint(tmp_path, 3, state)
    assert all(f.suffix in (".json", ".safetensors") for f in folder.iterdir())
    loaded = checkpoints.load_checkpoint(folder)
    assert loaded.scaler == scaler
    assert math.isinf(loaded.optimizer["param_groups"][0]["growth_rate"])

    q = torch.nn.Parameter(loaded.lora["unet.p"].clone())
    restored = optimizer_of(q)
    restored.load_state_dict(loaded.optimizer)
    steps(p, optimizer, 2)
    steps(q, restored, 2)
    assert torch.equal(p, q) and optimizer.param_groups[0]["d"] == restored.param_groups[0]["d"]


def test_a_resume_with_other_settings_is_refused(trained, tmp_path):
    import shutil

    from studio.training.lora_train import train

    models, run_dir, _ = trained
    shutil.copytree(run_dir / "checkpoint-3", tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match="other settings \\(rank\\)"):
        train(tiny_config(rank=8), photos(), None, models, tmp_path)


def test_only_full_base_models_train(manager, tmp_path):
    from studio.training.lora_train import train

    with pytest.raises(ValueError, match="model must be a full base checkpoint, got 'tiny-fast'"):
        train(tiny_config(model="tiny-fast"), photos(), None, manager, tmp_path)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_sd15_model_trains_and_its_lora_loads(manager, tmp_path, train_text_encoder):
    from studio.models.loading import load_from_pretrained
    from studio.training.lora_train import train

    config = tiny_config(model="tiny-sd15", max_train_steps=2, rank=4, alpha=8.0, train_text_encoder=train_text_encoder)
    result = train(config, photos(), ["a", None, "b"], manager, tmp_path)
    assert result.state == "done" and len(result.losses) == 2
    entry = manager.registry.get("tiny-sd15")
    pipe = load_from_pretrained(manager.source(entry), entry, "float32")
    pipe.load_lora_weights(str(result.lora_path), adapter_name="trained")
    expected = {"unet": ["trained"], "text_encoder": ["trained"]} if train_text_encoder else {"unet": ["trained"]}
    assert pipe.get_list_adapters() == expected
    lora = pipe.unet.peft_config["trained"]  # rank and alpha read from the file's adapter metadata
    assert (lora.r, lora.lora_alpha) == (4, 8.0)
    if train_text_encoder:
        lora = pipe.text_encoder.peft_config["trained"]
        assert (lora.r, lora.lora_alpha, sorted(lora.target_modules)) == (4, 8.0, ["k_proj", "out_proj", "q_proj", "v_proj"])


def test_a_stop_at_the_last_step_still_finishes(manager, tmp_path):
    from studio.training.lora_train import train

    result = train(tiny_config(max_train_steps=2), photos(), None, manager, tmp_path, on_step=lambda event: True)
    assert (result.state, result.steps_done) == ("stopped", 1)
    result = train(tiny_config(max_train_steps=2), photos(), None, manager, tmp_path, on_step=lambda event: True)
    assert (result.state, result.steps_done) == ("done", 2) and result.lora_path.is_file()
