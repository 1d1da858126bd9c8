"""Hugging Face Spaces: ZeroGPU entry points and the GPU time they ask for, persistent storage
under /data, no CUDA before a GPU call, and the app serving on a (faked) ZeroGPU Space."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from conftest import ROOT, free_port, stop_app
from studio import deploy
from studio.deploy import MAX_S, MIN_S, gpu_entry, gpu_seconds, request_seconds
from studio.models.device import ZERO_GPU_BYTES, DeviceInfo, probe_device
from studio.pipelines.panorama import PanoramaRequest
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.pipelines.upscale import UpscaleRequest

FAKE_SPACES = ROOT / "tests" / "fixtures" / "fake_spaces"


def test_gpu_time_grows_with_steps_pixels_batch_patches_and_views():
    small = Txt2ImgRequest(prompt="a fox", width=64, height=64, num_inference_steps=2)
    large = Txt2ImgRequest(prompt="a fox", width=1024, height=1024, num_inference_steps=50)
    assert gpu_seconds(small) == MIN_S == 30  # the model load dominates a tiny request
    assert gpu_seconds(large) == round(30 + 50 * 1.048576 * 0.25) == 43
    assert gpu_seconds(Txt2ImgRequest(prompt="a", width=1024, height=1024, num_inference_steps=50, batch_size=4)) == 82
    assert gpu_seconds(Txt2ImgRequest(prompt="a", width=2048, height=2048, num_inference_steps=150,
                                      batch_size=8)) == MAX_S == 300
    # An upscale: stages 1024² -> 2048² of a 512² image, each patch-covered twice, 30 steps at strength 1.
    upscale = UpscaleRequest(prompt="a", image=Image.new("RGB", (512, 512)), scale=4.0, num_inference_steps=10)
    assert gpu_seconds(upscale) == round(30 + (1024**2 + 2048**2) / 1e6 * 2 * 10 * 0.25)
    # A panorama: one ~1 MP run per view of the plan.
    panorama = PanoramaRequest(prompt="a", num_inference_steps=10)
    assert gpu_seconds(panorama) == round(30 + len(panorama.view_plan()) * 10 * 0.25)


def test_a_request_that_cannot_be_made_asks_for_the_least_time():
    def broken(*_):
        raise ValueError("width must be a multiple of 8")

    assert request_seconds(broken)("anything") == MIN_S
    assert request_seconds(lambda steps: Txt2ImgRequest(prompt="a", num_inference_steps=steps))(50) == 43


def test_off_zero_gpu_an_entry_is_the_function_itself(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def fn(data: dict, request: gr.Request):
        return data

    assert gpu_entry(fn, lambda *_: 60) is fn


class Unpicklable:
    """Like a Gradio component: a dict key that cannot be pickled."""

    def __reduce__(self):
        raise TypeError("cannot pickle a component")


@pytest.fixture
def fake_spaces(monkeypatch, tmp_path):
    """ZeroGPU with the fake `spaces` package, in this process; yields its log of durations."""
    log = tmp_path / "spaces.log"
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setenv("FAKE_SPACES_LOG", str(log))
    monkeypatch.syspath_prepend(str(FAKE_SPACES))
    sys.modules.pop("spaces", None)
    yield lambda: [json.loads(line)["seconds"] for line in log.read_text().splitlines()] if log.exists() else []
    sys.modules.pop("spaces", None)


def test_a_zero_gpu_entry_keeps_what_gradio_reads_and_crosses_the_pickle(fake_spaces):
    key = Unpicklable()

    def on_page(data: dict, request: gr.Request):
        yield data[key] * 2
        yield "done"

    entry = gpu_entry(on_page, lambda data, request: 10 * data[key])
    assert entry is not on_page and inspect.isgeneratorfunction(entry)
    assert inspect.signature(entry) == inspect.signature(on_page)
    assert entry.__annotations__ == on_page.__annotations__ and entry.__name__ == "on_page"
    # The component-keyed dict reaches the function (the fake pickles what it passes, as ZeroGPU does).
    assert list(entry({key: 4}, None)) == [8, "done"]
    assert fake_spaces() == [40]  # the duration came from the call's own arguments

    async def on_api(steps: int, request: gr.Request = None):  # ZeroGPU refuses coroutines: it runs inside
        return steps + 1

    api = gpu_entry(on_api, lambda steps, *_: steps)
    assert not inspect.iscoroutinefunction(api) and inspect.signature(api) == inspect.signature(on_api)
    assert api(50) == 51 and fake_spaces() == [40, 50]


def test_a_live_preview_draft_crosses_the_pickle(fake_spaces, manager):
    from studio.ui.jobs import Latest
    from studio.ui.preview import draw_draft, live_preview

    latest = Latest()
    token = latest.bump("s")
    draw = gpu_entry(lambda *args: draw_draft(manager, latest, *args), lambda draft, *_: gpu_seconds(draft))
    request = Txt2ImgRequest(prompt="a fox", width=64, height=64, num_inference_steps=2, seed=3, model="tiny")
    result = live_preview(request, manager, latest, "s", token, debounce_s=0, draw=draw)
    assert result.images[0].size == (64, 64) and result.request.model == "tiny-fast"
    assert fake_spaces() == [MIN_S]


def test_persistent_storage_holds_folders_and_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "missing"))
    assert deploy.data_defaults()["outputs"] == Path("outputs")  # no persistent storage: local folders
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    assert deploy.data_defaults() == {"outputs": tmp_path / "outputs", "user_presets": tmp_path / "user_presets",
                                      "loras": tmp_path / "loras", "cache": tmp_path / "cache" / "studio"}
    monkeypatch.delenv("HF_HOME", raising=False)
    deploy.use_persistent_hub_cache()
    assert os.environ["HF_HOME"] == str(tmp_path / ".huggingface")
    monkeypatch.setenv("HF_HOME", "/elsewhere")  # set by the user: kept
    deploy.use_persistent_hub_cache()
    assert os.environ["HF_HOME"] == "/elsewhere"


def test_the_zero_gpu_probe_asks_cuda_nothing(monkeypatch):
    import torch

    def no_cuda(*_):
        raise AssertionError("CUDA was asked outside a GPU call")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.delenv("STUDIO_ZERO_GPU_DEVICE", raising=False)
    info = probe_device()
    assert (info.device, info.free_bytes, info.index) == ("cuda", ZERO_GPU_BYTES, 0)
    monkeypatch.setenv("STUDIO_ZERO_GPU_DEVICE", "cpu")
    assert probe_device().device == "cpu"
    assert isinstance(probe_device(), DeviceInfo)


def test_the_app_serves_on_a_zero_gpu_space(tmp_path, tiny_cache):
    """One start as on a ZeroGPU Space with persistent storage: no --model (the default SDXL is
    probed at start-up, then replaced by the tiny model offline) and no --outputs."""
    from gradio_client import Client

    data, spaces_log, cuda_log = tmp_path / "data", tmp_path / "spaces.log", tmp_path / "cuda.log"
    data.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPACES_ZERO_GPU": "1", "STUDIO_ZERO_GPU_DEVICE": "cpu",
           "STUDIO_DATA_DIR": str(data), "FAKE_SPACES_LOG": str(spaces_log), "CUDA_LOG": str(cuda_log),
           "PYTHONPATH": os.pathsep.join([str(FAKE_SPACES), os.environ.get("PYTHONPATH", "")])}
    for name in ("STUDIO_OUTPUTS", "STUDIO_USER_PRESETS", "STUDIO_LORAS"):
        env.pop(name, None)
    port = free_port()
    with open(tmp_path / "app.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--cache-dir",
                                 str(tiny_cache)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "app.log").read_text()
            try:
                config = json.loads(urllib.request.urlopen(url + "config", timeout=2).read())
                break
            except OSError:
                time.sleep(0.5)
        assert "txt2img" in json.dumps(config)
        assert not cuda_log.exists(), f"CUDA asked before any GPU call:\n{cuda_log.read_text()}"

        # Big enough to ask for more than the least time (the answer on a bad request), cheap on the tiny model.
        args = dict(prompt="a lighthouse", negative_prompt="", width=512, height=512, num_inference_steps=8,
                    seed=7, model="tiny")
        gallery, seed, _ = Client(url, verbose=False).predict(**args, api_name="/txt2img")
    finally:
        stop_app(proc)
    assert seed == 7 and len(gallery) == 1
    assert Image.open(gallery[0]["image"]).size == (512, 512)
    # The call went through spaces.GPU, asking for the time its request needs.
    expected = gpu_seconds(Txt2ImgRequest(**args))
    assert [json.loads(line)["seconds"] for line in spaces_log.read_text().splitlines()] == [expected]
    assert expected > MIN_S
    saved = sorted((data / "outputs").rglob("*.png"))
    assert len(saved) == 1  # in persistent storage, not in the working folder
    assert not (tmp_path / "outputs").exists()
    assert not cuda_log.exists(), cuda_log.read_text()
