"""LoRA files are checked by hand before any loader sees them; the library folder; <lora:...> prompt tags."""

from __future__ import annotations

import json
import pickle
import pickletools
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from studio.loras import (
    LoraLibrary,
    check_lora,
    lora_tags,
    parse_lora_list,
    parse_lora_tags,
    read_safetensors_header,
)
from studio.models.tiny import LORA_WEIGHT_NAME, save_tiny_lora

TINY_SDXL_WIDTH = 64  # tiny SDXL unet.config.cross_attention_dim
TINY_SD15_WIDTH = 32


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    save_tiny_lora(folder)
    return folder / LORA_WEIGHT_NAME


def write_raw(path, header: bytes, data: bytes = b"", length: int | None = None):
    """A hand-made safetensors file, so tests can build ones the library would refuse to write."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def kohya_lora(path, width: int):
    """A kohya-style SD LoRA (lora_unet_*, lora_down/lora_up, alpha) with cross-attention input `width`."""
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{stem}.lora_down.weight": np.zeros((8, width), np.float16),
               f"{stem}.lora_up.weight": np.zeros((320, 8), np.float16),
               f"{stem}.alpha": np.array(8.0, np.float16),
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": np.zeros((8, width), np.float16)},
              str(path), metadata={"modelspec.trigger_phrase": "zxc style"})
    return path


class Evil:
    """Unpickling this would create `marker`: the attack a renamed .ckpt can carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# 1. The header parser

def test_header_matches_safetensors(tiny_lora, tmp_path):
    mixed = tmp_path / "mixed.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.ones(5, np.int64), "c": np.zeros((0, 4), np.float16),
               "d": np.array(True)}, str(mixed), metadata={"k": "v"})
    for path in (tiny_lora, mixed):
        header = read_safetensors_header(path)
        with safe_open(str(path), "np") as f:
            assert header.pop("__metadata__") == (f.metadata() or {})
            assert sorted(header) == sorted(f.keys())
            for key in sorted(header):
                assert header[key]["shape"] == list(f.get_slice(key).get_shape())


def test_pickle_renamed_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    upload = tmp_path / "evil.safetensors"
    upload.write_bytes(pickle.dumps(Evil(marker), protocol=4))
    # The payload really is dangerous: its opcodes call builtins.open (read without executing them).
    assert any(arg == "open" for _, arg, _ in pickletools.genops(upload.read_bytes()))
    for attempt in (lambda: read_safetensors_header(upload),
                    lambda: check_lora(upload, TINY_SDXL_WIDTH, "sdxl"),
                    lambda: LoraLibrary(tmp_path / "lib").add(upload, "evil", TINY_SDXL_WIDTH, "sdxl")):
        with pytest.raises(ValueError, match="pickle/PyTorch checkpoint, not safetensors; Studio never unpickles"):
            attempt()
    assert not marker.exists()
    assert not (tmp_path / "lib" / "evil.safetensors").exists()


def test_torch_zip_renamed_is_refused(tmp_path):
    import torch

    upload = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, upload)
    with pytest.raises(ValueError, match="pickle/PyTorch checkpoint"):
        read_safetensors_header(upload)


def test_truncated_file_is_refused(tiny_lora, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_lora.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors_header(cut)
    (tmp_path / "tiny.safetensors").write_bytes(b"{}")
    with pytest.raises(ValueError, match="too short"):
        read_safetensors_header(tmp_path / "tiny.safetensors")


def test_bad_headers_are_refused(tmp_path):
    cases = {
        "not valid JSON": write_raw(tmp_path / "a.safetensors", b"{not json"),
        "must be a JSON object": write_raw(tmp_path / "b.safetensors", b"[1, 2]"),
        "only 2 bytes after the length: truncated": write_raw(tmp_path / "c.safetensors", b"{}", length=1000),
        r"header \(at most": write_raw(tmp_path / "d.safetensors", b"{}", length=2**62),
        "unknown dtype": write_raw(tmp_path / "e.safetensors",
                                   json.dumps({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}).encode(),
                                   b"\0" * 4),
        "needs 8": write_raw(tmp_path / "f.safetensors",
                             json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode(),
                             b"\0" * 4),
        "non-negative ints": write_raw(tmp_path / "g.safetensors",
                                       json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}).encode()),
        "repeats a key": write_raw(tmp_path / "h.safetensors", b'{"w": 1, "w": 2}'),
        "tensors cover 4 bytes but the data section has 8": write_raw(
            tmp_path / "i.safetensors",
            json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode(), b"\0" * 8),
    }
    for message, path in cases.items():
        with pytest.raises(ValueError, match=message):
            read_safetensors_header(path)


