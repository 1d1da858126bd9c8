"""Request fields declared once: type, default, range, label and help in one place.

A task's request is a frozen dataclass composed of field groups (studio/groups.py). Each field
carries a `Spec`, and everything else is derived from it: validation and its messages (here),
the preset schema (studio/presets.py), the A1111 infotext (studio/metadata.py), and the widgets,
their bounds and labels, and the API's parameters and defaults (studio/ui/widgets.py). Adding a
field to a task is one declaration plus its use in the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Kind = Literal["int", "float", "bool", "text", "choice", "pair", "image"]


@dataclass(frozen=True)
class Spec:
    label: str  # as the page shows it; error messages use it, the API name follows in brackets
    kind: Kind
    help: str = ""
    lo: float | None = None  # inclusive range; for text the maximum length is `hi`
    hi: float | None = None
    multiple_of: int | None = None
    optional: bool = False  # None is a valid value: the control is off (shown as an empty box)
    choices: tuple[str, ...] = ()  # for "choice"
    step: float | None = None  # the widget's step
    infotext: str | None = None  # its key in A1111's `parameters` text ("Steps", "CFG scale", ...)
    from_model: bool = False  # presets may leave it out: the model's registry default then applies
    sized: bool = False  # the model family's size range narrows [lo, hi]
    key: str | None = None  # its name inside its preset section (default: the field name)
    record: bool = True  # kept in presets and PNG metadata (False: the input image itself)
    essential: bool = False  # the task's own input (prompt, image): the API has no default for it
    keep_if_null: bool = False  # text a preset may leave null, keeping what the user typed
    pattern: str | None = None  # for text: a regular expression presets must match


def field(default: Any, label: str, kind: Kind, **spec: Any) -> Any:
    """A dataclass field with its Spec (the one declaration of a request field)."""
    return dataclasses.field(default=default, metadata={"spec": Spec(label, kind, **spec)})


def redefault(group: type, name: str, default: Any, **changes: Any) -> Any:
    """Field `name` of `group` as declared there, with another default (a task's own choice) and
    optionally some of its Spec changed (e.g. essential=False where the task can do without it)."""
    declared = {f.name: f for f in dataclasses.fields(group)}[name]
    spec = dataclasses.replace(declared.metadata["spec"], **changes)
    return dataclasses.field(default=default, metadata={**declared.metadata, "spec": spec})


def specs(request_type: type) -> dict[str, Spec]:
    """Every declared field of a request type, in field order."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(request_type) if "spec" in f.metadata}


def defaults(request_type: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(request_type) if "spec" in f.metadata}


def section_of(request_type: type, name: str) -> str:
    """The preset section a field belongs to: its group's SECTION, or the task's own section."""
    for cls in request_type.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            section = cls.__dict__.get("SECTION")  # the class's own: a request's fields are the task's
            return request_type.TASK if section is None else section
    raise KeyError(name)


def label(name: str, spec: Spec) -> str:
    """How errors name a field: as the page labels it (without its units), the API name in brackets."""
    return f"{spec.label.split(' (')[0]} ({name})"


def text_problem(value: str) -> str | None:
    """What makes `value` unfit to keep as text, or None. A NUL character ends a string in PNG text
    chunks and C libraries; a lone surrogate (which only a JSON escape such as "\\ud800" can make)
    is not Unicode at all: tokenizers and UTF-8 writers refuse it deep inside a job."""
    if "\x00" in value:
        return f"contains a NUL character at position {value.index(chr(0))}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate at position {exc.start}"
    return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_value(name: str, spec: Spec, value: Any, size_range: tuple[int, int] | None = None) -> None:
    """Raise ValueError naming the field, the expected range and the received value."""
    if value is None and spec.optional:
        return
    lo, hi = size_range if (spec.sized and size_range) else (spec.lo, spec.hi)
    empty = "empty or " if spec.optional else ""
    what = label(name, spec)
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{what} must be {empty}an integer in [{_fmt(lo)}, {_fmt(hi)}], got {value!r:.200}")
        if spec.multiple_of and value % spec.multiple_of:
            raise ValueError(f"{what} must be a multiple of {spec.multiple_of}, got {value}")
    elif spec.kind == "float":
        # isfinite on floats only: an int of 400 digits is finite, but converting it to a float overflows
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or isinstance(value, float) and not math.isfinite(value) or not lo <= value <= hi):
            raise ValueError(f"{what} must be {empty}a finite number in [{_fmt(lo)}, {_fmt(hi)}], got {value!r:.200}")
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{what} must be true or false, got {value!r:.200}")
    elif spec.kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, got {value!r:.200}")
        if hi is not None and len(value) > hi:
            raise ValueError(f"{what} must be at most {_fmt(hi)} characters, got {len(value)}")
        problem = text_problem(value)
        if problem:
            raise ValueError(f"{what} must be text without NUL characters or lone surrogates; it {problem}")
        if spec.pattern and not re.fullmatch(spec.pattern, value):
            raise ValueError(f"{what} must match {spec.pattern}, got {value!r:.200}")
    elif spec.kind == "choice":
        if value not in spec.choices:
            raise ValueError(f"{what} must be one of {list(spec.choices)}, got {value!r:.200}")
    elif spec.kind == "pair":
        if not (isinstance(value, tuple) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value)):
            raise ValueError(f"{what} must be {empty}two integers in [{_fmt(lo)}, {_fmt(hi)}], got {value!r:.200}")
    elif spec.kind == "image" and value is None:
        raise ValueError(f"{what} is missing: upload an image")


@dataclass(frozen=True, kw_only=True)
class Request:
    """Base of every task's request. Subclasses set TASK and compose field groups."""

    TASK: ClassVar[str] = ""
    # What the model must be able to do, as the registry's families say it ("txt2img", "img2img",
    # "inpaint"); a task that is a variant of one of those (ControlNet, outpainting) names it.
    NEEDS: ClassVar[str] = ""

    @classmethod
    def needs(cls) -> str:
        return cls.NEEDS or cls.TASK

    def __post_init__(self):
        for name, spec in specs(type(self)).items():  # JSON brings pairs back as lists
            value = getattr(self, name)
            if spec.kind == "pair" and isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def validate(self, registry: Any, inputs: bool = True) -> None:
        """Check every field against its declaration, then each group's rules across fields.

        Raises ValueError naming the field (as the page labels it), the range and the value.
        inputs=False checks the settings only (a preset's), not the input image."""
        if not isinstance(getattr(self, "model", None), str):
            raise ValueError(f"Model (model) must be a registry name, got {getattr(self, 'model', None)!r}")
        try:
            entry = registry.get(self.model)
        except ValueError as exc:
            raise ValueError(f"Model (model): {exc}") from None
        if self.needs() not in registry.tasks(entry):  # first: every other range depends on the model
            raise ValueError(f"Model (model) must be a base model that can do {self.needs()}, one of "
                             f"{registry.names('base', task=self.needs())}; got {entry.name!r} (role {entry.role!r}, "
                             f"family {entry.family!r})")
        for name, spec in specs(type(self)).items():
            if inputs or spec.record:
                check_value(name, spec, getattr(self, name), entry.size_range)
        for cls in reversed(type(self).__mro__):
            rule = cls.__dict__.get("check")
            if rule is not None:
                rule(self, registry, entry)

    def record(self) -> dict[str, Any]:
        """The recorded fields as JSON values (what presets and PNG metadata keep)."""
        out = {}
        for name, spec in specs(type(self)).items():
            if spec.record:
                value = getattr(self, name)
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)
