"""Opening user images: refusals (bombs, truncated, non-images), EXIF, RGB rules, resize modes."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from studio.images import MAX_INPUT_PIXELS, RESIZE_MODES, fit_size, open_image, resize_image, to_rgb

RED, BLUE, GREEN, YELLOW = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data (PNG specification, section 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width × height 8-bit RGB; its IDAT holds a few bytes only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # depth 8, colour type 2 (RGB)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def pattern(size=(64, 48)) -> Image.Image:
    """Red left half, blue right half."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = RED
    a[:, w // 2 :] = BLUE
    return Image.fromarray(a)


def pixel(image: Image.Image, x: int, y: int) -> tuple:
    return tuple(int(v) for v in image.getpixel((x, y)))


def near(a, b, tol=3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# --- refusals ---------------------------------------------------------------------------------


def test_the_limit_is_8192_squared():
    assert MAX_INPUT_PIXELS == 67_108_864


def test_a_header_over_our_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_claiming(9000, 9000))  # 81 MP: under PIL's own limits, over ours
    with pytest.raises(ValueError, match=r"^the image is 9000×9000 = 81 megapixels; "
                                         r"Studio accepts at most 67 megapixels$"):
        open_image(path)
    with pytest.raises(ValueError, match="the image is 30×20 = 0 megapixels; Studio accepts at most 0"):
        open_image(encode(pattern((30, 20))), max_pixels=599)
    assert open_image(encode(pattern((30, 20))), max_pixels=600).size == (30, 20)


def test_a_decompression_bomb_is_refused_fast_in_our_words(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_claiming(100_000, 100_000))  # 10 gigapixels = 30 GB decoded
    start = time.perf_counter()
    with pytest.raises(ValueError, match="PIL refuses it as a decompression bomb.*"
                                         "Studio accepts at most 67 megapixels") as info:
        open_image(path)
    assert time.perf_counter() - start < 1.0  # nothing was decoded or allocated
    assert "over 179 megapixels" in str(info.value)
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(path.read_bytes())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_file_is_refused(fmt):
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), fmt)
    assert open_image(data).size == (64, 64)
    with pytest.raises(ValueError, match="^the image file is truncated or damaged"):
        open_image(data[: len(data) // 2])


def test_a_text_file_named_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(ValueError, match=r"^not an image Studio can read \(PNG, JPEG, WebP"):
        open_image(path)


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="^the image file is empty$"):
        open_image(path)
    with pytest.raises(ValueError, match="empty"):
        open_image(b"")


def test_a_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "nope.png")


# --- what comes back --------------------------------------------------------------------------


def test_result_is_loaded_rgb_and_detached_from_the_file(tmp_path):
    path = tmp_path / "image.png"
    pattern().save(path)
    image = open_image(str(path))
    path.unlink()  # the image must not need the file any more
    assert image.mode == "RGB" and pixel(image, 0, 0) == RED and pixel(image, 63, 0) == BLUE


def test_exif_orientation_6_rotates_clockwise():
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall, a green mark top-left
    a[:5, :5] = GREEN
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must be rotated 90° clockwise to view
    data = encode(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95)
    image = open_image(data)
    assert image.size == (20, 40)  # width and height swap
    assert near(pixel(image, 17, 2), GREEN, tol=40)  # top-left moved to the top-right corner
    assert near(pixel(image, 2, 2), (0, 0, 0), tol=40)


def test_animated_images_give_their_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert near(pixel(open_image(data), 4, 4), RED)


# --- RGB rules --------------------------------------------------------------------------------


def test_alpha_is_composited_over_white():
    a = np.zeros((1, 3, 4), np.uint8)
    a[0] = [(200, 10, 10, 0), (10, 200, 10, 255), (0, 0, 0, 128)]  # clear, opaque, half
    image = open_image(encode(Image.fromarray(a, "RGBA")))
    assert pixel(image, 0, 0) == (255, 255, 255)
    assert pixel(image, 1, 0) == (10, 200, 10)
    assert near(pixel(image, 2, 0), (127, 127, 127), tol=1)  # 255·(1 − 128/255) = 127


