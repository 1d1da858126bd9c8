"""`/upscale` in the running app, through gradio_client (the tab in a browser: test_browser_upscale.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image


FAST = dict(num_inference_steps=2, slider=1, seed=3, model="tiny")


def small_picture(folder) -> object:
    """A 64×48 gradient PNG in `folder`."""
    y, x = np.mgrid[0:48, 0:64]
    path = folder / "small.png"
    Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    return small_picture(tmp_path_factory.mktemp("upscale"))


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def test_upscale_api_returns_the_full_image_and_details(client, app, picture):
    from gradio_client import handle_file

    path, details = client.predict(image=handle_file(str(picture)), scale=2, **FAST, api_name="/upscale")
    with Image.open(path) as image:
        assert image.size == (128, 96) and image.format == "PNG"
        assert '"task": "upscale"' in image.text["studio"]
    assert details["upscale"]["output_size"] == [128, 96] and details["upscale"]["stages"] == [[128, 96]]
    assert details["scale"] == 2 and details["slider"] == 1 and details["seed"] == 3
    saved = [p for p in app[1].rglob("*.dzi")]
    assert saved and all((p.parent / f"{p.stem}_files").is_dir() for p in saved)


def test_upscale_api_parameters_default_all_but_the_image(client):
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/upscale"]
    params = {p["parameter_name"]: p for p in endpoint["parameters"]}
    for name in ("image", "scale", "prompt", "negative_prompt", "num_inference_steps", "slider", "seed", "model",
                 "phase_fusion", "laplacian_fusion", "tile_controlnet"):
        assert name in params, name
    assert [n for n, p in params.items() if not p["parameter_has_default"]] == ["image"]


@pytest.mark.parametrize("changes, message", [
    (dict(scale=0.5), "Scale (scale) must be a finite number in [1, 64], got 0.5"),
    (dict(slider=5), "Slider (slider) must be in [0, 2] (the steps run), got 5"),
])
def test_upscale_api_refuses_bad_input(client, picture, changes, message):
    from gradio_client import handle_file

    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(image=handle_file(str(picture)), **{**FAST, "scale": 2, **changes}, api_name="/upscale")


def test_upscale_api_refuses_a_target_beyond_the_pixel_limit(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "square.png"
    Image.new("RGB", (300, 300), (120, 90, 60)).save(path)
    # 300 × 64 = 19200 px a side: 369 megapixels, past the default 16384² (268 megapixels)
    with pytest.raises(Exception, match="makes 300×300 into 19200×19200 .* at most 268 megapixels are allowed"):
        client.predict(image=handle_file(str(path)), **{**FAST, "scale": 64}, api_name="/upscale")


def test_upscale_api_refuses_a_file_that_is_not_an_image(client, tmp_path):
    from gradio_client import handle_file

    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    with pytest.raises(Exception, match="not an image|cannot be read|cannot identify"):
        client.predict(image=handle_file(str(fake)), **FAST, api_name="/upscale")
