"""The styles library: named prompt wrappers users pick from, as in Fooocus.

A style is a prompt template holding `{prompt}` exactly once, where the user's prompt goes, and a
negative prompt added before the user's. The library is data (presets/styles.json), validated as
strictly as presets: unknown keys, wrong types, bad names or placeholders and duplicate names are
errors that name the problem. Picking a style fills a request's style fields; the request's Style
group (studio/groups.py) applies them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
DEFAULT_STYLES = Path(__file__).resolve().parents[1] / "presets" / "styles.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 &.\-]{0,39}$"  # starts with a letter or digit, at most 40 chars
PLACEHOLDER = "{prompt}"


class Style(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    prompt: str = Field(max_length=4000)  # the user's prompt goes where {prompt} is
    negative_prompt: str = Field(max_length=4000)

    @field_validator("prompt")
    @classmethod
    def _one_placeholder(cls, v: str) -> str:
        # Any other brace is almost surely a mistyped placeholder ("{promt}", "{subject}").
        if v.count(PLACEHOLDER) != 1 or "{" in v.replace(PLACEHOLDER, "") or "}" in v.replace(PLACEHOLDER, ""):
            raise ValueError(f"must contain the placeholder {PLACEHOLDER} exactly once and no other braces, got {v!r}")
        return v


class StylesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal[1]
    styles: list[Style] = Field(min_length=1)


def load_styles(path: Path = DEFAULT_STYLES) -> dict[str, Style]:
    """Style name -> Style, in the file's order; raise ValueError saying what is wrong with the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"styles file {path} must be UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"styles file {path} must be JSON: {exc}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ValueError(f"styles file {path} needs schema_version {version}; this Studio reads up to {SCHEMA_VERSION}")
    try:
        library = StylesFile.model_validate_json(text)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']} (got {e.get('input')!r:.80})"
                    for e in exc.errors()[:5]]
        raise ValueError(f"invalid styles file {path}: " + "; ".join(problems)) from None
    styles: dict[str, Style] = {}
    for style in library.styles:
        # Names are compared ignoring case: "Anime" and "anime" would look the same in a menu.
        same = next((name for name in styles if name.casefold() == style.name.casefold()), None)
        if same is not None:
            raise ValueError(f"invalid styles file {path}: duplicate style name {style.name!r} (already used by {same!r})")
        styles[style.name] = style
    return styles

