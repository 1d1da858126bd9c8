"""Deep Zoom tiles (layout, pixels, Stop, bounded memory) and the OpenSeadragon viewer in a real browser.

The browser test is skipped when /usr/bin/chromium or Playwright is missing, unless
STUDIO_REQUIRE_BROWSER=1 (CI), which turns a missing browser into a failure.
"""

from __future__ import annotations

import io
import math
import os
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_ARGS, browser_missing
from studio.upscale.deepzoom import DZI_NAMESPACE, box_downscale_2x, dzi_levels, write_dzi

WIDTH, HEIGHT, TILE, OVERLAP = 1000, 700, 254, 1


def synthetic(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Gradients in red and green, a ramp in blue, and three solid squares: easy to recognise at every level."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    image = image.astype(np.uint8)
    image[50:250, 60:260] = (255, 0, 0)
    image[400:600, 500:700] = (0, 0, 255)
    image[100:300, 750:950] = (255, 255, 255)
    return image


def level_size(level: int, top: int) -> tuple[int, int]:
    scale = 2 ** (top - level)
    return math.ceil(WIDTH / scale), math.ceil(HEIGHT / scale)


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return synthetic()


@pytest.fixture(scope="module")
def png_dzi(source, tmp_path_factory) -> Path:
    return write_dzi(source, tmp_path_factory.mktemp("dzi"), "out", tile_size=TILE, overlap=OVERLAP, fmt="png")


def test_levels_count():
    assert dzi_levels(1000, 700) == math.ceil(math.log2(1000)) + 1 == 11
    assert dzi_levels(1, 1) == 1
    assert dzi_levels(1024, 3) == 11 and dzi_levels(1025, 3) == 12
    assert dzi_levels(16384, 16384) == 15


def test_xml_and_layout(source, tmp_path):
    dzi = write_dzi(source, tmp_path, "out")
    assert dzi == tmp_path / "out.dzi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dzi", "out_files"], "temporary files were left"
    root = ET.parse(dzi).getroot()
    assert root.tag == f"{{{DZI_NAMESPACE}}}Image"
    assert root.attrib == {"TileSize": "254", "Overlap": "1", "Format": "jpg"}
    size = root.find(f"{{{DZI_NAMESPACE}}}Size")
    assert size.attrib == {"Width": "1000", "Height": "700"}

    top = dzi_levels(WIDTH, HEIGHT) - 1
    files = tmp_path / "out_files"
    assert sorted(int(p.name) for p in files.iterdir()) == list(range(top + 1))
    for level in range(top + 1):
        w, h = level_size(level, top)
        cols, rows = math.ceil(w / TILE), math.ceil(h / TILE)
        names = {p.name for p in (files / str(level)).iterdir()}
        assert names == {f"{c}_{r}.jpg" for c in range(cols) for r in range(rows)}, f"level {level} ({w}x{h})"
    assert level_size(0, top) == (1, 1)


def test_tile_sizes(png_dzi):
    full = png_dzi.parent / "out_files" / str(dzi_levels(WIDTH, HEIGHT) - 1)  # 1000x700: 4x3 tiles
    sizes = {p.stem: Image.open(p).size for p in full.iterdir()}
    assert sizes["0_0"] == (TILE + OVERLAP, TILE + OVERLAP)  # a corner has an overlap on two sides only
    assert sizes["1_1"] == (TILE + 2 * OVERLAP, TILE + 2 * OVERLAP)  # interior
    assert sizes["3_2"] == (WIDTH - 3 * TILE + OVERLAP, HEIGHT - 2 * TILE + OVERLAP)  # bottom-right edge
    assert sizes["1_2"] == (TILE + 2 * OVERLAP, HEIGHT - 2 * TILE + OVERLAP)


def test_full_resolution_tiles_are_exact_crops(source, png_dzi):
    full = png_dzi.parent / "out_files" / str(dzi_levels(WIDTH, HEIGHT) - 1)
    assert np.array_equal(np.asarray(Image.open(full / "0_0.png")), source[0:255, 0:255])
    assert np.array_equal(np.asarray(Image.open(full / "1_1.png")), source[253:509, 253:509])
    assert np.array_equal(np.asarray(Image.open(full / "3_2.png")), source[507:700, 761:1000])


