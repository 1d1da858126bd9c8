"""What every task that takes ControlNet units shares: which ControlNet each unit uses, its hint
at the output size, and the keyword arguments diffusers' ControlNet pipelines expect.

Single-condition ControlNets (one per control type) and ControlNet-Union models (one model for
several types, chosen per call by `control_mode`) cannot be mixed in one diffusers pipeline, so
units either all use single-condition ControlNets or all use Union models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.groups_control import ControlUnit, check_controlnet, pick_controlnet
from studio.results import ControlUnitDetails


@dataclass(frozen=True)
class Resolved:
    """A unit and the registry ControlNet that serves it."""

    unit: ControlUnit
    net: Any  # registry ModelEntry (role "controlnet")

    @property
    def mode(self) -> int | None:
        """The Union model's control_mode for this unit (None for a single-condition ControlNet)."""
        # (a Union unit always names its control type: check_controlnet refuses "none" for one)
        return self.net.control_modes[self.unit.control_type] if self.net.union else None

    @property
    def suffix(self) -> str:
        return "" if self.unit.index == 0 else f"_{self.unit.index + 1}"


def resolve_units(registry: Any, entry: Any, units: list[ControlUnit]) -> list[Resolved]:
    """The active units with their ControlNets; raises ValueError when they cannot share a pipeline."""
    resolved = []
    for u in (u for u in units if u.active):
        suffix = "" if u.index == 0 else f"_{u.index + 1}"
        if u.model:
            net = check_controlnet(registry, entry, u.model, u.control_type, f"controlnet_model{suffix}")
        else:
            net = pick_controlnet(registry, entry, u.control_type, suffix)
        resolved.append(Resolved(u, net))
    if len({r.net.union for r in resolved}) > 1:
        named = ", ".join(f"{r.net.name} ({'Union' if r.net.union else 'single-condition'})" for r in resolved)
        raise ValueError(f"Stacked units must all use single-condition ControlNets or all ControlNet-Union models "
                         f"(diffusers runs one kind per pipeline), got {named}: choose the ControlNet of each unit")
    return resolved


def make_hints(resolved: list[Resolved], width: int, height: int, lease: Any, on_step: Any, total: int) -> list:
    """Every unit's hint (make_hint), saying which one is being made: depth and line art run a
    model, which takes a moment. A Stop pressed meanwhile ends the job before it generates."""
    from studio.results import StepEvent, Stopped

    out = []
    for r in resolved:
        what = "your hint" if r.unit.hint is not None else f"the {r.unit.control_type} hint"
        if on_step is not None and on_step(StepEvent(0, total, message=f"Preparing {what} of unit {r.unit.index + 1}…")):
            raise Stopped("Stopped while preparing the hints; nothing was made.")
        out.append(make_hint(r.unit, width, height, lease))
    return out


def make_hint(unit: ControlUnit, width: int, height: int, lease: Any) -> Any:
    """The unit's hint at width × height: its own hint as given, else its image preprocessed by its
    control type at about the output's resolution (A1111's "pixel perfect"), then resized by the
    unit's resize rule."""
    from studio import hints

    if unit.hint is not None:
        return hints.prepare_hint(unit.hint, width, height, unit.resize_mode)
    source = preprocess_size(unit.image.convert("RGB"), width * height)
    if unit.control_type == "canny":
        hint = hints.canny_hint(source, unit.low_threshold, unit.high_threshold)
    elif unit.control_type == "depth":
        _, estimator = lease.depth_estimator()
        hint = hints.depth_hint_from_image(estimator, source)
    elif unit.control_type == "lineart":
        _, detector = lease.annotator("lineart")
        hint = hints.lineart_hint(detector, source)
    else:
        hint = source
    return hints.prepare_hint(hint, width, height, unit.resize_mode)


def preprocess_size(image: Any, area: int) -> Any:
    """`image` scaled (keeping its aspect) to about `area` pixels: edges and depth are found at the
    resolution the ControlNet will see, so thin lines neither vanish nor thicken when resized."""
    from PIL import Image

    scale = (area / (image.width * image.height)) ** 0.5
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def control_kwargs(resolved: list[Resolved], hints: list[Any], hint_argument: str) -> dict[str, Any]:
    """diffusers' ControlNet arguments: `hint_argument` is "image" for text-to-image ControlNet
    pipelines and "control_image" for the image-to-image and inpainting ones (Union pipelines
    always take "control_image" and a `control_mode` per unit)."""
    units = [r.unit for r in resolved]
    one = len(resolved) == 1
    kwargs: dict[str, Any] = {
        # floats: diffusers refuses an int weight (a preset or an API caller may send 1)
        "controlnet_conditioning_scale": float(units[0].scale) if one else [float(u.scale) for u in units],
        "control_guidance_start": float(units[0].start) if one else [float(u.start) for u in units],
        "control_guidance_end": float(units[0].end) if one else [float(u.end) for u in units],
    }
    if resolved[0].net.union:
        kwargs.update(control_image=list(hints), control_mode=[r.mode for r in resolved])
    else:
        kwargs[hint_argument] = hints[0] if one else list(hints)
    return kwargs


def unit_details(resolved: list[Resolved], hints: list[Any]) -> list[ControlUnitDetails]:
    return [ControlUnitDetails(unit=r.unit.index, control_type=r.unit.control_type, controlnet=r.net.name,
                               repo_id=r.net.repo_id, control_mode=r.mode, weight=r.unit.scale,
                               guidance_start=r.unit.start, guidance_end=r.unit.end, resize_mode=r.unit.resize_mode,
                               hint_given=r.unit.hint is not None, hint_size=list(h.size))
            for r, h in zip(resolved, hints)]
