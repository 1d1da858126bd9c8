"""Hostile input through every public endpoint: each bad value is refused with a message that names
the field (or the file), before any model runs, without a traceback in the log or a file on disk;
and afterwards the app answers as before (same pixels for the same seed, same lists).

Most calls go through gradio_client. It cannot send NaN, Infinity or a lone surrogate (its JSON
encoder refuses them), so those go as raw JSON through Gradio's REST route (/gradio_api/call/...).
A few values never reach Studio: Gradio itself checks a file parameter's shape (a number where an
upload goes); those messages are Gradio's, and the table says what they contain.
"""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from test_images import png_header_claiming

pytestmark = pytest.mark.timeout(300)


class File:
    """An upload in the table: one of the files the `files` fixture writes."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"File({self.name})"


def png_bytes(size=(64, 64), colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


CONTENTS = {
    "good.png": png_bytes(),
    "notes.png": b"just some text, not an image",
    "empty.png": b"",
    "truncated.png": png_bytes()[: len(png_bytes()) // 2],
    "bomb.png": png_header_claiming(100_000, 100_000),  # PIL refuses it before Studio reads the size
    "huge.png": png_header_claiming(9000, 9000),  # 81 MP: over Studio's 67 MP
}
GOOD = File("good.png")

# The fastest valid call of each endpoint: each case changes one field of it.
BASE = {
    "/txt2img": dict(prompt="a lighthouse", width=64, height=64, num_inference_steps=1, seed=7),
    "/img2img": dict(image=GOOD, prompt="a lighthouse", strength=1.0, num_inference_steps=1, width=64, height=64),
    "/inpaint": dict(image=GOOD, mask=GOOD, prompt="a lighthouse", strength=1.0, num_inference_steps=1),
    "/outpaint": dict(image=GOOD, prompt="a lighthouse", left=8, right=0, strength=1.0, num_inference_steps=1),
    "/controlnet": dict(control_image=GOOD, prompt="a lighthouse", control_type="canny", num_inference_steps=1,
                        width=64, height=64),
    "/panorama": dict(prompt="a lighthouse", num_inference_steps=1),
    "/upscale": dict(image=GOOD, num_inference_steps=1),
    "/control_hint": dict(image=GOOD, control_type="canny"),
    # No photos: a refused setting is reported before the photo count, so a setting that slipped
    # through shows as the count's message (and no run can start).
    "/train_lora": dict(images=[], trigger_word="sks", model="tiny", max_train_steps=1, name="hostile"),
}
NAMELESS = ("/train_status", "/stop_training", "/resume_training", "/discard_training_run", "/preset", "/apply_preset")

# Refused by Gradio before Studio sees the value: its messages, which it also logs with a traceback.
GRADIO_IMAGE = "validation error for ImageData"  # an upload's shape (a number where a file goes)
GRADIO_FILES = "validation error for ListFiles"  # ... and a list of files' shape
GRADIO = (GRADIO_IMAGE, GRADIO_FILES)

MB_PROMPT = "x" * 1_000_000
DEEP_JSON = '{"schema_version": 2, "name": "deep", "txt2img": ' + "[" * 50_000 + "]" * 50_000 + "}"
HUGE_JSON = json.dumps({"schema_version": 2, "name": "huge", "description": "x" * 1_100_000})
BAD_FILES = [  # (file, words of the message)
    ("notes.png", "not an image Studio can read"),
    ("empty.png", "empty"),
    ("truncated.png", "truncated or damaged"),
    ("bomb.png", "decompression bomb"),
    ("huge.png", "Studio accepts at most 67 megapixels"),
]


def field_cases(endpoint: str, field: str, values: list, words: str | None = None) -> list:
    return [(endpoint, field, v, words or f"({field})") for v in values]


SIZE = [0, -8, 10**9, 100, 64.5, "abc", None, {"w": 64}]
CASES = [
    # --- text to image: every kind of field ---------------------------------------------------
    *field_cases("/txt2img", "width", SIZE),
    *field_cases("/txt2img", "height", [4096, [64], True]),
    *field_cases("/txt2img", "num_inference_steps", [0, 10**6, 2.5, None]),
    *field_cases("/txt2img", "guidance_scale", [-1, 10**400, {"x": 1}]),
    *field_cases("/txt2img", "seed", [10**30, -2, 2.5, "x"]),
    *field_cases("/txt2img", "batch_size", [9]),
    *field_cases("/txt2img", "prompt", [MB_PROMPT, "a\x00b", 5, {"a": 1}, ["a"]]),
    *field_cases("/txt2img", "negative_prompt", ["\x00", 3.5]),
    *field_cases("/txt2img", "scheduler", ["Heun 9000", 3]),
    *field_cases("/txt2img", "model", ["../x", {"a": 1}]),
    *field_cases("/txt2img", "loras", ["../evil:1", "x:nan", 5]),
    *field_cases("/txt2img", "style_prompt", ["no placeholder", None]),
    *field_cases("/txt2img", "original_size", ["1,2,3", "-5, 10", {"a": 1}]),
    *field_cases("/txt2img", "camera_pitch", ["nan", 90, [1]]),
    *field_cases("/txt2img", "dof_mode", [None]),
    # --- the other generation tasks: their own fields and their uploads -------------------------
    *field_cases("/img2img", "strength", [1.5, None]),
    *field_cases("/img2img", "resize_mode", ["stretch"]),
    ("/img2img", "image", None, "Image (image) is missing"),
    *[("/img2img", "image", File(name), words) for name, words in BAD_FILES],
    ("/img2img", "image", 5, GRADIO_IMAGE),
    ("/img2img", "image", {"url": "http://example.com/x.png", "meta": {"_type": "gradio.FileData"}}, "(image)"),
    ("/inpaint", "mask", None, "Mask (mask) is missing"),
    ("/inpaint", "mask", File("notes.png"), "Mask (mask): not an image"),
    ("/inpaint", "image", File("truncated.png"), "Image (image): the image file is truncated"),
    ("/inpaint", "control_image", File("empty.png"), "(control_image): the image file is empty"),
    *field_cases("/inpaint", "mask_grow", [10**9, "x"]),
    *field_cases("/inpaint", "padding", [-4]),
    *field_cases("/inpaint", "masked_content", ["x"]),
    *field_cases("/inpaint", "inpaint_model", ["../x", "no-such-model"]),
    *field_cases("/outpaint", "left", [-8, "x"]),
    ("/outpaint", "left", 0, "(left, right, top, bottom) must add at least one pixel"),
    ("/outpaint", "image", File("bomb.png"), "decompression bomb"),
    ("/controlnet", "control_image", None, "Control image (control_image) is missing"),
    ("/controlnet", "control_image", File("truncated.png"), "(control_image): the image file is truncated"),
    ("/controlnet", "control_hint", File("notes.png"), "(control_hint): not an image"),
    ("/controlnet", "init_image", File("bomb.png"), "(init_image): the image is over"),
    ("/controlnet", "control_image_2", File("empty.png"), "(control_image_2): the image file is empty"),
    *field_cases("/controlnet", "controlnet_conditioning_scale", ["x", 5]),
    *field_cases("/controlnet", "control_guidance_start", [2]),
    *field_cases("/controlnet", "control_type", ["x"]),
    *field_cases("/controlnet", "controlnet_model", ["../x", "no-such-model"]),
    *field_cases("/panorama", "width", [10**9]),
    *field_cases("/panorama", "views", ["x", "[]", {"a": 1}]),
    *field_cases("/panorama", "fov", [-1]),
    *field_cases("/panorama", "exposures", ["nan,inf"]),
    *field_cases("/panorama", "inpaint_model", ["../x"]),
    *field_cases("/panorama", "prompt", ["a\x00"]),
    ("/upscale", "image", None, "Image (image) is missing"),
    ("/upscale", "image", File("notes.png"), "not an image Studio can read"),
    *field_cases("/upscale", "scale", [10**9, "x"]),
    *field_cases("/upscale", "patch_batch", [0]),
    *field_cases("/upscale", "tile_controlnet", ["../x"]),
    *field_cases("/upscale", "prompt", ["\x00"]),
    ("/control_hint", "image", None, "Control image (control_image) is missing"),
    *[("/control_hint", "image", File(name), words) for name, words in BAD_FILES],
    *field_cases("/control_hint", "control_type", ["x", None]),
    *field_cases("/control_hint", "canny_low_threshold", [-5, "x", 10**30]),
    # --- LoRA training: settings, photos and names --------------------------------------------
    *field_cases("/train_lora", "name", ["../x", "/abs/path", "a\x00b", ".hidden"], "name"),
    *field_cases("/train_lora", "trigger_word", [""], "trigger_word"),
    *field_cases("/train_lora", "instance_prompt", [None, "no trigger"], "instance_prompt"),
    *field_cases("/train_lora", "sample_prompt", [None, ""], "sample_prompt"),
    *field_cases("/train_lora", "max_train_steps", [0, 10**9], "max_train_steps"),
    *field_cases("/train_lora", "rank", [0, 129], "rank"),
    *field_cases("/train_lora", "learning_rate", [0, "x", 10**400], "learning_rate"),
    *field_cases("/train_lora", "seed", [-1], "seed"),
    *field_cases("/train_lora", "min_snr_gamma", ["x", "-1"], "min_snr_gamma"),
    ("/train_lora", "max_train_steps", "many", "max_train_steps must be an integer in [1, 20000], got 'many'"),
    ("/train_lora", "optimizer", "sgd", "optimizer must be one of 'adamw', 'prodigy', got 'sgd'"),
    ("/train_lora", "model", "controlnet-depth-sdxl", "model must be a full base model, got 'controlnet-depth-sdxl'"),
    ("/train_lora", "images", 5, GRADIO_FILES),
    ("/train_lora", "captions", 7, "captions must be text, one caption a line, got 7"),
    ("/train_lora", "images", [File("notes.png"), GOOD, GOOD], "images: notes.png: not an image"),
    # --- names and ids --------------------------------------------------------------------------
    *[(api, "name", v, "name") for api in ("/resume_training", "/discard_training_run")
      for v in ("../x", "/etc", "a\x00b", None, {"a": 1}, "x" * 100_000)],
    *[(api, "job_id", v, "no training job") for api in ("/train_status", "/stop_training")
      for v in ("../x", {"a": 1}, ["x"], "x" * 100_000)],
    *field_cases("/preset", "name", ["../x", {"a": 1}, "x" * 100_000], "unknown preset"),
    *field_cases("/apply_preset", "preset", [
        "{", HUGE_JSON, DEEP_JSON, '{"schema_version": 2, "name": "x", "txt2img": {"width": NaN}}',
        '{"schema_version": 2, "name": "x", "txt2img": {"width": {"a": 1}}}', '{"schema_version": "2"}',
        '{"schema_version": 2, "name": "../x"}', '{"schema_version": 2, "name": "x", "task": {"a": 1}}',
        '[1, 2]', {"a": 1}, None], "Preset not applied"),
]

# What gradio_client cannot send: NaN, Infinity and lone surrogates, as raw JSON.
NAN, INF = float("nan"), float("inf")
RAW_CASES = [
    *field_cases("/txt2img", "width", [NAN, INF]),
    *field_cases("/txt2img", "num_inference_steps", [-INF]),
    *field_cases("/txt2img", "guidance_scale", [NAN, INF]),
    *field_cases("/txt2img", "seed", [NAN]),
    *field_cases("/txt2img", "camera_pitch", [NAN]),
    *field_cases("/txt2img", "prompt", ["a\ud800b"]),
    *field_cases("/txt2img", "negative_prompt", ["\udfff"]),
    *field_cases("/txt2img", "loras", ["\ud800:1"]),
    *field_cases("/panorama", "fov", [NAN]),
    *field_cases("/panorama", "prompt", ["\ud800"]),
    *field_cases("/train_lora", "learning_rate", [NAN, INF], "learning_rate"),
    *field_cases("/train_lora", "trigger_word", ["\ud800"], "trigger_word"),
    *field_cases("/train_lora", "name", ["\ud800"], "name"),
    *field_cases("/discard_training_run", "name", ["\ud800"], "name"),
    *field_cases("/apply_preset", "preset", ['{"schema_version": 2, "name": "\ud800"}'], "Preset not applied"),
]
ELAPSED: list[float] = []  # seconds per hostile call, for the module's time check


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-files")
    for name, content in CONTENTS.items():
        (folder / name).write_bytes(content)
    return folder


def seeded_pixels(client) -> np.ndarray:
    gallery, _, _ = client.predict(**BASE["/txt2img"], api_name="/txt2img")
    return np.asarray(Image.open(gallery[0]["image"]))


def listings(client) -> tuple:
    return tuple(client.predict(api_name=api) for api in ("/presets", "/loras", "/training_runs"))


def app_files(app) -> set:
    """Every file the app wrote in its folder (outputs, LoRAs, training runs, presets), but its log."""
    return {p for p in app[1].parent.rglob("*") if p.is_file() and p.name != "app.log"}


@pytest.fixture(scope="module")
def before(client, app):
    """The app's answers before the barrage: a seeded image's pixels, the lists, its files."""
    return seeded_pixels(client), listings(client), app_files(app)


def upload(value, files):
    from gradio_client import handle_file

    if isinstance(value, File):
        return handle_file(str(files / value.name))
    if isinstance(value, list):
        return [upload(v, files) for v in value]
    return value


def call(client, files, endpoint, field, value):
    """Call `endpoint` with its base arguments and `field` set to `value`; returns the error message
    (None if the call succeeded)."""
    from gradio_client.exceptions import AppError

    args = {k: upload(v, files) for k, v in BASE.get(endpoint, {}).items()}
    try:
        if endpoint in NAMELESS:  # one positional parameter
            client.predict(upload(value, files), api_name=endpoint)
        else:
            client.predict(**{**args, field: upload(value, files)}, api_name=endpoint)
    except AppError as exc:
        return str(exc)
    return None


def raw_call(client, app, endpoint, field, value):
    """The same through Gradio's REST route, with JSON that may hold NaN, Infinity or "\\ud800"."""
    import httpx

    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][endpoint]["parameters"]
    given = {**BASE.get(endpoint, {}), field: value}
    data = [given.get(p["parameter_name"], p["parameter_default"]) for p in params]
    body = json.dumps({"data": data}, allow_nan=True, ensure_ascii=True)  # a lone surrogate as its escape
    url = f"{app[0]}gradio_api/call{endpoint}"
    started = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert started.status_code == 200, started.text[:500]
    with httpx.stream("GET", f"{url}/{started.json()['event_id']}", timeout=120) as stream:
        events = "".join(stream.iter_text())
    if "event: error" not in events:
        return None
    payload = events.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
    error = json.loads(payload)
    return error.get("error") if isinstance(error, dict) else error


