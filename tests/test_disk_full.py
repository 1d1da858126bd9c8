"""A full disk or an outputs folder that cannot be written: a clear error, nothing half-written."""

from __future__ import annotations

import errno
import shutil
from datetime import datetime

import pytest
from PIL import Image

from studio import outputs as outputs_module
from studio.outputs import save_result_images
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.results import Details, PromptDetails, Result


def batch(n=3) -> Result:
    request = Txt2ImgRequest(prompt="a lighthouse", width=64, height=64, seed=5, batch_size=n, model="tiny")
    images = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(n)]
    return Result(request=request, images=images, seeds=[5 + i for i in range(n)], prompt="a lighthouse",
                  negative_prompt="", steps_done=1, total_steps=1, interrupted=False, details=Details(family="sdxl", repo_id="tiny",
                                                                       prompt_encoding=PromptDetails(5, 0, "single window")))


def test_a_batch_is_saved_whole_or_not_at_all(tmp_path, monkeypatch):
    real, calls = outputs_module.save_png, []

    def fails_on_the_third(image, folder, name, info=None):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, folder, name, info)

    monkeypatch.setattr(outputs_module, "save_png", fails_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        save_result_images(batch(), tmp_path)
    assert len(calls) == 3 and list(tmp_path.rglob("*")) == [tmp_path / f"{datetime.now():%Y-%m-%d}"]
    monkeypatch.setattr(outputs_module, "save_png", real)
    assert len(save_result_images(batch(), tmp_path)) == 3  # and once there is room, all of it


def test_unwritable_outputs_is_a_clear_api_error_and_saves_nothing(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, outputs = app
    day = outputs / f"{datetime.now():%Y-%m-%d}"
    day.mkdir(parents=True, exist_ok=True)
    aside = outputs.parent / "outputs-aside"
    shutil.move(day, aside)
    day.write_text("a file where the day's folder should be")  # even root cannot write into it
    try:
        client = Client(app[0], verbose=False)
        with pytest.raises(AppError, match=r"The images could not be saved in .*outputs.* Nothing was saved"):
            client.predict(prompt="a lighthouse", width=64, height=64, num_inference_steps=1, seed=1,
                           api_name="/txt2img")
        assert day.read_text() == "a file where the day's folder should be"  # nothing corrupted
    finally:
        day.unlink()
        shutil.move(aside, day)
    gallery, seed, details = client.predict(prompt="a lighthouse", width=64, height=64, num_inference_steps=1,
                                            seed=1, api_name="/txt2img")
    assert seed == 1 and Image.open(gallery[0]["image"]).size == (64, 64)  # and the next one saves again