def test_jpeg_tiles_are_close_to_the_source(source, tmp_path):
    write_dzi(source, tmp_path, "out", quality=90)
    tile = np.asarray(Image.open(tmp_path / "out_files" / "10" / "0_0.jpg")).astype(int)
    assert np.abs(tile - source[0:255, 0:255]).mean() < 3


def test_low_level_is_a_box_downscale(source, png_dzi):
    top = dzi_levels(WIDTH, HEIGHT) - 1
    level = top - 3  # 1/8 scale: 125x88, one tile
    tiles = list((png_dzi.parent / "out_files" / str(level)).iterdir())
    assert [p.name for p in tiles] == ["0_0.png"]
    tile = np.asarray(Image.open(tiles[0])).astype(int)
    expected = np.asarray(Image.fromarray(source).resize(level_size(level, top), Image.BOX)).astype(int)
    assert tile.shape == expected.shape == (88, 125, 3)
    assert np.abs(tile - expected).mean() < 2
    assert tuple(tile[15, 20]) == (255, 0, 0) and tuple(tile[60, 75]) == (0, 0, 255)


def test_box_downscale_rounds_and_keeps_odd_edges():
    band = np.array([[[0] * 3, [3] * 3, [9] * 3], [[1] * 3, [2] * 3, [7] * 3], [[4] * 3, [4] * 3, [5] * 3]], np.uint8)
    out = box_downscale_2x(band)
    assert out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[2, 8], [4, 5]]  # (0+3+1+2)/4 = 1.5 -> 2; a lone corner stays itself


def test_stop_leaves_nothing(source, tmp_path):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 5  # after a few rows of tiles, in the middle of the pyramid

    with pytest.raises(InterruptedError):
        write_dzi(source, tmp_path, "out", should_stop=should_stop)
    assert list(tmp_path.iterdir()) == []


def test_existing_result_is_an_error(source, tmp_path):
    write_dzi(source[:10, :10], tmp_path, "out")
    with pytest.raises(FileExistsError, match="out"):
        write_dzi(source[:10, :10], tmp_path, "out")


def test_bad_input_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\).*float32"):
        write_dzi(np.zeros((8, 8, 3), np.float32), tmp_path, "out")
    with pytest.raises(ValueError, match="plain file name"):
        write_dzi(np.zeros((8, 8, 3), np.uint8), tmp_path, "a/b")


def test_memory_stays_bounded_on_a_memmap(tmp_path, monkeypatch):
    """An 8000x3000 memmap (72 MB): every PIL image is one tile, and numpy never allocates near the image size."""
    height, width = 3000, 8000
    image = np.lib.format.open_memmap(tmp_path / "image.npy", mode="w+", dtype=np.uint8, shape=(height, width, 3))
    for top in range(0, height, 500):
        image[top:top + 500] = synthetic(500, width)
    image.flush()

    largest_pil = [0]
    fromarray = Image.fromarray

    def recording_fromarray(array, *args, **kwargs):
        largest_pil[0] = max(largest_pil[0], array.nbytes)
        return fromarray(array, *args, **kwargs)

    monkeypatch.setattr(Image, "fromarray", recording_fromarray)
    tracemalloc.start()
    try:
        write_dzi(image, tmp_path / "dzi", "big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert largest_pil[0] <= (TILE + 2 * OVERLAP) ** 2 * 3
    # One band of rows is (254 + 2) * 8000 * 3 = 6 MB; a whole-image copy would be 72 MB.
    assert peak < image.nbytes / 6, f"peak numpy memory {peak / 1e6:.1f} MB for a {image.nbytes / 1e6:.0f} MB image"
    top = dzi_levels(width, height) - 1
    assert len(list((tmp_path / "dzi" / "big_files" / str(top)).iterdir())) == 32 * 12


# --- The viewer in a real browser -------------------------------------------------------------------

UI_TIMEOUT_MS = 30_000


@pytest.fixture
def zoom_app(tmp_path):
    """A tiny Blocks with the viewer and two buttons that show two DZIs: (url, first .dzi)."""
    import gradio as gr
    from conftest import free_port

    from studio.ui.zoom import OPENSEADRAGON, viewer_value, zoom_viewer

    first = write_dzi(synthetic(), tmp_path / "outputs", "first")
    second = write_dzi(synthetic()[::-1].copy(), tmp_path / "outputs", "second")
    with gr.Blocks() as demo:
        viewer = zoom_viewer("zoom")
        show_first = gr.Button("Show first", elem_id="show-first")
        show_second = gr.Button("Show second", elem_id="show-second")
        show_first.click(lambda: viewer_value(first), None, viewer)
        show_second.click(lambda: viewer_value(second), None, viewer)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                allowed_paths=[str(tmp_path / "outputs"), str(OPENSEADRAGON.parent)])
    try:
        yield f"http://127.0.0.1:{port}/", first
    finally:
        demo.close()


