"""A ControlNet control unit's panel, shared by the tabs that take units (ControlNet, Inpaint): its
control image, a hint editor ("Preview hint" fills it; paint on it or open your own), type,
ControlNet, weight, start/end, resize rule and Canny thresholds."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.groups_control import usable_controlnets
from studio.images import open_image
from studio.ui.generate import INPUT_ERRORS
from studio.ui.tab import AppContext, status_html
from studio.ui.widgets import integral, widget

AUTO = "— first for the control type"


def controlnet_choices(registry: Any, model_name: str) -> list[tuple[str, str]]:
    """The ControlNets that fit the model, and "" (pick one for the control type)."""
    nets = usable_controlnets(registry, registry.get(model_name))
    return [(AUTO, "")] + [(f"{m.label} · {', '.join(m.control_types)}", m.name) for m in nets]


def editor_hint(value: Any) -> Any:
    """The hint an image editor shows (its picture with what was painted on it), or None when empty."""
    if not isinstance(value, dict) or not value.get("background"):
        return None
    return value.get("composite") or value["background"]


def unit_panel(ctx: AppContext, declared: dict, initial: dict, suffix: str, title: str, prefix: str,
               open: bool = True) -> dict[str, Any]:
    """One unit's widgets, keyed by request field; the hint's editor (page) and the hidden API
    field for it are "hint_editor" and "control_hint"."""
    def w(name: str, elem: str, **kw: Any) -> Any:
        return widget(declared[name + suffix], initial[name + suffix], f"{prefix}{elem}{suffix}", **kw)

    with gr.Accordion(title, open=open, elem_id=f"{prefix}unit{suffix or '_1'}"):
        with gr.Row():
            image = w("control_image", "image", height=320)
            hint_editor = gr.ImageEditor(label="Hint (preview, paint or upload)", type="filepath",
                                         format="png", height=320, sources=["upload", "clipboard"],
                                         brush=gr.Brush(colors=["#ffffff", "#000000"], default_size=4),
                                         elem_id=f"{prefix}hint{suffix}")
        with gr.Row(equal_height=True):
            control_type = w("control_type", "type")
            model = w("controlnet_model", "net", choices=controlnet_choices(ctx.manager.registry, ctx.default_model))
            preview = gr.Button("Preview hint", size="sm", elem_id=f"{prefix}preview{suffix}", min_width=120)
        with gr.Row():
            weight = w("controlnet_conditioning_scale", "weight")
            start = w("control_guidance_start", "start")
            end = w("control_guidance_end", "end")
        with gr.Row():
            resize_mode = w("control_resize_mode", "resize-mode")
            canny = initial["control_type" + suffix] == "canny"
            low = w("canny_low_threshold", "canny-low", visible=canny)
            high = w("canny_high_threshold", "canny-high", visible=canny)
        hint = w("control_hint", "hint-api", visible=False)  # the API's hint: a plain file
    control_type.change(lambda t: [gr.update(visible=t == "canny")] * 2, control_type, [low, high], queue=False,
                        api_visibility="private")
    # A hint made from another picture, or by another preprocessor, would be used silently: a new
    # control image, or a control type the user picks, clears it (Preview hint makes it again).
    image.change(lambda: None, None, hint_editor, queue=False, api_visibility="private")
    control_type.input(lambda: None, None, hint_editor, queue=False, api_visibility="private")
    return {n + suffix: v for n, v in dict(
        control_image=image, control_hint=hint, control_type=control_type, controlnet_model=model,
        controlnet_conditioning_scale=weight, control_guidance_start=start, control_guidance_end=end,
        control_resize_mode=resize_mode, canny_low_threshold=low, canny_high_threshold=high,
        hint_editor=hint_editor, preview=preview).items()}


def wire_preview(ctx: AppContext, unit: dict, s: str, size: list, status: Any) -> None:
    """"Preview hint": the unit's hint into its editor (errors in the status line), at the output
    size when `size` holds the width and height widgets, else at the control image's aspect."""
    from studio.pipelines.controlnet import control_hint

    def preview(path: str | None, control_type: str, low: Any, high: Any, mode: str, *dims: Any):
        width, height = (integral(d) for d in dims) if dims else (None, None)
        try:
            image = open_image(path) if path else None
            hint = control_hint(ctx.manager, image, control_type, integral(low), integral(high), width, height,
                                mode)
        except INPUT_ERRORS as exc:
            return gr.update(), status_html(str(exc), "error")
        return hint, status_html(f"Hint ready ({control_type}, {hint.width}×{hint.height}): paint on it or "
                                 "Generate.", "done")

    inputs = [unit["control_image" + s], unit["control_type" + s], unit["canny_low_threshold" + s],
              unit["canny_high_threshold" + s], unit["control_resize_mode" + s], *size]
    unit["preview" + s].click(preview, inputs, [unit["hint_editor" + s], status], api_visibility="private",
                              **ctx.gpu_queue)
