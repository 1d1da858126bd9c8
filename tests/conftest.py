"""Shared fixtures: tiny models built once per run, a manager on a fake CPU probe, a live app."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests never reach the Hub, except the real-model tests on a GPU machine (which have the Hub).
if os.environ.get("STUDIO_GPU_TESTS") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and Hub access")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Folder the tiny models are written to once for the whole run."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def registry():
    from studio.models.registry import load_registry

    return load_registry()


def cpu_probe():
    from studio.models.manager import GB, DeviceInfo

    return DeviceInfo("cpu", free_bytes=16 * GB, ram_bytes=16 * GB)


@pytest.fixture
def manager(registry, tiny_cache):
    from studio.models.manager import ModelManager

    return ModelManager(registry, cache_dir=tiny_cache, probe=cpu_probe, depth_model="tiny-depth",
                        annotator_models={"lineart": "tiny-lineart"})


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these Chromium hangs on a closed network, waiting for Google's services.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # WebGL (the 360° viewer) on the CPU through SwiftShader despite --disable-gpu. Playwright passes
    # this too, but only as one of its defaults.
    "--enable-unsafe-swiftshader",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp: Path, tiny_cache: Path, *args: str, env: dict | None = None):
    """Start `python app.py` on a free loopback port; returns (process, url, outputs folder)."""
    port = free_port()
    outputs = tmp / "outputs"
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--outputs", str(outputs),
           "--cache-dir", str(tiny_cache), *args]
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{(tmp / 'app.log').read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, outputs
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app did not answer within 120 s:\n{(tmp / 'app.log').read_text()}")


def stop_app(proc: subprocess.Popen) -> None:
    """Stop an app started by start_app, killing it if it does not exit within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def app(tmp_path_factory, tiny_cache):
    """A running Studio with the tiny model: (url, outputs folder)."""
    proc, url, outputs = start_app(tmp_path_factory.mktemp("app"), tiny_cache, "--model", "tiny")
    yield url, outputs
    stop_app(proc)


@pytest.fixture(scope="session")
def private_app(tmp_path_factory, tiny_cache):
    """A Studio whose visitors each have their own presets and runs (--user-data private), with a
    valid preset in its presets folder itself, which no visitor should see: (url, tmp folder)."""
    tmp = tmp_path_factory.mktemp("private-app")
    (tmp / "presets").mkdir()
    (tmp / "presets" / "Admin look.json").write_text(json.dumps(
        {"schema_version": 1, "name": "Admin look", "model": "tiny", "txt2img": {"num_inference_steps": 3}}))
    proc, url, _ = start_app(tmp, tiny_cache, "--model", "tiny", "--user-data", "private",
                             "--lora-dir", str(tmp / "loras"), "--user-presets", str(tmp / "presets"))
    yield url, tmp
    stop_app(proc)
