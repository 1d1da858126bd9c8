"""Adding a LoRA file to the library from the Train tab, and training refused on a ZeroGPU Space."""

from __future__ import annotations

import pickle

import pytest

from studio.models.tiny import LORA_WEIGHT_NAME, save_tiny_lora
from studio.training.config import TrainConfig
from studio.training.jobs import ZERO_GPU_NOTICE, TrainingJobs
from studio.ui.train import upload_name
from test_loras import kohya_lora


@pytest.fixture
def jobs(manager, tmp_path):
    return TrainingJobs(manager, tmp_path / "loras")


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upload")
    save_tiny_lora(folder)
    return folder / LORA_WEIGHT_NAME


def test_a_lora_for_the_model_is_added_and_listed(jobs, tiny_lora):
    assert jobs.add_upload(tiny_lora, "my-style", "tiny") == "my-style"
    assert [e.name for e in jobs.library.list()] == ["my-style"]
    assert jobs.library.path("my-style").read_bytes() == tiny_lora.read_bytes()
    # a draft model sitting on tiny takes tiny's LoRAs
    assert jobs.add_upload(tiny_lora, "for-draft", "tiny-fast") == "for-draft"


@pytest.mark.parametrize("model, message", [
    ("tiny-sd15", "family"),  # an SDXL LoRA for an SD1.5 model
    ("sdxl-base", "2048"),  # the tiny LoRA's width (64) is not SDXL's; sdxl-base is not cached: the family's width
])
def test_a_lora_for_another_model_is_refused_and_nothing_is_written(jobs, tiny_lora, model, message):
    with pytest.raises(ValueError, match=message):
        jobs.add_upload(tiny_lora, "wrong", model)
    assert jobs.library.list() == []


def test_a_pickle_renamed_safetensors_is_refused_and_never_runs(jobs, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError):
        jobs.add_upload(evil, "evil", "tiny")
    assert not marker.exists() and jobs.library.list() == []


def test_an_sd15_lora_fits_sd15(jobs, tmp_path):
    path = kohya_lora(tmp_path / "sd15.safetensors", 768)
    assert jobs.add_upload(path, "sd15-style", "sd15") == "sd15-style"  # sd15 not cached: the family's width, 768


def test_bad_names_are_refused(jobs, tiny_lora):
    with pytest.raises(ValueError, match="name"):
        jobs.add_upload(tiny_lora, "../escape", "tiny")
    assert upload_name("/tmp/My-Style.safetensors", "") == "my-style"
    assert upload_name("/tmp/x.safetensors", " chosen ") == "chosen"


def test_training_is_refused_on_a_zero_gpu_space(jobs, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    images = [Image.new("RGB", (64, 64), (i * 40, 90, 120)) for i in range(3)]
    with pytest.raises(ValueError, match="Training needs a dedicated GPU"):
        jobs.start(TrainConfig(model="tiny", trigger_word="sks"), images)
    assert "Duplicate the Space" in ZERO_GPU_NOTICE
