"""Exact resume: a run killed (SIGKILL, in a subprocess) or stopped mid-epoch and resumed ends with
the same LoRA as an uninterrupted run, with each training option (prior preservation, text-encoder
LoRA, Prodigy) as without. 3 photos in batches of 2 make 2 batches per epoch, so the odd steps
where these runs break off (9 and 5) lie mid-epoch. The uninterrupted runs render previews and the
killed one does not: previews must not change the training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.training.checkpoints import latest_checkpoint
from studio.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
CONFIG = {"model": "tiny", "trigger_word": "sks", "max_train_steps": STEPS, "batch_size": 2, "checkpoint_every": 3,
          "learning_rate": 1e-3, "sample_every": 5, "sample_steps": 2}
SAMPLED = [5, 10, 12]  # every sample_every steps, and the last
VARIANTS = {
    "adamw": {},
    "prior preservation": {"class_prompt": "a photo of a dog", "num_class_images": 3, "class_steps": 2},
    "text-encoder LoRA": {"train_text_encoder": True, "text_encoder_lr": 1e-3},
    "prodigy": {"optimizer": "prodigy", "learning_rate": 1.0},
}

# The killed run: the same training in a fresh interpreter, which waits (so it can be killed
# mid-run) as soon as it has passed checkpoint-9.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import cpu_probe
    from studio.images import open_image
    from studio.models.manager import ModelManager
    from studio.models.registry import load_registry
    from studio.training.config import TrainConfig
    from studio.training.lora_train import train

    models = ModelManager(load_registry(), cache_dir=Path({cache!r}), probe=cpu_probe)
    images = [open_image(p) for p in {images!r}]
    wait_after = lambda event: time.sleep(600) if event.step > 9 else None
    train(TrainConfig(**{config!r}), images, None, models, {run!r}, on_step=wait_after)
""")


def photos(folder: Path) -> list[Path]:
    """Three photos (two aspect ratios) saved as PNG, so the subprocess reads the same pixels."""
    rng = np.random.default_rng(1)
    paths = []
    for n, (w, h) in enumerate([(64, 64), (72, 64), (64, 64)]):
        paths.append(folder / f"photo{n}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def lora_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def assert_same_lora(a: Path, b: Path) -> None:
    import torch

    wa, wb = lora_weights(a), lora_weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= 1e-6, worst
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in wa.items() if ".up." in k)  # it did train


def assert_same_samples(a: dict, b: dict) -> None:
    """Previews of the same step are the same images (same weights, same seeds)."""
    common = sorted(a.keys() & b.keys())
    assert common
    for step in common:
        assert len(a[step]) == len(b[step]) == 2 and {im.size for im in a[step]} == {(64, 64)}
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a[step], b[step])), step


def collect(samples: dict):
    return lambda step, images: samples.__setitem__(step, images)


@pytest.fixture(scope="module")
def setup(registry, tiny_cache, tmp_path_factory):
    """(models, photo paths, images, uninterrupted run per variant: variant -> (result, samples, run folder))."""
    from conftest import cpu_probe

    from studio.images import open_image
    from studio.models.manager import ModelManager
    from studio.training.lora_train import train

    models = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)
    paths = photos(tmp_path_factory.mktemp("photos"))
    images = [open_image(p) for p in paths]
    done = {}

    def whole(variant: str):
        if variant not in done:
            samples, run = {}, tmp_path_factory.mktemp("whole")
            result = train(TrainConfig(**{**CONFIG, **VARIANTS[variant]}), images, None, models, run,
                           on_sample=collect(samples))
            assert result.state == "done" and len(result.losses) == STEPS and sorted(samples) == SAMPLED
            done[variant] = result, samples, run
        return done[variant]

    whole("adamw")  # the one most tests compare with
    return models, paths, images, whole