@pytest.mark.browser
def test_viewer_shows_tiles_in_chromium(zoom_app):
    if (missing := browser_missing()) is not None:
        if os.environ.get("STUDIO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"STUDIO_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    url, _ = zoom_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            errors, responses = [], []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("response", lambda r: responses.append((r.url, r.status)))
            page.goto(url)

            zoom = page.locator("#zoom")
            expect(zoom.get_by_text("The deep-zoom view appears here after an upscale.")).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.locator("#show-first").click()
            expect(zoom.locator(".openseadragon-canvas").first).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(zoom.get_by_text("The deep-zoom view appears here after an upscale.")).to_be_hidden()
            # The home view of a 1000x700 image in a ~1250x520 frame needs level 9 or 10's tiles.
            page.wait_for_function(
                "() => performance.getEntriesByType('resource').some(e => /first_files\\/(9|10)\\//.test(e.name))")
            zoom.hover()  # OpenSeadragon fades its buttons and navigator out while the mouse is away
            page.wait_for_timeout(1000)  # let the tiles blend in (OpenSeadragon fades them over 0.5 s)
            shot = zoom.screenshot(path="/tmp/zoom-viewer.png")

            tiles = [(u, s) for u, s in responses if "first_files/" in u]
            assert tiles and all(s == 200 for _, s in tiles), tiles
            buttons = [(u, s) for u, s in responses if "/openseadragon/images/" in u]
            assert buttons and all(s == 200 for _, s in buttons), buttons
            assert not errors, errors
            offsite = [u for u, _ in responses if not u.startswith(url) and not u.startswith("data:")]
            assert not offsite, f"the page must work offline, but it fetched {offsite}"

            # The image is drawn: the frame is far from one flat colour.
            pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
            assert pixels.std() > 30, "the viewer looks blank"

            # OpenSeadragon's full-page button fills the window with the viewer, and a second press restores it.
            page.get_by_title("Toggle full page").click()
            # (OpenSeadragon moves its element to <body> while in full page, and back afterwards.)
            page.wait_for_function("() => { const box = document.querySelector('.zoom-osd.fullpage');"
                                   " return box && box.getBoundingClientRect().height >= window.innerHeight - 1; }")
            page.get_by_title("Toggle full page").click()
            page.wait_for_function("() => { const box = document.querySelector('#zoom .zoom-osd:not(.fullpage)');"
                                   " return box && Math.round(box.getBoundingClientRect().height) === 520; }")

            # A new value replaces the viewer instead of stacking a second one.
            page.locator("#show-second").click()
            page.wait_for_function(
                "() => performance.getEntriesByType('resource').some(e => e.name.includes('second_files/'))")
            expect(zoom.locator(".zoom-osd > .openseadragon-container")).to_have_count(1)  # the navigator has its own
            assert not errors, errors
        finally:
            browser.close()
