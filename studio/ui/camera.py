"""The Camera panel of the text-to-image tab: focal length, pitch and depth of field."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.camera import (
    SENSOR_LONG_MM,
    depth_of_field_limits_m,
    focal_length_px,
    fov_degrees,
    horizon_row,
)
from studio.fields import defaults
from studio.groups import DOF_MODES, Camera
from studio.groups_control import HorizonControl, usable_controlnets
from studio.ui.widgets import optional_number, widget

HELP = (
    "Leave a box empty to turn that control off. **Pitch** tilts the camera (+ looks up): the horizon "
    "is placed at row H/2 + f·tan(pitch) by shaping the starting noise (sky above, ground below). "
    "**Aperture** blurs each image after generation from its estimated depth, as a thin lens would "
    "(the sharp image is kept too), or, with *prompt words only*, just asks the model for bokeh. "
    "**Camera → horizon control** also steers sampling with a depth ControlNet showing the depth of a level "
    "ground plane seen from this camera, so the horizon holds where the geometry puts it."
)


def camera_summary(focal_length_mm: Any, pitch: Any, aperture: Any, focus: Any, width: Any, height: Any) -> str:
    """One line on what the lens gives at this size: field of view, horizon row, sharp zone."""
    focal, pitch, aperture, focus = map(optional_number, (focal_length_mm, pitch, aperture, focus))
    if focal is None and pitch is None and aperture is None:
        return "Camera off: plain text-to-image."
    try:
        f = 50.0 if focal is None else float(focal)
        w, h = int(width), int(height)
        short_mm = SENSOR_LONG_MM * min(w, h) / max(w, h)
        across = (fov_degrees(f), fov_degrees(f, short_mm)) if w >= h else (fov_degrees(f, short_mm), fov_degrees(f))
        text = f"{f:g} mm: field of view {across[0]:.1f}° × {across[1]:.1f}°"
        if pitch is not None:
            y = horizon_row(h, focal_length_px(f, w, h), float(pitch))
            where = "above the frame" if y < 0 else "below the frame" if y > h else f"at row {y:.0f} of {h}"
            text += f"; pitch {float(pitch):+g}° puts the horizon {where}"
        if aperture is not None and focus is not None:
            near, far = depth_of_field_limits_m(float(focus), f, float(aperture))
            text += f"; f/{float(aperture):g} at {float(focus):g} m is sharp from {near:.2f} m to " + (
                "infinity" if far == float("inf") else f"{far:.2f} m")
        elif aperture is not None:
            text += f"; f/{float(aperture):g}, focused on the centre"
        return text + "."
    except (TypeError, ValueError, OverflowError) as exc:
        return f"Camera settings not valid yet: {exc}"


def build_camera_panel(declared: dict[str, Any]) -> dict[str, gr.components.Component]:
    """The panel's widgets (from the Camera group's declarations), keyed by request field, plus
    "summary" (a Markdown line)."""
    with gr.Accordion("Camera", open=True, elem_id="camera"):
        gr.Markdown(HELP)
        with gr.Row():
            focal = widget(declared["focal_length_mm"], None, "focal-length", placeholder="off · 14, 24, 50, 85, 200")
            pitch = widget(declared["camera_pitch"], None, "pitch", placeholder="off · −60 … +60")
            strength = widget(declared["horizon_strength"], defaults(Camera)["horizon_strength"], "horizon-strength")
        with gr.Row():
            aperture = widget(declared["aperture_f_number"], None, "aperture", placeholder="off · 1.4, 1.8, 2.8, 8, 16")
            focus = widget(declared["focus_distance_m"], None, "focus-distance", placeholder="auto: the centre")
            spec = declared["dof_mode"]
            dof_mode = gr.Radio([(label, mode) for mode, label in DOF_MODES.items()], value=defaults(Camera)["dof_mode"],
                                label=spec.label,
                                elem_id="dof-mode")
        with gr.Row(equal_height=True):
            control = widget(declared["horizon_control"], False, "horizon-control")
            control_weight = widget(declared["horizon_control_weight"],
                                    defaults(HorizonControl)["horizon_control_weight"], "horizon-control-weight")
        summary = gr.Markdown(camera_summary(None, None, None, None, 1024, 1024), elem_id="camera-summary")
    return dict(camera_pitch=pitch, focal_length_mm=focal, aperture_f_number=aperture, focus_distance_m=focus,
                dof_mode=dof_mode, horizon_strength=strength, horizon_control=control,
                horizon_control_weight=control_weight, summary=summary)


def wire_camera_summary(widgets: dict[str, gr.components.Component], width: Any, height: Any) -> None:
    """Keep the summary line in step with the lens, tilt and size (no queue: it is arithmetic)."""
    inputs = [widgets[k] for k in ("focal_length_mm", "camera_pitch", "aperture_f_number", "focus_distance_m")]
    inputs += [width, height]
    for component in inputs:
        component.change(camera_summary, inputs, widgets["summary"], queue=False, api_visibility="private")



def wire_horizon_control(registry: Any, model: Any, widgets: dict[str, gr.components.Component]) -> None:
    """"Camera → horizon control" is offered only when the model's family has a depth ControlNet."""
    def offered(model_name: str) -> list:
        shown = bool(usable_controlnets(registry, registry.get(model_name), "depth"))
        return [gr.update(visible=shown), gr.update(visible=shown)]

    model.change(offered, model, [widgets["horizon_control"], widgets["horizon_control_weight"]],
                 queue=False, api_visibility="private")