def check_refused(app, files_before, log_before, message, words, elapsed):
    assert message is not None, "the hostile value was accepted"
    assert words in message, message[:1000]
    # A clear message: a sentence of ours, not an empty "Error", a traceback or an echo of 1 MB.
    assert len(message) > 20 and "Traceback" not in message and len(message) < 3000, message[:3000]
    log = app[1].parent / "app.log"
    added = log.read_text(errors="replace")[len(log_before):]
    assert words in GRADIO or "Traceback" not in added, added[-3000:]
    assert app_files(app) == files_before  # no image, run folder, LoRA or preset appeared
    assert elapsed < 10, f"refusing took {elapsed:.1f} s: did a model run?"
    ELAPSED.append(elapsed)


@pytest.mark.parametrize("endpoint, field, value, words", CASES,
                         ids=[f"{e[1:]}-{f}-{str(v)[:20]!r}" for e, f, v, _ in CASES])
def test_hostile_value_is_refused_clearly(client, app, files, before, endpoint, field, value, words):
    files_before, log_before = app_files(app), (app[1].parent / "app.log").read_text(errors="replace")
    start = time.monotonic()
    message = call(client, files, endpoint, field, value)
    check_refused(app, files_before, log_before, message, words, time.monotonic() - start)


@pytest.mark.parametrize("endpoint, field, value, words", RAW_CASES,
                         ids=[f"{e[1:]}-{f}-{v!r}" for e, f, v, _ in RAW_CASES])