def test_overlapping_and_gapped_offsets_are_refused(tmp_path):
    overlap = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    with pytest.raises(ValueError, match="overlaps"):
        read_safetensors_header(write_raw(tmp_path / "o.safetensors", json.dumps(overlap).encode(), b"\0" * 12))
    gap = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    with pytest.raises(ValueError, match="gap"):
        read_safetensors_header(write_raw(tmp_path / "g.safetensors", json.dumps(gap).encode(), b"\0" * 12))


# 2. check_lora

def test_tiny_lora_fits_tiny_sdxl_only(tiny_lora):
    info = check_lora(tiny_lora, TINY_SDXL_WIDTH, "sdxl")
    assert (info.rank, info.num_keys, info.has_text_encoder, info.trigger) == (4, 64, False, None)
    with pytest.raises(ValueError, match=r"cross-attention width is 64 .*but sd15 has 32") as err:
        check_lora(tiny_lora, TINY_SD15_WIDTH, "sd15")
    assert "SDXL uses 2048, SD1.5 768" in str(err.value)


def test_kohya_lora_and_family_guess(tmp_path):
    path = kohya_lora(tmp_path / "sd15.safetensors", 768)
    info = check_lora(path, 768, "sd15")
    assert (info.rank, info.has_text_encoder, info.trigger) == (8, True, "zxc style")
    with pytest.raises(ValueError, match=r"width is 768 \(looks like SD1.5\).*but sdxl has 2048"):
        check_lora(path, 2048, "sdxl")


def test_plain_weights_are_not_a_lora(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"unet.conv_in.weight": np.zeros((4, 4), np.float32)}, str(plain))
    with pytest.raises(ValueError, match="does not look like a UNet LoRA"):
        check_lora(plain, TINY_SDXL_WIDTH, "sdxl")
    no_cross = tmp_path / "self_attn_only.safetensors"
    save_file({"unet.x.attn1.to_k.lora_A.weight": np.zeros((4, 64), np.float32)}, str(no_cross))
    with pytest.raises(ValueError, match="no cross-attention"):
        check_lora(no_cross, TINY_SDXL_WIDTH, "sdxl")
    flat = tmp_path / "flat.safetensors"
    save_file({"unet.x.attn2.to_k.lora_A.weight": np.zeros(4, np.float32)}, str(flat))
    with pytest.raises(ValueError, match="expected 2\\+ dims"):
        check_lora(flat, TINY_SDXL_WIDTH, "sdxl")


# 3. The library

def test_library_add_list_remove(tiny_lora, tmp_path):
    library = LoraLibrary(tmp_path / "loras")
    assert library.list() == []
    path = library.add(tiny_lora, "tiny-a_1.0", TINY_SDXL_WIDTH, "sdxl")
    assert path == (tmp_path / "loras" / "tiny-a_1.0.safetensors").resolve()
    assert path.read_bytes() == tiny_lora.read_bytes()
    assert [(e.name, e.path, e.metadata) for e in library.list()] == [("tiny-a_1.0", path, {"format": "pt"})]
    assert list((tmp_path / "loras").iterdir()) == [path]  # no temp file left behind
    library.remove("tiny-a_1.0")
    assert library.list() == []
    with pytest.raises(ValueError, match="no LoRA named"):
        library.remove("tiny-a_1.0")


