"""`/panorama` in the running app, through gradio_client (the tab in a browser: test_browser_panorama.py)."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from studio.ui.sphere import sphere_value
from studio.ui.zoom import file_url

PLAN = json.dumps([{"yaw": y, "pitch": 0, "fov": 120} for y in (0, 90, 180, 270)]
                  + [{"yaw": 0, "pitch": 90, "fov": 120}, {"yaw": 0, "pitch": -90, "fov": 120}])
FAST = dict(num_inference_steps=2, seed=3, model="tiny", width=512, views=PLAN)


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def test_panorama_api_returns_the_image_hdr_exr_and_details(client):
    import OpenEXR

    ldr, hdr_path, exr_path, details = client.predict(prompt="a forest clearing, 360 panorama", **FAST,
                                                      api_name="/panorama")
    with Image.open(ldr) as image:
        assert image.size == (512, 256) and '"task": "panorama"' in image.text["studio"]
    radiance = cv2.imread(hdr_path, cv2.IMREAD_UNCHANGED)
    assert radiance.shape == (256, 512, 3) and radiance.dtype == np.float32 and np.isfinite(radiance).all()
    with OpenEXR.File(exr_path) as exr:
        channels = exr.channels()
        assert any(np.isfinite(np.asarray(c.pixels)).all() for c in channels.values())
    assert details["task"] == "panorama" and details["panorama"]["canvas_size"] == [512, 256]
    assert len(details["panorama"]["views"]) == 6 and details["seed"] == 3


def test_panorama_api_parameters_default_all_but_the_prompt(client):
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/panorama"]
    params = {p["parameter_name"]: p for p in endpoint["parameters"]}
    for name in ("prompt", "negative_prompt", "width", "num_inference_steps", "guidance_scale", "seed", "model",
                 "views"):
        assert name in params, name
    assert [n for n, p in params.items() if not p["parameter_has_default"]] == ["prompt"]


@pytest.mark.parametrize("changes, message", [
    (dict(width=1000), "Canvas width (width) must be a multiple of 16, got 1000"),
    (dict(views='[{"yaw": 0, "pitch": 0, "fov": 90}]'), "of the sphere unpainted; the largest gap is around"),
])
def test_panorama_api_refuses_bad_input(client, changes, message):
    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(prompt="x", **{**FAST, **changes}, api_name="/panorama")


def test_value_is_json_of_file_urls_or_empty(tmp_path):
    assert sphere_value(None, None) == ""
    value = json.loads(sphere_value(tmp_path / "a b.hdr", tmp_path / "a.png"))
    assert value == {"hdr": file_url(tmp_path / "a b.hdr"), "exr": None, "ldr": file_url(tmp_path / "a.png")}
    assert value["hdr"].startswith("/gradio_api/file=/") and "a%20b.hdr" in value["hdr"]
    assert json.loads(sphere_value(None, None, tmp_path / "a.exr"))["exr"] == file_url(tmp_path / "a.exr")
