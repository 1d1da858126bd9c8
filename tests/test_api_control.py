"""ControlNet, inpainting and outpainting through the running app's public API (gradio_client), with
the tiny model: /controlnet, /control_hint, /inpaint and /outpaint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROMPT = "a lighthouse on a cliff"
BOX = (40, 30, 60, 50)  # the inpainting mask's white box (left, top, right, bottom) in the 96×80 source


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def call(client, endpoint: str, *args, **kwargs):
    """client.predict(...) with every Path argument uploaded as a file."""
    from gradio_client import handle_file

    def upload(value):
        return handle_file(str(value)) if isinstance(value, Path) else value

    return client.predict(*map(upload, args), **{k: upload(v) for k, v in kwargs.items()}, api_name=endpoint)


def photo(size=(64, 64)) -> Image.Image:
    """A picture with edges: a bright square and a dark disc on a gradient."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 90.0)], axis=-1)
    rgb[h // 5:h // 2, w // 5:w // 2] = 250
    rgb[(x - 0.7 * w) ** 2 + (y - 0.7 * h) ** 2 < (min(w, h) / 6) ** 2] = 10
    return Image.fromarray(rgb.astype(np.uint8))


def box_mask(size=(96, 80), box=BOX) -> np.ndarray:
    """bool (H, W): True inside `box`."""
    mask = np.zeros((size[1], size[0]), bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input file the tests upload, written once."""
    folder = tmp_path_factory.mktemp("control-inputs")

    def save(name: str, image: Image.Image, **options) -> Path:
        image.save(folder / name, **options)
        return folder / name

    paths = {"photo": save("photo.png", photo()), "wide": save("wide.png", photo((120, 80)))}
    source = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)  # (H, W, 3)
    paths["source"] = save("source.png", Image.fromarray(source))
    paths["mask"] = save("mask.png", Image.fromarray(box_mask().astype(np.uint8) * 255))
    brush = np.zeros((80, 96, 4), np.uint8)  # a brush layer: transparent except a painted red box
    brush[box_mask()] = (255, 0, 0, 255)
    paths["brush"] = save("brush.png", Image.fromarray(brush))
    paths["black"] = save("black.png", Image.new("L", (96, 80), 0))
    paths["white"] = save("white.png", Image.new("L", (96, 80), 255))
    paths["square"] = save("square.png", Image.new("L", (80, 80), 255))
    buffer = io.BytesIO()
    photo().save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "text.png").write_bytes(b"just some text, not an image")
    paths["truncated"], paths["text"] = folder / "truncated.png", folder / "text.png"

    # Unusual encodings: CMYK cyan, 16-bit grey 128·257 (8-bit 128), a red|blue palette image, and
    # a 64×48 landscape JPEG whose EXIF orientation 6 (rotate 90° clockwise) makes it 48×64 portrait.
    paths["cmyk"] = save("cmyk.jpg", Image.new("CMYK", (64, 64), (255, 0, 0, 0)), quality=95)
    paths["grey16"] = save("grey16.png", Image.fromarray(np.full((64, 64), 128 * 257, np.uint16)))
    halves = np.zeros((64, 64), np.uint8)
    halves[:, 32:] = 1
    palette = Image.fromarray(halves, "P")
    palette.putpalette([255, 0, 0, 0, 0, 255])
    paths["palette"] = save("palette.png", palette)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    paths["rotated"] = save("rotated.jpg", Image.new("RGB", (64, 48), (230, 230, 230)), exif=exif, quality=95)
    assert [Image.open(paths[k]).mode for k in ("cmyk", "grey16", "palette")] == ["CMYK", "I;16", "P"]
    return paths


def open_pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def saved_files(outputs: Path) -> set[Path]:
    return {p for p in outputs.rglob("*") if p.is_file()}


# --- /controlnet ---------------------------------------------------------------------------------

def test_one_control_image_picks_the_canny_controlnet_and_records_it(client, app, files):
    from studio.metadata import read_png_settings

    gallery, seed, details = call(client, "/controlnet", control_image=files["photo"], prompt=PROMPT,
                                  control_type="canny", seed=7)
    assert len(gallery) == 1 and seed == 7
    image = Image.open(gallery[0]["image"])
    assert (image.format, image.size) == ("PNG", (64, 64))
    assert [(u["unit"], u["control_type"], u["controlnet"], u["hint_size"]) for u in details["control"]] == [
        (0, "canny", "tiny-controlnet-canny", [64, 64])]
    assert (details["task"], details["steps_done"], details["total_steps"]) == ("controlnet", 2, 2)
    assert "input_image" not in details  # no initial image: text-to-image
    task, request, source = read_png_settings(gallery[0]["image"])
    assert (task, source) == ("controlnet", "studio")
    assert request["controlnet_model"] == "tiny-controlnet-canny"  # the ControlNet picked, so the PNG remakes it
    assert "control_image" not in request  # an input, not a setting
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet-canny, Weight: 1' in image.text["parameters"]
    # The API's file is the one saved in the outputs folder
    saved = [p for p in saved_files(app[1]) if p.name == Path(gallery[0]["image"]).name]
    assert len(saved) == 1 and np.array_equal(open_pixels(str(saved[0])), np.asarray(image.convert("RGB")))


def test_the_control_steers_the_image_and_weight_zero_is_text_to_image(client, files):
    def image(**overrides) -> np.ndarray:
        gallery, _, _ = call(client, "/controlnet", control_image=files["photo"], prompt=PROMPT,
                             control_type="canny", seed=11, **overrides)
        return open_pixels(gallery[0]["image"])

    plain_gallery, _, _ = call(client, "/txt2img", prompt=PROMPT, seed=11)
    plain = open_pixels(plain_gallery[0]["image"])
    assert np.array_equal(image(controlnet_conditioning_scale=0.0), plain)
    steered = image()
    assert np.array_equal(steered, image())  # same seed, same image
    assert np.abs(steered.astype(int) - plain).mean() > 1.0


def test_two_units_and_their_saved_hints(client, app, files):
    from studio.hints import canny_hint

    gallery, seed, details = call(client, "/controlnet", control_image=files["photo"], prompt=PROMPT,
                                  control_type="canny", control_image_2=files["photo"], control_type_2="depth",
                                  save_hints=True, seed=5)
    assert [item["caption"] for item in gallery] == [None, "hint 1", "hint 2"]
    assert [(u["unit"], u["control_type"], u["controlnet"]) for u in details["control"]] == [
        (0, "canny", "tiny-controlnet-canny"), (1, "depth", "tiny-controlnet-depth")]
    assert details["controlnet_model_2"] == "tiny-controlnet-depth"
    assert 'ControlNet 1: "Module: depth, Model: tiny-controlnet-depth' in Image.open(gallery[0]["image"]).text[
        "parameters"]
    # Saved beside the image, named after it
    stem = Path(gallery[0]["image"]).stem
    hints = sorted((p for p in saved_files(app[1]) if p.name.startswith(f"{stem}-hint-")), key=lambda p: p.name)
    assert [p.name for p in hints] == [f"{stem}-hint-1.png", f"{stem}-hint-2.png"]
    for saved, item in zip(hints, gallery[1:]):
        assert np.array_equal(open_pixels(str(saved)), open_pixels(item["image"]))
    # The 64 px photo at a 64 px output is neither resized nor cropped: hint 1 is its Canny edges exactly
    edges = open_pixels(str(hints[0]))
    assert np.array_equal(edges, np.asarray(canny_hint(photo(), 100, 200))) and edges.max() == 255
    depth = open_pixels(str(hints[1]))
    assert depth.shape == (64, 64, 3) and (depth == depth[..., :1]).all()  # grey


def test_a_given_hint_is_used_as_it_is(client, files):
    gallery, _, details = call(client, "/controlnet", control_image=None, control_hint=files["photo"], prompt=PROMPT,
                               control_type="none", controlnet_model="tiny-controlnet-depth", save_hints=True)
    assert [item["caption"] for item in gallery] == [None, "hint 1"]
    assert details["control"][0]["hint_given"] is True
    assert np.array_equal(open_pixels(gallery[1]["image"]), np.asarray(photo()))


def test_controlnet_from_an_initial_image(client, files):
    gallery, _, details = call(client, "/controlnet", control_image=files["photo"], prompt=PROMPT,
                               control_type="canny", init_image=files["source"], strength=0.5, seed=3)
    # The tiny model's 2 steps at strength 0.5: diffusers runs the last int(2 · 0.5) = 1
    assert details["input_image"] == {"input_size": [96, 80], "resize_mode": "crop and resize", "steps_run": 1}
    assert (details["steps_done"], details["total_steps"]) == (1, 1)
    image = Image.open(gallery[0]["image"])
    assert image.size == (64, 64) and "Denoising strength: 0.5" in image.text["parameters"]
    assert "init_image" not in json.loads(image.text["studio"])["request"]


# --- /control_hint -------------------------------------------------------------------------------

def test_control_hint_canny_is_the_canny_of_the_image(client, files):
    from studio.hints import canny_hint

    edges = {}
    for low, high in ((100, 200), (20, 60)):
        edges[low] = open_pixels(call(client, "/control_hint", files["photo"], "canny", low, high))
        assert np.array_equal(edges[low], np.asarray(canny_hint(photo(), low, high)))
        assert edges[low].max() == 255 and (edges[low] == 0).any()  # edges, not a blank image
    assert (edges[20] > 0).sum() > (edges[100] > 0).sum()  # lower thresholds find more edges


def test_control_hint_depth_keeps_the_images_aspect(client, files):
    hint = open_pixels(call(client, "/control_hint", files["wide"], "depth"))
    assert hint.shape == (80, 120, 3)  # the 120×80 image's size: a multiple of 8 under a megapixel
    assert (hint == hint[..., :1]).all()  # grey: near is bright


@pytest.mark.parametrize(
    "args, words",
    [
        (("photo", "sobel"), ["Control type (control_type) must be one of", "'sobel'"]),
        ((None, "canny"), ["Control image (control_image) is missing"]),
        (("photo", "canny", 200, 100), ["canny_low_threshold", "canny_high_threshold", "200 > 100"]),
    ],
    ids=["unknown-type", "no-image", "low-above-high"],
)
def test_control_hint_errors(client, files, args, words):
    from gradio_client.exceptions import AppError

    image, *rest = args
    with pytest.raises(AppError) as err:
        call(client, "/control_hint", files[image] if image else None, *rest)
    assert all(word in str(err.value) for word in words), str(err.value)


# --- /inpaint and /outpaint ----------------------------------------------------------------------

@pytest.mark.parametrize("mask", ["mask", "brush"], ids=["white-box", "rgba-brush-layer"])
def test_inpaint_keeps_every_pixel_outside_the_mask(client, files, mask):
    from studio.metadata import read_png_settings

    source, inside = open_pixels(str(files["source"])), box_mask()
    gallery, _, details = call(client, "/inpaint", image=files["source"], mask=files[mask], prompt=PROMPT,
                               mask_blur=0, seed=4)
    out = open_pixels(gallery[0]["image"])
    assert out.shape == source.shape
    assert np.array_equal(out[~inside], source[~inside])  # mask_blur 0: no seam to feather
    assert (out[inside] != source[inside]).any(axis=-1).mean() > 0.9  # a random source: repainted differs
    assert details["inpaint"]["mode"] == "inpaint" and details["inpaint"]["window"] == [0, 0, 96, 80]
    assert details["inpaint"]["mask_coverage"] == pytest.approx(20 * 20 / (96 * 80), abs=1e-4)
    assert read_png_settings(gallery[0]["image"])[0] == "inpaint"
    assert "Mask blur: 0" in Image.open(gallery[0]["image"]).text["parameters"]


def test_inpaint_only_masked_repaints_the_padded_box(client, files):
    source, inside = open_pixels(str(files["source"])), box_mask()
    gallery, _, details = call(client, "/inpaint", image=files["source"], mask=files["mask"], prompt=PROMPT,
                               mask_blur=0, inpaint_only_masked=True, padding=8)
    left, top, right, bottom = BOX
    assert details["inpaint"]["window"] == [left - 8, top - 8, right + 8, bottom + 8]
    assert details["inpaint"]["working_size"] == [64, 64]  # the square window at the model's own size
    out = open_pixels(gallery[0]["image"])
    assert np.array_equal(out[~inside], source[~inside])


def test_a_full_mask_is_image_to_image(client, files):
    gallery, _, details = call(client, "/inpaint", image=files["source"], mask=files["white"], prompt=PROMPT)
    assert details["inpaint"]["mode"].startswith("image-to-image")
    assert details["inpaint"]["mask_coverage"] == 1.0
    assert Image.open(gallery[0]["image"]).size == (96, 80)


def test_outpaint_grows_the_canvas_and_keeps_the_original(client, files):
    from studio.masks import outpaint_canvas

    source = open_pixels(str(files["source"]))
    gallery, _, details = call(client, "/outpaint", image=files["source"], prompt=PROMPT, left=16, right=0, top=8,
                               bottom=0)
    out = open_pixels(gallery[0]["image"])
    assert out.shape == (80 + 8, 96 + 16, 3)
    assert np.array_equal(out[8:, 16:], source)  # the default mask blur feathers into the new area only
    canvas, new_area = outpaint_canvas(Image.fromarray(source), 16, 0, 8, 0)
    assert (out[new_area] != np.asarray(canvas)[new_area]).any(axis=-1).mean() > 0.5  # painted, not smeared edges
    assert details["inpaint"]["mode"] == "outpaint" and details["inpaint"]["output_size"] == [112, 88]


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "endpoint, inputs, words",
    [
        ("/controlnet", dict(control_image=None), ["Control image (control_image) is missing"]),
        ("/controlnet", dict(controlnet_conditioning_scale=2.5),
         ["Control weight (controlnet_conditioning_scale)", "[0, 2]", "2.5"]),
        ("/controlnet", dict(control_guidance_start=0.8, control_guidance_end=0.5),
         ["control_guidance_start", "control_guidance_end", "0.8", "0.5"]),
        ("/controlnet", dict(control_type="depth", controlnet_model="controlnet-depth-sd15"),
         ["'controlnet-depth-sd15' is for 'sd15' models", "'tiny' is 'sdxl'", "tiny-controlnet-depth"]),
        ("/controlnet", dict(controlnet_model="tiny"), ["must be a ControlNet", "'tiny'", "role 'base'"]),
        ("/controlnet", dict(control_type="none"), ["Control type 'none'", "controlnet_model"]),
        ("/controlnet", dict(control_image="truncated"), ["Control image (control_image)", "truncated or damaged"]),
        ("/controlnet", dict(control_image="text"), ["Control image (control_image)", "not an image"]),
        ("/controlnet", dict(control_image_2="text"), ["Control image (control_image_2)", "not an image"]),
        ("/inpaint", dict(mask="black"), ["Mask (mask) is empty"]),
        ("/inpaint", dict(mask="square"), ["Mask (mask) must have the image's aspect ratio", "80x80", "96x80"]),
        ("/inpaint", dict(mask="text"), ["Mask (mask)", "not an image"]),
        ("/outpaint", dict(left=0, right=0, top=0, bottom=0), ["must add at least one pixel", "0, 0, 0, 0"]),
    ],
    ids=["no-control-image", "weight", "start-after-end", "other-family", "not-a-controlnet", "none-without-model",
         "truncated", "not-an-image", "second-unit-not-an-image", "empty-mask", "mask-aspect", "mask-not-an-image",
         "outpaint-nothing"],
)
def test_bad_input_is_a_clear_error_and_saves_nothing(client, app, files, endpoint, inputs, words):
    from gradio_client.exceptions import AppError

    base = {"/controlnet": dict(control_image="photo", control_type="canny"),
            "/inpaint": dict(image="source", mask="mask"),
            "/outpaint": dict(image="source")}[endpoint]
    # In the table an upload field names one of the input files
    uploads = ("control_image", "control_image_2", "image", "mask")
    args = {k: files[v] if k in uploads and v else v for k, v in {**base, **inputs}.items()}
    before = saved_files(app[1])
    with pytest.raises(AppError) as err:
        call(client, endpoint, prompt=PROMPT, **args)
    assert all(word in str(err.value) for word in words), str(err.value)
    assert saved_files(app[1]) == before


# --- unusual image encodings -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cmyk", "grey16", "palette", "rotated"])
def test_unusual_encodings_as_a_ready_hint(client, files, name):
    gallery, _, details = call(client, "/controlnet", control_image=files[name], prompt=PROMPT, control_type="none",
                               controlnet_model="tiny-controlnet-depth", control_resize_mode="resize and fill",
                               save_hints=True)
    assert details["control"][0]["hint_size"] == [64, 64]
    assert [item["caption"] for item in gallery] == [None, "hint 1"]
    hint = open_pixels(gallery[1]["image"]).astype(int)  # (64, 64, 3)
    if name == "cmyk":  # full cyan, no black: R = 255 − C − K = 0
        assert np.abs(hint - (0, 255, 255)).max() <= 3
    elif name == "grey16":  # scaled by 1/257, not clipped to white
        assert np.abs(hint - 128).max() <= 1
    elif name == "palette":
        assert np.abs(hint[:, :28] - (255, 0, 0)).max() <= 2 and np.abs(hint[:, 36:] - (0, 0, 255)).max() <= 2
    else:  # upright it is 48×64 portrait: fitted into 64×64 with black bands left and right, none above
        assert hint[:, :8].max() == 0 and hint[:, 56:].max() == 0
        assert np.abs(hint[:, 8:56] - 230).max() <= 3