def test_library_refuses_overwrite_unless_asked(tiny_lora, tmp_path):
    library = LoraLibrary(tmp_path)
    library.add(tiny_lora, "x", TINY_SDXL_WIDTH, "sdxl")
    with pytest.raises(ValueError, match="already exists"):
        library.add(tiny_lora, "x", TINY_SDXL_WIDTH, "sdxl")
    assert library.add(tiny_lora, "x", TINY_SDXL_WIDTH, "sdxl", replace=True) == library.path("x")


def test_library_refuses_a_misfit_without_writing(tiny_lora, tmp_path):
    library = LoraLibrary(tmp_path / "loras")
    with pytest.raises(ValueError, match="cross-attention width"):
        library.add(tiny_lora, "x", TINY_SD15_WIDTH, "sd15")
    assert library.list() == []


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", ".hidden", "", "a" * 65, "a b", "..", "a\\b"])
def test_library_refuses_bad_names(tiny_lora, tmp_path, name):
    library = LoraLibrary(tmp_path / "loras")
    with pytest.raises(ValueError, match="LoRA name must be"):
        library.path(name)
    with pytest.raises(ValueError, match="LoRA name must be"):
        library.add(tiny_lora, name, TINY_SDXL_WIDTH, "sdxl")
    assert not (tmp_path / "x.safetensors").exists()


def test_library_refuses_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "out.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ValueError, match="outside the library"):
        LoraLibrary(tmp_path / "loras").path("out")


# 4. Prompt tags and the API list

@pytest.mark.parametrize("prompt, expected", [
    ("a cat, <lora:x:0.5>, red", ("a cat, red", [("x", 0.5)])),
    ("<lora:x> a cat", ("a cat", [("x", 1.0)])),
    ("a cat <lora:x:-1.5>, red <lora:y:.25>", ("a cat, red", [("x", -1.5), ("y", 0.25)])),
    ("a cat,<lora:b:2>,<lora:a:1>", ("a cat", [("b", 2.0), ("a", 1.0)])),
    ("no tags,  here", ("no tags, here", [])),
])
def test_parse_lora_tags(prompt, expected):
    assert parse_lora_tags(prompt) == expected


@pytest.mark.parametrize("prompt, message", [
    ("a <lora:x:abc>", "tag '<lora:x:abc>': weight must be a number in \\[-4, 4\\]"),
    ("a <lora:x:4.5>", "got '4.5'"),
    ("a <lora:x:nan>", "got 'nan'"),
    ("a <lora:x:>", "got ''"),
    ("a <lora:x:0.5:0.3>", "got '0.5:0.3'"),
    ("a <lora:x:1> <lora:x:0.5>", "x is given more than once"),
    ("a <lora:../x:1>", "LoRA name must be"),
    ("a <lora:x:1", "unclosed"),
])
def test_parse_lora_tags_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_lora_tags(prompt)


def test_lora_tags_round_trip():
    loras = [("x", 0.5), ("y", -1.0), ("z", 0.123456789)]
    assert lora_tags(loras) == "<lora:x:0.5> <lora:y:-1.0> <lora:z:0.123456789>"
    assert parse_lora_tags("a cat " + lora_tags(loras)) == ("a cat", loras)
    assert lora_tags([]) == ""
    with pytest.raises(ValueError, match="weight must be"):
        lora_tags([("x", 9.0)])


@pytest.mark.parametrize("text, expected", [
    ("name:0.8, other:0.5", [("name", 0.8), ("other", 0.5)]),
    ("name", [("name", 1.0)]),
    ("  ", []),
    ("a:-2,b", [("a", -2.0), ("b", 1.0)]),
])
def test_parse_lora_list(text, expected):
    assert parse_lora_list(text) == expected


@pytest.mark.parametrize("text, message", [
    ("a:0.8,", "empty entry"),
    ("a:x", "loras entry 'a:x': weight must be"),
    ("a:1, a:2", "a is given more than once"),
    ("../a:1", "LoRA name must be"),
    ("a:1e9", "weight must be"),
])
def test_parse_lora_list_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_lora_list(text)
