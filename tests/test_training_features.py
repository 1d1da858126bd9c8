"""LoRA training's options on the tiny SDXL model (64 px, CPU): prior preservation's class images
and loss, the text-encoder LoRA (its embeddings, its file, its use through diffusers), preview
samples, and gradient checkpointing. Exact resume with each option is in test_training_resume.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_training import photos, tiny_config

CLASS = {"class_prompt": "a photo of a dog", "num_class_images": 3, "class_steps": 2}


def tiny_pipe(manager, model="tiny"):
    from studio.models.loading import load_from_pretrained

    entry = manager.registry.get(model)
    return load_from_pretrained(manager.source(entry), entry, "float32")


def prepared(manager, config, class_images=()):
    """A run prepared on a fresh tiny pipeline, as `train` prepares it (no checkpoint, no loop)."""
    from studio.training.data import prepare_examples
    from studio.training.lora_train import _prepare, bucket_sizes

    sizes = bucket_sizes(config, manager.registry.get(config.model))
    examples = prepare_examples(photos(), None, config.prompt, sizes)
    class_examples = prepare_examples(list(class_images), None, config.class_prompt, sizes)
    return _prepare(config, tiny_pipe(manager, config.model), examples, "cpu", class_examples)


# -- prior preservation ---------------------------------------------------------------------------

def test_class_images_are_made_once_and_reused(manager, tmp_path):
    from PIL import Image

    from studio.training.lora_train import train
    from studio.training.prior import class_image_path

    config = tiny_config(max_train_steps=1, **CLASS)
    events = []
    train(config, photos(), None, manager, tmp_path, on_step=events.append)
    messages = [e.message for e in events if e.step == 0]
    assert messages == ["generating class image 1 of 3"]  # 3 images: one pipeline call
    paths = [class_image_path(tmp_path, i) for i in range(3)]
    assert [p.name for p in paths] == ["class-0000.png", "class-0001.png", "class-0002.png"]
    first = [np.asarray(Image.open(p)) for p in paths]
    assert all(a.shape == (64, 64, 3) for a in first) and not np.array_equal(first[0], first[1])

    # a second run reuses them; one deleted is made again, alone, and the same as before
    paths[1].unlink()
    mtimes = [paths[0].stat().st_mtime_ns, paths[2].stat().st_mtime_ns]
    events.clear()
    train(config, photos(), None, manager, tmp_path, on_step=events.append, resume=False)
    assert [e.message for e in events if e.step == 0] == ["generating class image 2 of 3"]
    assert [paths[0].stat().st_mtime_ns, paths[2].stat().st_mtime_ns] == mtimes
    assert np.abs(np.asarray(Image.open(paths[1])).astype(int) - first[1]).max() <= 1  # seeded by index
    assert not list(tmp_path.glob("class_images/*.tmp"))


def test_class_images_of_other_settings_are_made_again(manager, tmp_path):
    from PIL import Image

    from studio.training.lora_train import train
    from studio.training.prior import class_image_path

    train(tiny_config(max_train_steps=1, **CLASS), photos(), None, manager, tmp_path)
    before = np.asarray(Image.open(class_image_path(tmp_path, 0)))
    events = []
    config = tiny_config(max_train_steps=1, **{**CLASS, "class_prompt": "a photo of a cat"})
    train(config, photos(), None, manager, tmp_path, on_step=events.append, resume=False)
    assert [e.message for e in events if e.step == 0] == ["generating class image 1 of 3"]
    assert not np.array_equal(np.asarray(Image.open(class_image_path(tmp_path, 0))), before)


def test_a_resume_with_another_class_prompt_is_refused_before_touching_the_class_images(manager, tmp_path):
    from studio.training.lora_train import train
    from studio.training.prior import class_image_path

    train(tiny_config(max_train_steps=1, checkpoint_every=1, **CLASS), photos(), None, manager, tmp_path)
    made = class_image_path(tmp_path, 0).stat().st_mtime_ns
    config = tiny_config(max_train_steps=1, checkpoint_every=1, **{**CLASS, "class_prompt": "a photo of a cat"})
    with pytest.raises(ValueError, match="other settings \\(class_prompt\\)"):
        train(config, photos(), None, manager, tmp_path, on_step=lambda e: pytest.fail(f"no GPU work expected: {e}"))
    assert class_image_path(tmp_path, 0).stat().st_mtime_ns == made


def test_stop_while_making_class_images_keeps_those_made(manager, tmp_path):
    from studio.training.lora_train import train
    from studio.training.prior import PER_CALL, class_image_path

    config = tiny_config(max_train_steps=1, **{**CLASS, "num_class_images": PER_CALL + 1})
    calls = []
    result = train(config, photos(), None, manager, tmp_path, on_step=lambda e: calls.append(e) or len(calls) == 2)
    assert (result.state, result.steps_done, result.lora_path) == ("stopped", 0, None)
    assert [class_image_path(tmp_path, i).is_file() for i in range(PER_CALL + 1)] == [True] * PER_CALL + [False]


def test_prior_loss_is_the_photos_loss_plus_weight_times_the_class_loss(manager):
    """Ruiz et al. 2023, eq. 2: L = L_photos + w * L_class; L is linear in w with the photos' loss
    (the same batch without class images) as intercept."""
    config = tiny_config(**CLASS)
    from studio.training.lora_train import _batch_loss

    run = prepared(manager, config, class_images=photos([(64, 64)] * 3))
    losses = {}
    for w in (1.0, 3.0):
        run.config = dataclasses.replace(config, prior_loss_weight=w)
        losses[w] = _batch_loss(run, 0).item()
    photos_only = _batch_loss(dataclasses.replace(run, class_examples=[]), 0).item()
    class_loss = (losses[3.0] - losses[1.0]) / 2
    assert class_loss > 0.01
    assert losses[1.0] - class_loss == pytest.approx(photos_only, rel=1e-5)


def test_class_batches_are_a_function_of_seed_and_batch_and_cover_every_image():
    from studio.training.data import class_batch_at

    batches = [class_batch_at(7, k, 2, 2, 5, True) for k in range(10)]  # 20 slots: 4 epochs of 5 images
    assert batches == [class_batch_at(7, k, 2, 2, 5, True) for k in range(10)]
    for epoch in range(4):
        slots = [i for b in batches for i, _ in b][epoch * 5:(epoch + 1) * 5]
        assert sorted(slots) == [0, 1, 2, 3, 4]
    assert class_batch_at(7, 3, 1, 2, 5, True) == batches[3][:1]  # a short batch takes the first slots
    assert batches != [class_batch_at(8, k, 2, 2, 5, True) for k in range(10)]
    assert not any(flip for k in range(10) for _, flip in class_batch_at(7, k, 2, 2, 5, False))


# -- text-encoder LoRA ----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny", "tiny-sd15"])
def test_cached_embeddings_are_those_of_the_pipeline(manager, model):
    import torch

    from studio.training.cache import encode_captions

    pipe = tiny_pipe(manager, model)
    cached = encode_captions(pipe, ["a photo of sks"], "cpu")["a photo of sks"]
    out = pipe.encode_prompt("a photo of sks", device="cpu", num_images_per_prompt=1,
                             do_classifier_free_guidance=False)
    assert torch.equal(cached.hidden, out[0][0])
    if model == "tiny":
        assert torch.equal(cached.pooled, out[2][0])
    else:
        assert cached.pooled is None


def test_text_encoder_lora_starts_at_the_cached_embeddings_and_then_moves(manager):
    import torch

    from studio.training.lora_train import _optimizer_step, _text_conditioning

    frozen = prepared(manager, tiny_config())
    trained = prepared(manager, tiny_config(train_text_encoder=True, text_encoder_lr=1e-2))
    assert list(trained.modules) == ["unet", "text_encoder", "text_encoder_2"] and trained.texts is None
    cached_hidden, cached_pooled = _text_conditioning(frozen, ["a photo of sks"])
    hidden, pooled = _text_conditioning(trained, ["a photo of sks"])
    assert torch.equal(hidden, cached_hidden) and torch.equal(pooled, cached_pooled)  # LoRA B starts at zero
    assert hidden.requires_grad and not cached_hidden.requires_grad
    # a batch of two runs other matrix kernels than the cache's one caption at a time: equal to rounding
    captions = ["a photo of sks", "a photo of sks"]
    cached_hidden, cached_pooled = _text_conditioning(frozen, captions)
    hidden, pooled = _text_conditioning(trained, captions)
    assert torch.allclose(hidden, cached_hidden, rtol=0, atol=1e-6)
    assert torch.allclose(pooled, cached_pooled, rtol=0, atol=1e-6)

    _optimizer_step(trained, 0)
    moved, _ = _text_conditioning(trained, captions)
    assert (moved - cached_hidden).abs().max() > 1e-4
    groups = trained.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]  # the text encoders' own learning rate


@pytest.fixture(scope="module")
def text_encoder_lora(registry, tiny_cache, tmp_path_factory):
    """(manager, result) of a 3-step run with a text-encoder LoRA."""
    from conftest import cpu_probe

    from studio.models.manager import ModelManager
    from studio.training.lora_train import train

    models = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)
    config = tiny_config(max_train_steps=3, train_text_encoder=True, text_encoder_lr=1e-2, learning_rate=1e-2)
    return models, train(config, photos(), None, models, tmp_path_factory.mktemp("te-run"))


def test_text_encoder_lora_file_has_both_encoders_and_passes_the_library_checks(text_encoder_lora):
    import json

    from safetensors import safe_open

    from studio.loras import check_lora
    from studio.training.jobs import cross_attention_width

    _, result = text_encoder_lora
    with safe_open(str(result.lora_path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    assert any(k.startswith("text_encoder.") and ".self_attn.q_proj." in k for k in keys)
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert adapter["text_encoder_2.target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    # what the library checks before adding a trained or uploaded LoRA: the tiny UNet reads 2 x 32 wide text
    assert cross_attention_width(result.lora_path) == 64
    info = check_lora(result.lora_path, 64, "sdxl")
    assert info.has_text_encoder and info.rank == 16


def test_text_encoder_lora_loads_in_diffusers_and_changes_the_text_and_the_image(manager, text_encoder_lora):
    import torch

    _, result = text_encoder_lora
    pipe = tiny_pipe(manager)

    def embeds():
        return pipe.encode_prompt("a photo of sks", device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=False)[0]

    def image():
        return pipe("a photo of sks", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    base_embeds, base = embeds(), image()
    pipe.load_lora_weights(str(result.lora_path), adapter_name="trained")
    assert pipe.get_list_adapters() == {"unet": ["trained"], "text_encoder": ["trained"],
                                        "text_encoder_2": ["trained"]}
    assert (embeds() - base_embeds).abs().max() > 1e-4  # the text encoders' part acts
    assert np.abs(image() - base).max() > 1e-4
    pipe.set_adapters(["trained"], [0.0])
    assert torch.equal(embeds(), base_embeds) and np.array_equal(image(), base)


# -- previews and precision -----------------------------------------------------------------------

def test_previews_come_every_n_steps_and_at_the_end(manager, tmp_path):
    from studio.training.lora_train import train

    samples = []
    config = tiny_config(max_train_steps=5, sample_every=2, num_samples=3, sample_steps=2,
                         sample_prompt="{trigger} on the moon")
    train(config, photos(), None, manager, tmp_path, on_sample=lambda step, images: samples.append((step, images)))
    assert [step for step, _ in samples] == [2, 4, 5]
    assert all(len(images) == 3 and {im.size for im in images} == {(64, 64)} for _, images in samples)
    first = [np.asarray(im) for im in samples[0][1]]
    assert not np.array_equal(first[0], first[1])  # seeds seed, seed + 1, seed + 2


def test_gradient_checkpointing_gives_the_same_gradients(manager):
    """On CUDA `train` switches it on; here its code path runs on CPU: the recomputed activations
    must carry the same gradients to the LoRAs of the UNet and of both text encoders."""
    import torch

    from studio.training.adapters import enable_gradient_checkpointing, lora_parameters
    from studio.training.lora_train import _batch_loss

    run = prepared(manager, tiny_config(train_text_encoder=True))
    params = lora_parameters(run.modules)

    def gradients():
        run.optimizer.zero_grad(set_to_none=True)
        _batch_loss(run, 0).backward()
        return {n: p.grad for n, p in params.items() if p.grad is not None}

    plain = gradients()
    enable_gradient_checkpointing(run.modules)
    assert run.modules["unet"].is_gradient_checkpointing and run.modules["text_encoder_2"].is_gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], rtol=1e-4, atol=1e-8) for n in plain)
    # B starts at zero, so only B has a gradient at step 1; every component gets some
    for component in run.modules:
        assert max(g.abs().max().item() for n, g in plain.items() if n.startswith(component + ".")) > 0, component


@pytest.mark.parametrize("mixed_precision, device, bf16, autocast, loaded", [
    ("auto", "cpu", True, None, "float32"),  # CPU: float32 whatever is asked
    ("bf16", "cpu", True, None, "float32"),
    ("fp16", "mps", True, None, "float16"),  # MPS: the app's fp16 model, no autocast
    ("auto", "cuda", True, "bfloat16", "bfloat16"),
    ("auto", "cuda", False, "float16", "float16"),  # a GPU without bf16 (before Ampere)
    ("fp16", "cuda", True, "float16", "float16"),
    ("bf16", "cuda", True, "bfloat16", "bfloat16"),
    ("no", "cuda", True, None, "float32"),
])
def test_mixed_precision_autocasts_on_cuda_only(mixed_precision, device, bf16, autocast, loaded):
    from studio.training import optim

    assert optim.autocast_dtype(mixed_precision, device, bf16) == autocast
    app_default = "float32" if device == "cpu" else "float16"  # studio.models.device.choose_dtype
    assert optim.weight_dtype(autocast, device, app_default) == loaded
    if autocast != "float16":
        assert optim.grad_scaler(autocast) is None  # only fp16 needs loss scaling