def test_values_json_clients_cannot_send_are_refused_clearly(client, app, before, endpoint, field, value, words):
    files_before, log_before = app_files(app), (app[1].parent / "app.log").read_text(errors="replace")
    start = time.monotonic()
    message = raw_call(client, app, endpoint, field, value)
    check_refused(app, files_before, log_before, message, words, time.monotonic() - start)


def test_two_clients_hammering_at_once_both_get_clear_errors(app, files, before):
    """Two people sending hostile values at the same time: every call gets its own clear message."""
    from gradio_client import Client

    chosen = [c for c in CASES if c[0] in ("/txt2img", "/img2img", "/control_hint", "/apply_preset")][::4][:12]
    results: dict[int, list] = {0: [], 1: []}

    def hammer(who: int) -> None:
        client = Client(app[0], verbose=False)
        for endpoint, field, value, words in chosen[who::2] + chosen[1 - who::2]:
            results[who].append((call(client, files, endpoint, field, value), words))

    threads = [threading.Thread(target=hammer, args=(who,)) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a hostile call hung"
    for who in (0, 1):
        assert len(results[who]) == len(chosen)
        for message, words in results[who]:
            assert message is not None and words in message, (message or "")[:500]


def test_the_app_is_unchanged_after_the_barrage(client, app, before):
    pixels, lists, files_before = before
    assert app_files(app) == files_before  # the barrage wrote nothing
    assert listings(client) == lists
    assert np.array_equal(seeded_pixels(client), pixels)  # same seed, same image: no state was left behind
    # Refused before any model ran: milliseconds each, not a generation's seconds.
    assert sum(ELAPSED) < 120 and max(ELAPSED, default=0) < 10