def test_grey_with_alpha_over_white():
    image = to_rgb(Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA"))
    assert pixel(image, 0, 0) == (255, 255, 255) and pixel(image, 1, 0) == (0, 0, 0)


def test_palette_with_a_transparent_index():
    p = Image.new("P", (2, 1))
    p.putpalette(list(RED) + list(BLUE) + [0] * 762)
    p.putpixel((1, 0), 1)
    image = open_image(encode(p, transparency=0))  # index 0 (red) is transparent
    assert image.mode == "RGB"
    assert pixel(image, 0, 0) == (255, 255, 255) and pixel(image, 1, 0) == BLUE


def test_palette_grey_and_bilevel_become_rgb():
    p = Image.new("P", (1, 1))
    p.putpalette(list(YELLOW) + [0] * 765)
    assert pixel(open_image(encode(p)), 0, 0) == YELLOW
    assert pixel(open_image(encode(Image.new("L", (1, 1), 77))), 0, 0) == (77, 77, 77)
    assert pixel(open_image(encode(Image.new("1", (1, 1), 1))), 0, 0) == (255, 255, 255)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan and full magenta + yellow: red
    image = open_image(encode(cmyk, "JPEG", quality=100))
    assert image.mode == "RGB" and near(pixel(image, 2, 2), RED, tol=8)


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2"), ("I", "<i4")])
def test_16_bit_grey_is_scaled_not_clipped(mode, dtype):
    values = np.array([[0, 257, 32896, 65535]], dtype)
    image = to_rgb(Image.frombytes(mode, (4, 1), values.tobytes()))
    assert [pixel(image, x, 0)[0] for x in range(4)] == [0, 1, 128, 255]
    assert image.mode == "RGB" and pixel(image, 2, 0) == (128, 128, 128)


def test_16_bit_png_file_is_scaled():
    data = encode(Image.fromarray(np.array([[32896, 65535]], np.uint16)))
    image = open_image(data)
    assert pixel(image, 0, 0) == (128, 128, 128) and pixel(image, 1, 0) == (255, 255, 255)


def test_float_grey_is_clipped():
    image = to_rgb(Image.fromarray(np.array([[-5.0, 99.6, 300.0]], np.float32)))  # mode F
    assert [pixel(image, x, 0)[0] for x in range(3)] == [0, 100, 255]


# --- resizing ---------------------------------------------------------------------------------


def test_resize_modes_are_a1111s():
    assert RESIZE_MODES == ("just resize", "crop and resize", "resize and fill")


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("size", [(96, 96), (200, 50), (33, 71), (64, 48)])
def test_every_mode_gives_exactly_the_size(mode, size):
    out = resize_image(pattern(), *size, mode)
    assert out.size == size and out.mode == "RGB"


def test_just_resize_stretches_all_content():
    out = resize_image(pattern((64, 48)), 100, 100, "just resize")  # 4:3 squeezed into 1:1
    assert near(pixel(out, 2, 2), RED) and near(pixel(out, 97, 97), BLUE)
    assert near(pixel(out, 45, 50), RED) and near(pixel(out, 55, 50), BLUE)  # split stays mid-width


def test_crop_and_resize_fills_and_keeps_the_centre():
    a = np.zeros((100, 100, 3), np.uint8)  # a red square with a 10-pixel yellow border
    a[:] = YELLOW
    a[10:90, 10:90] = RED
    out = resize_image(Image.fromarray(a), 100, 50, "crop and resize")  # 2:1 from the middle
    # Scale 1 (cover 100 wide), cut rows 25..75: the top and bottom borders are gone,
    # the left and right ones stay.
    assert near(pixel(out, 50, 0), RED) and near(pixel(out, 50, 49), RED)
    assert near(pixel(out, 2, 25), YELLOW) and near(pixel(out, 97, 25), YELLOW)


def test_resize_and_fill_fits_everything_and_repeats_edges():
    a = np.zeros((50, 100, 3), np.uint8)  # 2:1; top row green, bottom row yellow, red/blue halves
    a[:, :50], a[:, 50:] = RED, BLUE
    a[0], a[-1] = GREEN, YELLOW
    out = resize_image(Image.fromarray(a), 100, 100, "resize and fill")
    # Scale 1: the image sits in rows 25..74; above it the green top row repeats, below the
    # yellow bottom row; left and right halves keep their colours.
    assert pixel(out, 10, 0) == pixel(out, 10, 24) == pixel(out, 10, 25) and near(pixel(out, 10, 0), GREEN)
    assert pixel(out, 90, 99) == pixel(out, 90, 74) and near(pixel(out, 90, 99), YELLOW)
    assert near(pixel(out, 10, 50), RED) and near(pixel(out, 90, 50), BLUE)
    tall = resize_image(pattern((64, 48)), 64, 128, "resize and fill")  # bands above and below
    assert near(pixel(tall, 2, 2), RED) and near(pixel(tall, 61, 125), BLUE)


def test_resize_and_fill_bands_left_and_right():
    out = resize_image(pattern((40, 40)), 120, 40, "resize and fill")  # square in a 3:1 frame
    assert near(pixel(out, 0, 20), RED) and near(pixel(out, 119, 20), BLUE)
    assert near(pixel(out, 45, 20), RED) and near(pixel(out, 75, 20), BLUE)


def test_an_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"resize mode must be one of \('just resize', 'crop and resize', "
                                         r"'resize and fill'\), got 'stretch'"):
        resize_image(pattern(), 10, 10, "stretch")


# --- proposing an output size -----------------------------------------------------------------


@pytest.mark.parametrize("image_size, area, expected", [
    ((1000, 1000), 1024 * 1024, (1024, 1024)),
    ((4000, 3000), 1024 * 1024, (1184, 888)),  # sqrt(2^20 · 4/3) = 1182.4, sqrt(2^20 · 3/4) = 886.8
    ((3000, 4000), 1024 * 1024, (888, 1184)),
    ((1920, 1080), 512 * 512, (680, 384)),  # 682.7 x 384
    ((640, 480), 1024 * 1024, (1184, 888)),  # small images are proposed at the full area too
])
def test_fit_size_keeps_aspect_at_the_area(image_size, area, expected):
    assert fit_size(image_size, area, min_side=256, max_side=2048) == expected


def test_fit_size_respects_multiple_and_bounds():
    w, h = fit_size((1000, 700), 1024 * 1024, 64, min_side=256, max_side=2048)
    assert (w, h) == (1216, 832) and w % 64 == 0 and h % 64 == 0
    assert fit_size((4000, 100), 1024 * 1024, min_side=256, max_side=2048) == (2048, 256)  # 40:1 clamped
    assert fit_size((100, 4000), 1024 * 1024, min_side=256, max_side=2048) == (256, 2048)
    assert fit_size((3000, 1000), 1024 * 1024, min_side=256, max_side=1024) == (1024, 344)  # long side capped
    # A model whose usual area is below its minimum side (the tiny test model: 64², at least 64 px)
    # grows the short side to the minimum and keeps the aspect.
    assert fit_size((96, 64), 64 * 64, min_side=64, max_side=512) == (96, 64)
    assert fit_size((300, 100), 64 * 64, min_side=64, max_side=512) == (192, 64)
    with pytest.raises(ValueError, match="must be positive"):
        fit_size((0, 10), 1000, min_side=8, max_side=64)
