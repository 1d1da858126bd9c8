"""Property-based tests (hypothesis) of what every caller's value goes through: the preset parser
and request validation. Whatever arrives, the answer is a result or a ValueError that says what is
wrong, never another exception; what is accepted lies within its declaration."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from studio import presets as P
from studio.fields import check_value, defaults, specs
from studio.tasks import TASKS

# Derandomized: CI runs the same examples every time (a red CI must mean a change broke something);
# raise max_examples or drop derandomize locally to search further.
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Any JSON-like value, with what hostile callers send: NaN, huge ints, NUL and lone surrogates.
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["\x00", "a\ud800b", "../x", "{prompt}", "Euler", "tiny", "64, 64", "nan"]))
JSON_LIKE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
ANY_VALUE = JSON_LIKE | st.tuples(SCALARS, SCALARS)


def valid_value(spec):
    """A strategy of values the declaration accepts (with the tiny model's size range)."""
    if spec.kind == "int":
        lo, hi = (64, 512) if spec.sized else (int(spec.lo), int(spec.hi))
        m = spec.multiple_of or 1
        return st.integers(math.ceil(lo / m), hi // m).map(lambda k: k * m)
    if spec.kind == "float":
        return st.floats(spec.lo, spec.hi, allow_nan=False)
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "choice":
        return st.sampled_from(spec.choices)
    if spec.kind == "pair":
        side = st.integers(int(spec.lo), int(spec.hi))
        return st.tuples(side, side)
    return st.just(None)  # text: the base request's own


def optional(spec, strategy):
    return (st.none() | strategy) if spec.optional else strategy


def base_values(registry, request_type) -> dict:
    """A valid tiny request of `request_type`: the declared defaults, the tiny model's own ones,
    a 64 px image where an image goes."""
    values = {**defaults(request_type), "model": "tiny", "prompt": "a fox"}
    model_defaults = registry.get("tiny").defaults
    for name, spec in specs(request_type).items():
        if spec.from_model and hasattr(model_defaults, name):
            values[name] = getattr(model_defaults, name)
        if spec.kind == "image" and spec.essential:
            values[name] = Image.new("RGB", (64, 64), "white")
    if "width" in values and request_type.TASK != "panorama":
        values.update(width=64, height=64)
    if "slider" in values:  # its default (12) is past the 2 steps the tiny model runs
        values["slider"] = 0
    return values


@pytest.mark.parametrize("task_name", list(TASKS))
def test_the_base_requests_are_valid(registry, task_name):
    request_type = TASKS[task_name].request
    request_type(**base_values(registry, request_type)).validate(registry)


# --- request validation ----------------------------------------------------------------------

def check_accepted(name, spec, value, size_range):
    """An accepted value lies within its declaration."""
    check_value(name, spec, value, size_range)
    if value is None:
        assert spec.optional or spec.kind == "image"
        return
    lo, hi = size_range if spec.sized else (spec.lo, spec.hi)
    if spec.kind in ("int", "float"):
        assert not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi
        assert spec.kind == "float" or isinstance(value, int)
    elif spec.kind == "choice":
        assert value in spec.choices
    elif spec.kind == "text":
        assert isinstance(value, str) and (hi is None or len(value) <= hi) and "\x00" not in value
        value.encode("utf-8")
    elif spec.kind == "pair":
        assert len(value) == 2 and all(lo <= v <= hi for v in value)


def validation_answer(registry, base, name, value):
    """(accepted, message) of validating `base` with field `name` set to `value`."""
    try:
        request = base.replace(**{name: value})
        request.validate(registry)
    except ValueError as exc:
        return False, str(exc)
    return True, request


@pytest.mark.parametrize("task_name", list(TASKS))
@SETTINGS
@given(data=st.data())
def test_validation_names_the_field_or_accepts_a_value_in_range(registry, task_name, data):
    request_type = TASKS[task_name].request
    declared = specs(request_type)
    base = request_type(**base_values(registry, request_type))
    name = data.draw(st.sampled_from(sorted(n for n, s in declared.items() if s.kind != "image")), label="field")
    spec = declared[name]
    value = data.draw(ANY_VALUE | optional(spec, valid_value(spec)), label="value")
    accepted, answer = validation_answer(registry, base, name, value)
    if accepted:
        check_accepted(name, spec, getattr(answer, name), registry.get("tiny").size_range)
    else:
        # Named as the page labels it or by its API name (a rule across fields may use the label).
        assert name in answer or spec.label.split(" (")[0] in answer, answer
        assert len(answer) < 3000  # a hostile value is not echoed in full


@SETTINGS
@given(data=st.data())
def test_what_the_api_receives_is_parsed_without_exceptions(registry, data):
    """The API's raw values go through widgets.parse before validation: it must never raise."""
    from studio.ui.widgets import parse

    request_type = TASKS[data.draw(st.sampled_from(list(TASKS)), label="task")].request
    declared = specs(request_type)
    name = data.draw(st.sampled_from(sorted(n for n, s in declared.items() if s.kind != "image")), label="field")
    raw = data.draw(ANY_VALUE | st.sampled_from(["", " ", "off", "1e999", "-0", "64x64", "1,2", "−5"]), label="raw")
    parsed = parse(declared[name], raw)
    base = request_type(**base_values(registry, request_type))
    accepted, answer = validation_answer(registry, base, name, parsed)
    assert accepted or name in answer or declared[name].label.split(" (")[0] in answer, answer


# --- the preset parser -----------------------------------------------------------------------

def parse_answer(data, registry=None):
    try:
        return P.parse_preset(data, registry)
    except ValueError as exc:
        message = str(exc)
        assert message and len(message) < 3000, message[:3000]
        return None


@SETTINGS
@given(value=JSON_LIKE)
def test_any_json_value_is_a_preset_or_a_clear_error(registry, value):
    for form in (value, json.dumps(value, allow_nan=True), json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")):
        parse_answer(form)
        parse_answer(form, registry)


def valid_doc():
    return json.loads(P.preset_json(P.parse_preset({"schema_version": 2, "task": "txt2img", "name": "Fox",
                                                     "model": "tiny", "txt2img": {"width": 64, "height": 64}})))


@SETTINGS
@given(data=st.data())
def test_a_preset_with_one_hostile_value_is_a_preset_or_a_clear_error(registry, data):
    doc = valid_doc()
    section = data.draw(st.sampled_from(sorted(k for k, v in doc.items() if isinstance(v, dict))), label="section")
    key = data.draw(st.sampled_from(sorted(doc[section]) + ["unknown_key"]), label="key")
    doc[section][key] = data.draw(JSON_LIKE, label="value")
    if data.draw(st.booleans(), label="top level instead"):
        doc[data.draw(st.sampled_from(["schema_version", "name", "task", "model", "extra"]))] = doc[section].pop(key)
    for form in (doc, json.dumps(doc, allow_nan=True)):
        preset = parse_answer(form, registry)
        if preset is not None:
            assert P.parse_preset(P.preset_json(preset)) == preset


def valid_request(registry):
    """Strategy: a text-to-image request the tiny model accepts in every recorded field."""
    request_type = TASKS["txt2img"].request
    base = base_values(registry, request_type)
    fields = {name: optional(spec, valid_value(spec)) for name, spec in specs(request_type).items()
              if spec.kind not in ("text", "image")}
    fields["prompt"] = st.text(max_size=50)
    return st.fixed_dictionaries(fields).map(lambda values: request_type(**{**base, **values}))


@SETTINGS
@given(data=st.data())
def test_a_valid_preset_round_trips(registry, data):
    request = data.draw(valid_request(registry), label="request")
    preset = P.preset_from_request(request, name="Round trip")
    again = P.parse_preset(P.preset_json(preset))
    assert again == preset == P.parse_preset(again.model_dump())
    assert P.preset_from_token(P.share_token(preset)) == preset
    # The settings it fills are the request's own.
    as_lists = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # noqa: E731
    assert as_lists(again.settings()) == request.record()
