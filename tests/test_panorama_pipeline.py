"""The panorama task end to end on the tiny model: views, seam, poles, refine, brackets, files, Stop."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from studio.panorama import blend
from studio.panorama.files import save_panorama
from studio.panorama.projection import View, e2p, p2e
from studio.panorama.wrap import unwrap, wrap_pad
from studio.pipelines import panorama
from studio.pipelines.panorama import PanoramaRequest, run
from studio.results import Stopped

# Six wide views: four around the horizon, then straight up and down (enough to cover the sphere)
SMALL_PLAN = json.dumps([{"yaw": y, "pitch": 0, "fov": 120} for y in (0, 90, 180, 270)]
                        + [{"yaw": 0, "pitch": 90, "fov": 120}, {"yaw": 0, "pitch": -90, "fov": 120}])


def request(**changes) -> PanoramaRequest:
    settings = dict(prompt="a lake at dawn, 360 panorama", model="tiny", num_inference_steps=2, seed=3, width=512,
                    views=SMALL_PLAN, video=False)
    return PanoramaRequest(**{**settings, **changes})


def test_a_panorama_on_the_tiny_model(manager):
    events = []
    result = run(request(), manager, lambda e: events.append(e) and False)
    assert result.images[0].size == (512, 256)
    ldr = np.asarray(result.images[0])
    radiance = result.radiance
    assert radiance.shape == (256, 512, 3) and radiance.dtype == np.float32 and np.isfinite(radiance).all()
    details = result.details.panorama
    assert details.canvas_size == [512, 256] and len(details.views) == 6 and details.view_size == 64
    # Every view reported, in order, and the canvas so far shown after each
    painted = [e.detail for e in events if e.detail and e.detail.endswith("painted")]
    assert painted[0].startswith("View 1 of 6 (yaw 0°, pitch 0°)") and painted[-1].startswith("View 6 of 6")
    assert events[-1].step == events[-1].total == 6 * 2
    shown = next(e for e in events if e.detail and e.detail.endswith("painted")).preview()
    assert [im.size for im in shown] == [(512, 256), (64, 64)]  # the canvas so far and the latest view
    # The seam at 0°/360° is painted by one view, not stitched: no jump between the last and first column
    assert blend.wrap_ratio(ldr) < 1.6
    # The top and bottom rows are one point each on the sphere: nearly constant
    top, bottom = blend.pole_spread(ldr)
    assert top < 6 and bottom < 6, (top, bottom)
    assert float(ldr.std()) > 5  # a picture, not a constant


def test_the_same_seed_paints_the_same_panorama(manager):
    first, second = run(request(), manager), run(request(), manager)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    other = run(request(seed=4), manager)
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))


def test_each_view_keeps_painted_pixels_outside_its_unknown_region(manager, monkeypatch):
    """Paint view 2 with a fake model that returns one flat colour: canvas pixels the view saw as
    painted (outside its grown, feathered unknown region) must not change at all."""
    size, height, width = 64, 128, 256
    canvas = np.zeros((height, width, 3), np.float32)
    painted = np.zeros((height, width), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    first = np.stack([xx * 4, yy * 4, 255 - xx * 2], -1).astype(np.uint8)
    monkeypatch.setattr(panorama, "text_to_image", lambda *a: first)
    monkeypatch.setattr(panorama, "inpaint", lambda *a: np.full((size, size, 3), (10, 200, 30), np.uint8))
    req, progress = request(width=width), panorama.Progress(None, [], 2, 0)
    panorama.paint_view(req, manager, progress, 0, View(0, 0, 90), size, canvas, painted)
    before, before_painted = canvas.copy(), painted.copy()
    view = View(60, 0, 90)
    panorama.paint_view(req, manager, progress, 1, view, size, canvas, painted)
    changed = np.abs(canvas - before).max(axis=-1) > 0
    # Where the new view saw the canvas fully painted (minus the grown, feathered margin), nothing changed
    known = e2p(before_painted.astype(np.float32), view, size) > 0.999
    from studio import masks
    unknown = masks.grow_mask(~known, max(2, size // 64))
    alpha = masks.feather(unknown, req.mask_blur)
    reach, _ = p2e(alpha, view, height, width)
    assert not changed[reach == 0].any()
    assert changed.any() and changed[~before_painted].any()  # new sky was painted
    assert painted.sum() > before_painted.sum()


def test_wrap_padding_puts_the_seam_inside_and_unwrap_closes_it():
    x = np.random.default_rng(0).integers(0, 256, (8, 40, 3)).astype(np.uint8)
    padded = wrap_pad(x, 10)
    assert padded.shape == (8, 60, 3)
    assert np.array_equal(padded[:, :10], x[:, 30:]) and np.array_equal(padded[:, 50:], x[:, :10])
    assert np.array_equal(unwrap(padded, 10), x)  # the copies agree: nothing changes
    # A pass that changed the two copies of the seam differently: unwrap fades the end into the
    # left copy, which was painted beside column 0, so the seam is as smooth as that copy's edge.
    smooth = np.tile(np.linspace(0, 255, 60)[None, :, None], (8, 1, 3)).astype(np.float32)
    out = unwrap(smooth, 10)
    assert out[0, -1, 0] == smooth[0, 9, 0]  # the last column is the copy painted beside column 0 ...
    assert out[0, 0, 0] == smooth[0, 10, 0]  # ... which is column 0: they meet as neighbours did
    assert np.abs(np.diff(out[0, :, 0])).max() <= np.abs(np.diff(smooth[0, :, 0])).max() * 10
    with pytest.raises(ValueError, match="pad"):
        wrap_pad(x, 30)


def test_refine_pass_wraps_the_seam_and_changes_the_canvas(manager, tmp_path):
    manager.scratch_dir = tmp_path / "scratch"
    events = []
    plain = run(request(), manager)
    refined = run(request(refine_strength=0.5, num_inference_steps=4), manager, lambda e: events.append(e) and False)
    assert refined.images[0].size == (512, 256)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(refined.images[0]))
    assert any("patch" in (e.detail or "") for e in events) and events[-1].step == events[-1].total
    assert not any((tmp_path / "scratch").glob("*"))  # the refine pass's scratch array is gone
    assert blend.wrap_ratio(np.asarray(refined.images[0])) < 1.6


def test_bracketing_merges_the_brightest_view_into_the_hdr(manager):
    plain = run(request(num_inference_steps=4), manager)
    bracketed = run(request(bracket=True, num_inference_steps=4), manager)
    info = bracketed.details.panorama.bracketed_view
    assert info["exposures"] == [0.0, -3.0, -6.0] and 1 <= info["view"] <= 6
    assert np.isfinite(bracketed.radiance).all() and bracketed.radiance.min() >= 0
    assert bracketed.summary()["panorama"]["bracketed_view"]["view"] == info["view"]
    # The LDR panorama is the same; the HDR changed inside the bracketed view only
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(bracketed.images[0]))
    view = View(**bracketed.details.panorama.views[info["view"] - 1])
    from studio.panorama.projection import coverage
    seen = coverage(view, 256, 512)
    changed = np.abs(bracketed.radiance - plain.radiance).max(axis=-1) > 1e-6
    assert changed[seen].any() and not changed[~seen].any()


@pytest.mark.parametrize("changes, message", [
    (dict(width=1000), r"Canvas width \(width\) must be a multiple of 16"),
    (dict(width=256), r"Canvas width \(width\) must be an integer in \[512, 8192\]"),
    (dict(views="", fov=30.0), r"View FOV \(fov\) must be a finite number in \[45, 120\]"),
    (dict(views="", overlap=0.1), r"25 %|0\.25"),
    (dict(views=json.dumps([{"yaw": 0, "pitch": 0, "fov": 90}])), r"% of the sphere unpainted"),
    (dict(views="[{"), r"JSON"),
    (dict(exposures="0, bright"), r"Preview exposures \(exposures\)"),
])
def test_bad_input_is_refused_before_anything_runs(manager, changes, message):
    with pytest.raises(ValueError, match=message):
        run(request(**changes), manager, lambda e: pytest.fail("nothing may run"))


def test_stop_between_views_raises_and_returns_nothing(manager):
    def on_step(event):
        return bool(event.detail and event.detail.startswith("View 2"))

    with pytest.raises(Stopped, match=r"view 2 of 6|View 2|view 2"):
        run(request(), manager, on_step)


def test_saving_writes_every_file_and_a_failure_leaves_none(manager, tmp_path, monkeypatch):
    result = run(request(video=True, exposures="0, -4"), manager)
    paths = save_panorama(result, tmp_path)
    names = [p.name for p in paths]
    assert names[0].endswith(".png") and names[1].endswith(".hdr") and names[2].endswith(".exr")
    assert any(n.endswith("-ev0.png") for n in names) and any(n.endswith("-ev-4.png") for n in names)
    assert any(n.endswith("-cubemap.png") for n in names) and names[-1].endswith("-pan.mp4")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    back = cv2.imread(str(paths[1]), cv2.IMREAD_UNCHANGED)
    assert back.shape == (256, 512, 3) and np.isfinite(back).all()
    # The PNG carries the request, so the panorama can be remade (and presets restored)
    from PIL import Image
    chunk = json.loads(Image.open(paths[0]).text["studio"])
    assert chunk["task"] == "panorama" and chunk["request"]["views"] == SMALL_PLAN
    # A failure in the last writer removes what was written before it
    from studio.panorama import hdr
    monkeypatch.setattr(hdr, "pan_video", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    folder = tmp_path / "again"
    with pytest.raises(OSError, match="disk full"):
        save_panorama(result, folder)
    assert not [p for p in folder.rglob("*") if p.is_file()]


def test_a_preset_keeps_the_panorama_section_and_restores_it(registry):
    from studio import presets as P

    chosen = request(width=4096, fov=100.0, overlap=0.4, views="", refine_strength=0.2, max_stops=8.0, bracket=True,
                     exposures="0, -3", video=True, mask_blur=12)
    text = P.preset_json(P.preset_from_request(chosen, "Skybox"))
    doc = json.loads(text)
    assert doc["task"] == "panorama" and doc["panorama"]["width"] == 4096 and doc["panorama"]["fov"] == 100.0
    assert doc["panorama"]["bracket"] is True and doc["panorama"]["exposures"] == "0, -3"
    restored = P.preset_request(P.parse_preset(text, registry), registry)
    assert restored.record() == chosen.record()


def test_the_png_of_a_panorama_restores_its_settings(manager, tmp_path):
    from studio.metadata import read_png_settings

    result = run(request(max_stops=6.0), manager)
    paths = save_panorama(result, tmp_path)
    task_name, fields = read_png_settings(paths[0])[:2]
    assert task_name == "panorama" and fields["views"] == SMALL_PLAN and fields["max_stops"] == 6.0


def test_steep_views_are_told_where_they_look(manager, monkeypatch):
    from studio.pipelines import inpaint as inpaint_module

    prompts = []

    def fake_repaint(request, models, on_step, plan):
        prompts.append(request.prompt)
        return inpaint_module.Result(request=request, images=[plan.image], seeds=[0], prompt="", negative_prompt="",
                                     steps_done=1, total_steps=1, interrupted=False, details=None)

    monkeypatch.setattr(inpaint_module, "repaint", fake_repaint)
    run(request(), manager)
    assert prompts[:3] == ["a lake at dawn, 360 panorama"] * 3  # the horizon views after the first
    assert prompts[3] == f"a lake at dawn, 360 panorama, {panorama.UP_WORDS}"
    assert prompts[4] == f"a lake at dawn, 360 panorama, {panorama.DOWN_WORDS}"


def test_refine_takes_the_lora_stack_and_the_prompt_without_tags(manager, monkeypatch):
    """The refine pass leases its own pipeline: the run's LoRAs must come with it."""
    asked = {}

    def lease(model, task="txt2img", **kwargs):
        asked.update(task=task, **kwargs)
        raise RuntimeError("leased")

    monkeypatch.setattr(manager, "lease", lease)
    req, stack = request(prompt="a lake <lora:mood:0.7>", refine_strength=0.3).with_lora_stack()
    assert req.prompt == "a lake" and stack == [("mood", 0.7)]
    with pytest.raises(RuntimeError, match="leased"):
        panorama.refine(req, manager, panorama.Progress(None, [], 2, 1), np.zeros((256, 512, 3), np.uint8), stack)
    assert asked["task"] == "img2img" and asked["loras"] == [("mood", 0.7)]
