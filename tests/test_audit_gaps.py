"""Gaps a mutation audit found: each test here fails on a code change that passed the rest of the suite.

Each test names the mutant it guards against. The tiny SDXL pipeline is built directly (no
ModelManager) and requests are duck-typed, so this file stays fast and independent of the app.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from studio.camera import autofocus_m, focal_length_px, horizon_row
from studio.pipelines.camera import (GROUND_RGB, SKY_RGB, apply_depth_of_field, horizon_latents,
                                     horizon_profile, layout_direction)
from studio.pipelines.prompts import prompt_arguments


@pytest.fixture(scope="module")
def pipe():
    from studio.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl()


# --- save_png --------------------------------------------------------------------------------
# Mutant: the PNG is written straight to folder/name instead of a temp file renamed into place, so
# a reader (the gallery, a sync tool) can see a half-written image, and a failed write leaves one.

class RecordingImage:
    """A PIL image whose save() notes whether the final file already exists once its bytes are written."""

    def __init__(self, final, fail_after_bytes: int | None = None):
        self.image = Image.new("RGB", (16, 8), (200, 30, 90))
        self.final, self.fail_after_bytes, self.final_seen = final, fail_after_bytes, []

    def save(self, fp, **kwargs):
        if self.fail_after_bytes is not None:  # a disk filling up half-way through the image
            fp.write(b"\x89PNG\r\n\x1a\n"[: self.fail_after_bytes])
            fp.flush()
            self.final_seen.append(self.final.exists())
            raise OSError("No space left on device")
        self.image.save(fp, **kwargs)
        fp.flush()
        self.final_seen.append(self.final.exists())


def test_save_png_writes_a_temp_file_then_renames_it(tmp_path):
    from studio.outputs import save_png

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat")
    image = RecordingImage(tmp_path / "out.png")
    path = save_png(image, tmp_path, "out.png", info)
    assert image.final_seen == [False]  # all bytes written while the final name did not exist yet
    assert path == tmp_path / "out.png" and [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with Image.open(path) as saved:
        assert saved.text["parameters"] == "a cat"
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image.image))


def test_save_png_failing_half_way_leaves_no_file(tmp_path):
    from studio.outputs import save_png

    image = RecordingImage(tmp_path / "out.png", fail_after_bytes=5)
    with pytest.raises(OSError, match="No space left"):
        save_png(image, tmp_path, "out.png")
    assert image.final_seen == [False]
    assert list(tmp_path.iterdir()) == []  # neither a partial out.png nor a leftover temp file


# --- long prompts ----------------------------------------------------------------------------
# Mutant: each window is cut from the start of the prompt only (or truncated to one window's
# tokens), so windows 2 and 3 hold nothing but BOS/EOS/padding while the label still says
# "3 windows". Window k must be the encoders' output for the k-th 75-token slice.

def encode_row(pipe, ids: list[list[int]]) -> torch.Tensor:
    """SDXL's features for per-encoder token rows: penultimate hidden states, both encoders concatenated."""
    with torch.no_grad():
        return torch.cat([enc(torch.tensor([row]), output_hidden_states=True).hidden_states[-2]
                          for enc, row in zip((pipe.text_encoder, pipe.text_encoder_2), ids)], dim=-1)


def window_row(tokenizer, piece: list[int]) -> list[int]:
    row = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
    return row + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(row))


def test_each_long_prompt_window_encodes_its_own_slice(pipe):
    # The tiny tokenizer has one token per character: ~200 varied tokens make 3 windows of 75.
    rng = np.random.default_rng(0)
    prompt = " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 5)) for _ in range(34))
    tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
    ids = [t(prompt, add_special_tokens=False, verbose=False).input_ids for t in tokenizers]
    assert 150 < len(ids[0]) <= 225

    kwargs, info = prompt_arguments(pipe, prompt, "")
    assert info["prompt_handling"].startswith("chunked: 3 windows of 75 tokens")
    embeds = kwargs["prompt_embeds"]
    assert embeds.shape == (1, 3 * 77, 64)
    padding = encode_row(pipe, [window_row(t, []) for t in tokenizers])
    for k in (1, 2):
        expected = encode_row(pipe, [window_row(t, i[75 * k : 75 * (k + 1)]) for t, i in zip(tokenizers, ids)])
        window = embeds[:, 77 * k : 77 * (k + 1)]
        torch.testing.assert_close(window, expected, rtol=1e-4, atol=1e-5)
        assert (window - padding).abs().max() > 1e-2  # carries the prompt, not just padding
    # The pooled embedding comes from the first window of the second encoder.
    with torch.no_grad():
        pooled = pipe.text_encoder_2(torch.tensor([window_row(pipe.tokenizer_2, ids[1][:75])]))[0]
    torch.testing.assert_close(kwargs["pooled_prompt_embeds"], pooled, rtol=1e-4, atol=1e-5)


# --- horizon layout --------------------------------------------------------------------------
# Mutant: sky and ground swapped (d = ground − sky, or the profile/bias sign flipped), so looking
# up puts the "ground" on top. The shift from diffusers' own noise must be +s/2·d above the horizon
# and −s/2·d below, with d pointing from the ground colour's latent to the sky colour's.

def flat_latent(vae, rgb) -> torch.Tensor:
    """(C,) spatial mean of the VAE latent of a flat 64 px image of colour `rgb` (0-1)."""
    image = torch.tensor(rgb, dtype=torch.float32)[None, :, None, None].expand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        return vae.encode(image).latent_dist.mean.mean(dim=(2, 3))[0]


