"""The styles library: the shipped file, strict validation of bad files, and applying a style
(through the request, which is where a style takes effect)."""

from __future__ import annotations

import json

import pytest

from studio.pipelines.txt2img import Txt2ImgRequest
from studio.styles import DEFAULT_STYLES, Style, load_styles


def apply_style(style: Style, prompt: str, negative_prompt: str) -> tuple[str, str]:
    """What the model sees when the page's style boxes hold `style` (the request applies it)."""
    request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative_prompt, style_prompt=style.prompt,
                             style_negative_prompt=style.negative_prompt, style_name=style.name)
    return request.styled_prompts()


def test_shipped_styles_load_with_none_first_as_the_identity():
    styles = load_styles()
    names = list(styles)
    assert len(styles) >= 15
    assert names[0] == "None"
    assert names == [s["name"] for s in json.loads(DEFAULT_STYLES.read_text())["styles"]]  # file order
    assert apply_style(styles["None"], "a cat", "blurry") == ("a cat", "blurry")
    assert apply_style(styles["None"], "a cat", "") == ("a cat", "")


def test_every_shipped_style_keeps_the_prompt():
    for name, style in load_styles().items():
        prompt, _ = apply_style(style, "a cat", "")
        assert prompt.count("a cat") == 1 and "{" not in prompt, name
        assert len(name) <= 40


def write(tmp_path, data) -> object:
    path = tmp_path / "styles.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def library(*styles: dict, **top) -> dict:
    return {"schema_version": 1, "styles": list(styles), **top}


GOOD = {"name": "Ink", "prompt": "ink drawing of {prompt}", "negative_prompt": "colour"}


@pytest.mark.parametrize("data, expected", [
    ("{not json", "must be JSON"),
    ('["a list"]', "file: Input should be an object"),
    (library(GOOD, dict(GOOD, name="Ink")), "duplicate style name 'Ink'"),
    (library(GOOD, dict(GOOD, name="ink")), "duplicate style name 'ink' (already used by 'Ink')"),
    (library(dict(GOOD, prompt="ink drawing")), "styles.0.prompt: Value error, must contain the placeholder {prompt}"),
    (library(dict(GOOD, prompt="{prompt} and {prompt}")), "exactly once"),
    (library(dict(GOOD, prompt="{promt} {prompt}")), "no other braces"),
    (library(dict(GOOD, colour="red")), "styles.0.colour: Extra inputs are not permitted"),
    (library(GOOD, author="me"), "author: Extra inputs are not permitted"),
    (library(dict(GOOD, negative_prompt=3)), "styles.0.negative_prompt: Input should be a valid string"),
    (library(dict(GOOD, name=None)), "styles.0.name: Input should be a valid string"),
    (library({"name": "Ink", "prompt": "{prompt}"}), "styles.0.negative_prompt: Field required"),
    (library(dict(GOOD, name="Ink/../x")), "styles.0.name: String should match pattern"),
    (library(dict(GOOD, name="x" * 41)), "styles.0.name: String should match pattern"),
    (library(dict(GOOD, name="")), "styles.0.name: String should match pattern"),
    ({"styles": [GOOD]}, "schema_version: Field required"),
    (library(GOOD, schema_version="1"), "schema_version: Input should be 1"),
    (library(GOOD, schema_version=2), "needs schema_version 2"),
    (library(), "styles: List should have at least 1 item"),
    ({"schema_version": 1, "styles": {"Ink": GOOD}}, "styles: Input should be a valid array"),
])
def test_bad_files_are_refused_naming_the_problem(tmp_path, data, expected):
    with pytest.raises(ValueError) as info:
        load_styles(write(tmp_path, data))
    assert expected in str(info.value)


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "styles.json"
    path.write_bytes(b'{"schema_version": 1, "styles": [{"name": "\xff"}]}')
    with pytest.raises(ValueError, match="must be UTF-8"):
        load_styles(path)


def test_names_may_use_letters_digits_spaces_dash_ampersand_and_dot(tmp_path):
    path = write(tmp_path, library(dict(GOOD, name="Ink & wash v1.5 - soft")))
    assert list(load_styles(path)) == ["Ink & wash v1.5 - soft"]


def test_apply_style_joins_negatives_style_first_skipping_empty_ones():
    style = Style(name="Ink", prompt="ink drawing of {prompt}, pen", negative_prompt="colour")
    assert apply_style(style, "a cat", "blurry") == ("ink drawing of a cat, pen", "colour, blurry")
    assert apply_style(style, "a cat", "") == ("ink drawing of a cat, pen", "colour")
    bare = Style(name="Bare", prompt="{prompt}", negative_prompt="")
    assert apply_style(bare, "a cat", "blurry") == ("a cat", "blurry")
    assert apply_style(bare, "a cat", "") == ("a cat", "")
    # The user's prompt is inserted as text, never read as a template itself.
    assert apply_style(style, "{prompt} {x}", "")[0] == "ink drawing of {prompt} {x}, pen"
