"""Widgets made from field declarations: labels, help, bounds and initial values come from each
field's Spec (studio/fields.py), and so do the API's parameter names and defaults.

How a value travels: the widget shows `shown(spec, value)`; what it sends back (or what an API
caller sends) becomes a request value through `parse(spec, raw)`, and validation then refuses
anything wrong with the field's name, range and value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.fields import Spec, specs


def elem_id(prefix: str, name: str) -> str:
    """A widget's element id in a tab: "steps" in text-to-image, "img2img-steps" in image-to-image."""
    return f"{prefix}{name}"


def widget(spec: Spec, value: Any, elem: str, **overrides: Any) -> gr.components.Component:
    """The widget for a declared field, showing `value`; `overrides` are Gradio keyword arguments
    (and `choices`, `range` for a dropdown or a slider's bounds)."""
    choices = overrides.pop("choices", None)
    lo, hi = overrides.pop("range", (spec.lo, spec.hi))
    kwargs = {"label": spec.label, "elem_id": elem, "info": spec.help or None, **overrides}
    kind = spec.kind
    if kind == "choice" or choices is not None:  # choices may be (label, value) pairs
        return gr.Dropdown(list(spec.choices) if choices is None else choices, value=value, **kwargs)
    if kind in ("int", "float") and spec.optional or kind == "pair":
        # Text, not gr.Number: an empty box must mean "off" (a Number shows and sends 0 for empty).
        kwargs.setdefault("placeholder", "empty: the image's own" if kind == "pair" else "off")
        return gr.Textbox(shown(spec, value), **kwargs)
    if kind in ("int", "float") and spec.step is None:  # a seed: any integer, not a slider
        return gr.Number(value, precision=0 if kind == "int" else None, minimum=lo, maximum=hi, **kwargs)
    if kind in ("int", "float"):
        return gr.Slider(lo, hi, value=value, step=spec.step, **kwargs)
    if kind == "bool":
        return gr.Checkbox(bool(value), **kwargs)
    if kind == "image":
        kwargs.pop("info")  # an image has no help line
        return gr.Image(value, type="filepath", format="png", sources=["upload", "clipboard"], **kwargs)
    return gr.Textbox(value, **kwargs)


def shown(spec: Spec, value: Any) -> Any:
    """How a request value shows in its widget."""
    if spec.kind == "pair":
        return "" if value is None else ", ".join(str(v) for v in value)
    if spec.optional and spec.kind in ("int", "float"):
        return "" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return value


def integral(value: Any) -> Any:
    """JSON numbers may arrive as 512.0: accept integral floats as ints, leave the rest to validation."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def parse(spec: Spec, raw: Any) -> Any:
    """A request value from what a widget or an API caller sent (not yet validated: anything that
    cannot be read is passed on unchanged, for validation to refuse with the field's name)."""
    if spec.kind == "pair":
        return _pair(raw)
    if spec.kind in ("int", "float") and spec.optional:
        return optional_number(raw)
    if spec.kind == "int":
        return integral(raw)
    # (not an int past float's range, ~2**1024: converting it overflows; validation refuses it as it is)
    if spec.kind == "float" and isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) < 2**1000:
        return float(raw)  # a slider at a whole number sends 1, which diffusers' checks refuse as a weight
    if spec.kind == "text" and raw is None and spec.keep_if_null:
        return ""  # an empty box (an API caller's None) is empty text
    return raw


def optional_number(value: Any) -> Any:
    """An empty box (None, "", "off") is None; numeric text becomes a number; the rest is passed
    on for validation to refuse with the field's name."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off", "none")):
        return None
    if isinstance(value, str):
        try:
            return float(value.strip().replace("−", "-"))  # a typographic minus too
        except ValueError:
            return value
    return value


def _pair(value: Any) -> Any:
    """(height, width) or (top, left) from "1024, 768", "1024x768" or a JSON list; "" is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = value.replace("×", ",").replace("x", ",").split(",")
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            return value
    return tuple(integral(v) for v in value) if isinstance(value, (list, tuple)) else value


def api_order(request_type: type) -> list[str]:
    """The API's parameter order: the essential inputs first (they have no default), then the rest
    in declaration order."""
    declared = specs(request_type)
    return sorted(declared, key=lambda name: not declared[name].essential)


def api_function(fn: Callable[..., Any], request_type: type, doc: str) -> Callable[..., Any]:
    """`fn(values: dict, progress, request)` as a Gradio handler whose parameters are the request's
    fields by name: Gradio reads the API's parameter names from this signature, and their defaults
    from the widgets' initial values (which come from the same declarations)."""
    names = api_order(request_type)

    if inspect.iscoroutinefunction(fn):  # Gradio awaits it: a caller's cancel reaches it
        async def handler(*args):
            *values, request, progress = args
            return await fn(dict(zip(names, values)), progress, request)
    else:
        def handler(*args):
            *values, request, progress = args
            return fn(dict(zip(names, values)), progress, request)

    # Gradio gives a parameter its widget's initial value as the default, or None when the widget
    # starts empty and the signature says None (an optional image): all but the essential ones.
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    declared = specs(request_type)
    params = [inspect.Parameter(n, kind, **({} if declared[n].essential else {"default": None})) for n in names]
    params += [inspect.Parameter("request", kind, default=None, annotation=gr.Request),
               inspect.Parameter("progress", kind, default=gr.Progress())]
    handler.__signature__ = inspect.Signature(params)
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = request_type.TASK
    handler.__doc__ = doc
    return handler