def test_layout_direction_points_from_ground_to_sky(pipe):
    assert sum(SKY_RGB) > sum(GROUND_RGB) and SKY_RGB[2] == max(SKY_RGB)  # the sky is the bright blue one
    sky, ground = flat_latent(pipe.vae, SKY_RGB), flat_latent(pipe.vae, GROUND_RGB)
    assert (sky - ground).pow(2).mean().sqrt() > 1e-4  # the tiny VAE tells them apart: no fallback
    d = layout_direction(pipe)
    expected = (sky - ground) / (sky - ground).pow(2).mean().sqrt()
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-5)
    assert d.pow(2).mean().sqrt() == pytest.approx(1.0, abs=1e-5)  # unit RMS


def test_layout_direction_falls_back_only_when_the_colours_coincide():
    class FlatVAE:  # encodes every image to the same latent, as a degenerate VAE might
        dtype, device = torch.float32, torch.device("cpu")

        def encode(self, images):
            mean = torch.full((images.shape[0], 4, 8, 8), 0.3)
            return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mean=mean))

    d = layout_direction(types.SimpleNamespace(vae=FlatVAE()))
    assert torch.equal(d, torch.ones(4))  # brighter on top is the only layout left


def test_horizon_latents_shift_noise_towards_sky_above_and_ground_below(pipe):
    from diffusers.utils.torch_utils import randn_tensor

    # 256 px, 50 mm, looking down 10°: the horizon sits at pixel row ~65 (latent row ~8.2 of 32).
    request = types.SimpleNamespace(camera_pitch=-10.0, batch_size=2, width=192, height=256,
                                    focal_length=50.0, horizon_strength=0.8)
    seeds = (11, 12)
    latents = horizon_latents(pipe, request, [torch.Generator().manual_seed(s) for s in seeds])
    shape = (2, 4, 256 // 8, 192 // 8)
    noise = randn_tensor(shape, generator=[torch.Generator().manual_seed(s) for s in seeds],
                         device=torch.device("cpu"), dtype=torch.float32)
    assert latents.shape == shape
    shift = latents - noise  # (B, C, rows, cols)
    d = layout_direction(pipe)
    y_h = horizon_row(256, focal_length_px(50.0, 192, 256), -10.0) / 8
    assert 7 < y_h < 9
    half = request.horizon_strength / 2
    rows = torch.arange(32) + 0.5
    above, below = rows < y_h - 4, rows > y_h + 4  # where tanh is within 1e-3 of ±1
    assert above.sum() >= 3 and below.sum() >= 10
    expected_sky = (half * d)[None, :, None, None].expand(2, 4, int(above.sum()), 24)
    torch.testing.assert_close(shift[:, :, above], expected_sky, rtol=0, atol=2e-3 * half)
    expected_ground = (-half * d)[None, :, None, None].expand(2, 4, int(below.sum()), 24)
    torch.testing.assert_close(shift[:, :, below], expected_ground, rtol=0, atol=2e-3 * half)
    # And everywhere, the soft edge between them: s/2 · d · tanh(y_h − y).
    profile = horizon_profile(32, y_h)
    torch.testing.assert_close(shift, (half * d[:, None, None] * profile[:, None]).expand(shape), rtol=1e-4, atol=1e-5)


# --- autofocus -------------------------------------------------------------------------------
# Mutant: autofocus on the whole frame's median instead of the central ninth's.

def test_autofocus_uses_the_centre_not_the_whole_frame():
    depth = np.full((90, 120), 10.0)
    depth[30:60, 40:80] = 2.0  # a subject filling the central ninth, 10 m of background around it
    assert np.median(depth) == 10.0
    assert autofocus_m(depth) == pytest.approx(2.0)
    far_centre = np.full((90, 120), 2.0)
    far_centre[30:60, 40:80] = 10.0  # a near frame around a far centre (a window seen from inside)
    assert np.median(far_centre) == 2.0
    assert autofocus_m(far_centre) == pytest.approx(10.0)


# --- focus clamp -----------------------------------------------------------------------------
# Mutant: the clamp of the focus distance at twice the focal length removed from
# apply_depth_of_field. An autofocus on something nearer (0.05 m) must focus at 2·f = 0.17 m for an
# 85 mm lens, which is what a lens does and what the thin-lens formula needs (focus beyond f).

class FakeEstimator:
    """Stands in for a transformers depth pipeline with a metric model, returning a fixed map."""

    def __init__(self, depth: np.ndarray):
        self.depth = depth
        self.model = types.SimpleNamespace(config=types.SimpleNamespace(depth_estimation_type="metric",
                                                                        name_or_path="fake-metric"))

    def __call__(self, image):
        assert image.size == (self.depth.shape[1], self.depth.shape[0])
        return {"predicted_depth": torch.from_numpy(self.depth)}


def test_autofocus_closer_than_twice_the_focal_length_is_clamped():
    depth = np.full((48, 48), 0.4, dtype=np.float32)
    depth[16:32, 16:32] = 0.05  # a subject touching the lens at the centre
    request = types.SimpleNamespace(focus_distance_m=None, focal_length=85.0, aperture_f_number=8.0)
    image = Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8))
    images, details = apply_depth_of_field([image], FakeEstimator(depth), request)
    assert details["focus_distance_m"] == [0.17]
    assert details["depth_range_m"] == [[0.05, 0.4]]
    assert images[0].size == image.size
