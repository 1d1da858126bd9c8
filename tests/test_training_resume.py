"""Exact resume: a run killed (SIGKILL, in a subprocess) or stopped mid-epoch and resumed ends with
the same LoRA as an uninterrupted run. 3 photos in batches of 2 make 2 batches per epoch, so
the odd steps where these runs break off (9 and 5) lie mid-epoch."""

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
          "learning_rate": 1e-3}

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


@pytest.fixture(scope="module")
def setup(registry, tiny_cache, tmp_path_factory):
    """(models, photo paths, images, uninterrupted result) shared by the tests."""
    from conftest import cpu_probe

    from studio.images import open_image
    from studio.models.manager import ModelManager
    from studio.training.lora_train import train

    models = ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe)
    paths = photos(tmp_path_factory.mktemp("photos"))
    images = [open_image(p) for p in paths]
    whole = train(TrainConfig(**CONFIG), images, None, models, tmp_path_factory.mktemp("whole"))
    assert whole.state == "done" and len(whole.losses) == STEPS
    return models, paths, images, whole


def test_killed_run_resumes_to_the_same_lora(setup, tiny_cache, tmp_path):
    from studio.training.lora_train import train

    models, paths, images, whole = setup
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


def test_stopped_run_resumes_to_the_same_lora(setup, tmp_path):
    from studio.training.lora_train import train

    models, _, images, whole = setup
    stopped = train(TrainConfig(**CONFIG), images, None, models, tmp_path, on_step=lambda event: event.step == 5)
    assert (stopped.state, stopped.steps_done, stopped.lora_path) == ("stopped", 5, None)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-5"

    resumed = train(TrainConfig(**CONFIG), images, None, models, tmp_path)
    assert (resumed.state, resumed.steps_done) == ("done", STEPS)
    assert_same_lora(resumed.lora_path, whole.lora_path)


def test_resume_false_starts_afresh(setup, tmp_path):
    from studio.training.lora_train import train

    models, _, images, whole = setup
    train(TrainConfig(**CONFIG), images, None, models, tmp_path, on_step=lambda event: event.step == 5)
    again = train(TrainConfig(**CONFIG), images, None, models, tmp_path, resume=False)
    assert again.losses == pytest.approx(whole.losses, abs=1e-6)
    assert_same_lora(again.lora_path, whole.lora_path)
