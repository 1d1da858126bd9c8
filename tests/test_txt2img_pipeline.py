"""Studio's text-to-image on the tiny SDXL model, compared with diffusers called directly."""

from __future__ import annotations

import numpy as np
import pytest

from studio.pipelines.txt2img import Txt2ImgRequest, run
from studio.schedulers import make_scheduler

BASE = dict(prompt="a red lighthouse on a cliff", negative_prompt="blurry", width=64, height=64,
            num_inference_steps=2, guidance_scale=5.0, seed=1234, batch_size=1, model="tiny")


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DPM++ 2M Karras", "DDIM", "UniPC"])
def test_same_pixels_as_diffusers_directly(manager, scheduler):
    import torch

    result = run(Txt2ImgRequest(**BASE, scheduler=scheduler), manager)
    pipe = manager.pipeline("tiny")
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler, original.config)
    try:
        direct = pipe(
            prompt=BASE["prompt"], negative_prompt=BASE["negative_prompt"], width=64, height=64,
            num_inference_steps=2, guidance_scale=5.0, generator=[torch.Generator().manual_seed(1234)],
        ).images
    finally:
        pipe.scheduler = original
    assert result.images[0].size == (64, 64)
    assert np.array_equal(pixels(result.images), pixels(direct))
    assert result.details.prompt_encoding.handling == "single window"


def test_batch_images_use_consecutive_seeds(manager):
    batch = run(Txt2ImgRequest(**{**BASE, "batch_size": 3}, scheduler="Euler"), manager)
    assert batch.seeds == [1234, 1235, 1236]
    alone = run(Txt2ImgRequest(**{**BASE, "seed": 1235}, scheduler="Euler"), manager)
    assert np.array_equal(pixels(batch.images[1:2]), pixels(alone.images))  # each image can be remade alone
    assert not np.array_equal(pixels(batch.images[0:1]), pixels(batch.images[1:2]))


def test_random_seed_is_reported(manager):
    a = run(Txt2ImgRequest(**{**BASE, "seed": -1}, scheduler="Euler"), manager)
    assert 0 <= a.seed < 2**32 and a.request.seed == a.seed != -1  # the seed used is what the request records
    again = run(Txt2ImgRequest(**{**BASE, "seed": a.seed}, scheduler="Euler"), manager)
    assert np.array_equal(pixels(a.images), pixels(again.images))


@pytest.mark.parametrize("model", ["tiny", "tiny-sd15"])
def test_long_prompt_is_not_truncated(manager, model):
    head = "a castle on a hill at sunset, oil painting, "
    assert len(manager.pipeline(model).tokenizer(head).input_ids) < 77
    long_prompt = head * 5  # ~175 tokens with the tiny character-level tokenizer
    tokenizer = manager.pipeline(model).tokenizer
    ids = tokenizer(long_prompt, add_special_tokens=False).input_ids
    first_77 = tokenizer.decode(ids[:75])  # what diffusers keeps: BOS + 75 tokens + EOS
    req = dict(BASE, model=model, scheduler="Euler")
    long = run(Txt2ImgRequest(**{**req, "prompt": long_prompt}), manager)
    cut = run(Txt2ImgRequest(**{**req, "prompt": first_77}), manager)
    assert long.details.prompt_encoding.tokens == len(ids) > 150
    assert long.details.prompt_encoding.handling.startswith("chunked: 3 windows of 75 tokens")
    assert cut.details.prompt_encoding.handling == "single window"
    assert np.abs(pixels(long.images) - pixels(cut.images)).mean() > 0.5


def test_long_prompt_embeddings_concatenate_windows(manager):
    import torch

    from studio.pipelines.prompts import prompt_arguments

    pipe = manager.pipeline("tiny")
    kwargs, info = prompt_arguments(pipe, "x " * 160, "")
    assert kwargs["prompt_embeds"].shape == (1, 77 * 3, 64)  # 3 windows, both encoders' 32 features
    assert kwargs["pooled_prompt_embeds"].shape == (1, 32)
    assert not kwargs["negative_prompt_embeds"].any()  # SDXL zeroes an empty negative prompt
    # The first window equals what diffusers computes for the prompt's first 75 tokens.
    first = pipe.tokenizer.decode(pipe.tokenizer("x " * 160, add_special_tokens=False).input_ids[:75])
    with torch.no_grad():
        ref, _, ref_pooled, _ = pipe.encode_prompt(first, do_classifier_free_guidance=False)
    assert np.allclose(kwargs["prompt_embeds"][:, :77].numpy(), ref.numpy(), atol=1e-5)
    assert np.allclose(kwargs["pooled_prompt_embeds"].numpy(), ref_pooled.numpy(), atol=1e-5)


def test_stop_after_first_step_returns_early(manager):
    seen = []

    def on_step(event):
        seen.append((event.step, event.total))
        return event.step >= 1  # ask to stop right after step 1

    stopped = run(Txt2ImgRequest(**{**BASE, "num_inference_steps": 10}, scheduler="Euler"), manager, on_step)
    assert seen == [(1, 10)]
    assert stopped.interrupted is True and stopped.steps_done == 1
    assert stopped.images[0].size == (64, 64)
    # The pipeline is ready for the next job, which runs all its steps.
    seen.clear()
    full = run(Txt2ImgRequest(**{**BASE, "num_inference_steps": 3}, scheduler="Euler"), manager, lambda e: seen.append(e.step))
    assert seen == [1, 2, 3] and full.interrupted is False


def test_bad_request_changes_nothing(manager):
    pipe = manager.pipeline("tiny")
    scheduler = pipe.scheduler
    with pytest.raises(ValueError, match=r"Width \(width\) must be a multiple of 8, got 100"):
        run(Txt2ImgRequest(**{**BASE, "width": 100}, scheduler="DDIM"), manager)
    with pytest.raises(ValueError, match=r"Sampler \(scheduler\) must be one of"):
        run(Txt2ImgRequest(**BASE, scheduler="nope"), manager)
    assert manager.pipeline("tiny").scheduler is scheduler


def test_every_aspect_bucket_of_every_tiny_model_generates_its_size(manager):
    """The page's aspect buckets (test_browser_tabs checks that picking one sets the size), each
    generated at its size by every tiny model."""
    from studio.ui.tab import bucket_table

    for model in ("tiny", "tiny-fast", "tiny-sd15"):
        table = bucket_table(manager.registry.get(model))
        assert len(table) == 9, (model, table)
        for ratio, (w, h) in table.items():
            result = run(Txt2ImgRequest(prompt="a field", model=model, width=w, height=h, num_inference_steps=1),
                         manager)
            assert [im.size for im in result.images] == [(w, h)], (model, ratio)