def test_killed_run_resumes_to_the_same_lora(setup, tiny_cache, tmp_path):
    from studio.training.lora_train import train

    models, paths, images, uninterrupted = setup
    whole, _, _ = uninterrupted("adamw")
    run = tmp_path / "run"
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), cache=str(tiny_cache),
                        images=[str(p) for p in paths], config=CONFIG, run=str(run))
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while latest_checkpoint(run) != run / "checkpoint-9":
            assert child.poll() is None, f"the training subprocess exited early:\n{child.stderr.read().decode()}"
            assert time.time() < deadline, "checkpoint-9 did not appear within 300 s"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (run / "lora.safetensors").exists()

    resumed = train(TrainConfig(**CONFIG), images, None, models, run)
    assert resumed.state == "done"
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    assert_same_lora(resumed.lora_path, whole.lora_path)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stopped_run_resumes_to_the_same_lora(setup, tmp_path, variant):
    from studio.training.lora_train import train

    models, _, images, uninterrupted = setup
    whole, whole_samples, _ = uninterrupted(variant)
    config = TrainConfig(**{**CONFIG, **VARIANTS[variant]})
    samples = {}
    stopped = train(config, images, None, models, tmp_path, on_step=lambda event: event.step == 5,
                    on_sample=collect(samples))
    assert (stopped.state, stopped.steps_done, stopped.lora_path) == ("stopped", 5, None)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-5"
    assert samples == {}  # the stop at step 5 comes before its preview

    resumed = train(config, images, None, models, tmp_path, on_sample=collect(samples))
    assert (resumed.state, resumed.steps_done) == ("done", STEPS)
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    assert_same_lora(resumed.lora_path, whole.lora_path)
    assert sorted(samples) == [10, 12]
    assert_same_samples(samples, whole_samples)


def test_each_variant_trains_what_it_says(setup):
    """The variants differ where they should: their files, checkpoints and losses."""
    import json

    from safetensors import safe_open

    from studio.training.checkpoints import load_checkpoint

    results = {v: setup[3](v) for v in VARIANTS}
    for variant, (result, _, run) in results.items():
        assert all(np.isfinite(result.losses)), variant
        with safe_open(str(result.lora_path), "pt") as f:
            keys = list(f.keys())
        prefixes = {k.split(".")[0] for k in keys}
        expected = {"unet", "text_encoder", "text_encoder_2"} if variant == "text-encoder LoRA" else {"unet"}
        assert prefixes == expected, variant
        state = load_checkpoint(run / "checkpoint-12")
        assert {k.split(".")[0] for k in state.lora} == expected, variant
        groups = json.loads((run / "checkpoint-12" / "optimizer.json").read_text())["param_groups"]
        assert len(groups) == (2 if variant == "text-encoder LoRA" else 1), variant
        assert ("d" in groups[0]) == (variant == "prodigy"), variant  # Prodigy's step-size estimate
    assert sorted(p.name for p in (results["prior preservation"][2] / "class_images").glob("*.png")) == [
        "class-0000.png", "class-0001.png", "class-0002.png"]
    # the same first batch and noise: the prior term adds to the photos' loss; the others start equal
    first = {v: r.losses[0] for v, (r, _, _) in results.items()}
    assert first["prior preservation"] > first["adamw"] + 1e-3
    assert first["text-encoder LoRA"] == pytest.approx(first["adamw"], abs=1e-6)
    assert first["prodigy"] == pytest.approx(first["adamw"], abs=1e-6)
    # later the trained text encoders and Prodigy's own step size take other paths
    assert abs(results["text-encoder LoRA"][0].losses[-1] - results["adamw"][0].losses[-1]) > 1e-6
    assert abs(results["prodigy"][0].losses[-1] - results["adamw"][0].losses[-1]) > 1e-6


def test_resume_false_starts_afresh(setup, tmp_path):
    from studio.training.lora_train import train

    models, _, images, uninterrupted = setup
    whole, _, _ = uninterrupted("adamw")
    train(TrainConfig(**CONFIG), images, None, models, tmp_path, on_step=lambda event: event.step == 5)
    again = train(TrainConfig(**CONFIG), images, None, models, tmp_path, resume=False)
    assert again.losses == pytest.approx(whole.losses, abs=1e-6)
    assert_same_lora(again.lora_path, whole.lora_path)
