"""Field groups for ControlNet control units (declared once, like studio/groups.py), and the rules
that match a unit to a ControlNet of the registry.

A unit's fields are generated for each unit by `control_unit_group`, the second unit's names
suffixed "_2"; each unit keeps its own preset section ("control", "control_2")."""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from typing import Any, ClassVar

from studio.fields import Request, field
from studio.images import RESIZE_MODES

# The preprocessors that turn a control image into a hint (studio/hints.py); "none": it is one.
CONTROL_TYPES = ("depth", "canny", "lineart", "none")
OPTIONAL_MODEL = r"^([a-z0-9][a-z0-9._-]*)?$"  # a registry name, or empty for "pick for me"


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit's values, read from a request's fields with that unit's suffix."""

    index: int  # 0, 1: as A1111 numbers its units in infotext ("ControlNet 0")
    image: Any  # the control image (a photo to preprocess), or None
    hint: Any  # a ready-made or edited hint, used as it is; None: made from `image`
    control_type: str
    model: str  # a registry ControlNet; "" picks one for the type and the model's family
    scale: float
    start: float
    end: float
    resize_mode: str
    low_threshold: int
    high_threshold: int

    @property
    def active(self) -> bool:
        return self.image is not None or self.hint is not None


def control_unit_group(suffix: str, index: int, essential: bool) -> type:
    """The field group of ControlNet unit `index`: the same fields, their names suffixed ("_2")
    for the second unit, kept in their own preset section ("control", "control_2"). Without an
    image (and a hint) the unit is off."""
    s = suffix
    declared = {
        "control_image": field(None, "Control image", "image", optional=True, record=False, essential=essential,
                               help="A photo to make the hint from (or, with control type 'none', the hint itself)."),
        "control_hint": field(None, "Hint", "image", optional=True, record=False,
                              help="A ready-made or edited hint; used as it is instead of preprocessing."),
        "control_type": field("depth" if index == 0 else "canny", "Control type", "choice", choices=CONTROL_TYPES,
                              key="type", help="depth: estimated depth (near is bright); canny: OpenCV edges; "
                                               "lineart: a learned line detector; none: the image is the hint."),
        "controlnet_model": field("", "ControlNet", "text", hi=100, pattern=OPTIONAL_MODEL, key="model",
                                  help="Empty: the first ControlNet of the model's family for this control type."),
        "controlnet_conditioning_scale": field(1.0, "Control weight", "float", lo=0, hi=2, step=0.05, key="weight",
                                               help="0: no control; 1: as trained; up to 2: stricter."),
        "control_guidance_start": field(0.0, "Control start", "float", lo=0, hi=1, step=0.01, key="guidance_start",
                                        help="Fraction of the steps after which the control begins."),
        "control_guidance_end": field(1.0, "Control end", "float", lo=0, hi=1, step=0.01, key="guidance_end",
                                      help="Fraction of the steps after which the control stops."),
        "control_resize_mode": field("crop and resize", "Hint resize mode", "choice", choices=RESIZE_MODES,
                                     key="resize_mode", help="How the hint meets the output size; 'resize and "
                                     "fill' pads with black (no control there)."),
        "canny_low_threshold": field(100, "Canny low threshold", "int", lo=1, hi=255, step=1, key="canny_low"),
        "canny_high_threshold": field(200, "Canny high threshold", "int", lo=1, hi=255, step=1, key="canny_high"),
    }

    def unit(self) -> ControlUnit:
        v = {name: getattr(self, name + s) for name in declared}
        return ControlUnit(index, v["control_image"], v["control_hint"], v["control_type"], v["controlnet_model"],
                           v["controlnet_conditioning_scale"], v["control_guidance_start"], v["control_guidance_end"],
                           v["control_resize_mode"], v["canny_low_threshold"], v["canny_high_threshold"])

    def check(self, registry: Any, entry: Any) -> None:
        u = unit(self)
        if not u.start < u.end:
            raise ValueError(f"Control start (control_guidance_start{s}) must be below Control end "
                             f"(control_guidance_end{s}), got {u.start:g} and {u.end:g}")
        if u.low_threshold > u.high_threshold:
            raise ValueError(f"Canny low threshold (canny_low_threshold{s}) must not exceed the high threshold "
                             f"(canny_high_threshold{s}), got {u.low_threshold} and {u.high_threshold}")
        if u.model:
            check_controlnet(registry, entry, u.model, u.control_type, f"controlnet_model{s}")
        elif u.active:
            pick_controlnet(registry, entry, u.control_type, s)

    fields = [(name + s, Any, f) for name, f in declared.items()]
    return make_dataclass(f"ControlUnit{index}", fields, bases=(Request,), frozen=True, kw_only=True,
                          namespace={"SECTION": "control" + s, "check": check, f"control_unit{s}": unit})


def same_kind(entry: Any, other: Any) -> bool:
    """Built-in test models (random, tiny) pair only with built-in add-ons, real ones with real
    ones: their layers have other sizes even within a family."""
    return bool(entry.builtin) == bool(other.builtin)


def usable_controlnets(registry: Any, entry: Any, control_type: str | None = None) -> list:
    """The ControlNets that can steer model `entry`: its family's, of its kind (see same_kind)."""
    return [m for m in registry.controlnets(entry.family, control_type) if same_kind(entry, m)]


def check_controlnet(registry: Any, entry: Any, name: str, control_type: str, field_name: str) -> Any:
    """The registry entry of ControlNet `name`, which must suit `entry`'s family and the control type."""
    choices = [m.name for m in usable_controlnets(registry, entry)]
    if name not in [m.name for m in registry.models]:
        raise ValueError(f"ControlNet ({field_name}) must be one of {choices}, got {name!r:.100}")
    net = registry.get(name)
    if net.role != "controlnet":
        raise ValueError(f"ControlNet ({field_name}) must be a ControlNet, one of {choices}; got {name!r} "
                         f"(role {net.role!r})")
    if net.family != entry.family:
        raise ValueError(f"ControlNet ({field_name}) {name!r} is for {net.family!r} models, but {entry.name!r} is "
                         f"{entry.family!r}; pick one of {choices}")
    if not same_kind(entry, net):
        raise ValueError(f"ControlNet ({field_name}) {name!r} does not fit {entry.name!r}: built-in test models "
                         f"take only built-in ControlNets and real models real ones; pick one of {choices}")
    if control_type == "none" and net.union:
        raise ValueError(f"ControlNet ({field_name}) {name!r} is a Union model, which must be told what a hint shows: "
                         f"choose the control type it is (one of {net.control_types}) and give your ready-made hint "
                         f"as the Hint (control_hint{field_name.removeprefix('controlnet_model')})")
    if control_type != "none" and control_type not in net.control_types:
        raise ValueError(f"ControlNet ({field_name}) {name!r} takes {net.control_types} hints, not {control_type!r}")
    return net


def pick_controlnet(registry: Any, entry: Any, control_type: str, suffix: str = "") -> Any:
    """The ControlNet a unit uses when none is named: the family's first for the control type."""
    if control_type == "none":
        raise ValueError(f"Control type 'none' (control_type{suffix}) uses your image as the hint, so Studio cannot "
                         f"tell which ControlNet it is for: choose one in ControlNet (controlnet_model{suffix}), one "
                         f"of {[m.name for m in usable_controlnets(registry, entry)]}")
    found = usable_controlnets(registry, entry, control_type)
    if not found:
        raise ValueError(f"Control type ({'control_type' + suffix}) {control_type!r} needs a ControlNet that fits "
                         f"{entry.name!r} ({entry.family}), and the registry has none; types it has ControlNets for: "
                         f"{sorted({t for m in usable_controlnets(registry, entry) for t in m.control_types})}")
    return found[0]


FirstControlUnit = control_unit_group("", 0, essential=True)
SecondControlUnit = control_unit_group("_2", 1, essential=False)
OptionalControlUnit = control_unit_group("", 0, essential=False)  # inpainting: a unit if you want one


@dataclass(frozen=True, kw_only=True)
class HorizonControl(Request):
    """The camera's pitch and focal length drive a depth ControlNet with the depth of a level ground
    plane seen from that camera (studio/hints.ground_plane_hint), so the horizon is where the
    geometry puts it, enforced during sampling and not only by the starting noise."""

    SECTION: ClassVar[str] = "camera"
    horizon_control: bool = field(False, "Camera → horizon control", "bool",
                                  help="Needs a pitch and a depth ControlNet for the model's family.")
    horizon_control_weight: float = field(0.6, "Horizon control weight", "float", lo=0, hi=2, step=0.05,
                                          help="How strictly the ground plane's depth is followed.")

    def check(self, registry: Any, entry: Any) -> None:
        if not self.horizon_control:
            return
        if getattr(self, "camera_pitch", None) is None:
            raise ValueError("Camera → horizon control (horizon_control) needs a pitch: set Pitch (camera_pitch), "
                             "0 for a level camera")
        if not usable_controlnets(registry, entry, "depth"):
            raise ValueError(f"Camera → horizon control (horizon_control) needs a depth ControlNet that fits "
                             f"{entry.name!r} ({entry.family}), and the registry has none")


@dataclass(frozen=True, kw_only=True)
class OptionalInitImage(Request):
    """An optional starting image (ControlNet image-to-image); without it the unit works from noise."""

    init_image: Any = field(None, "Initial image", "image", optional=True, record=False,
                            help="Optional: start from this image (image-to-image) instead of noise.")
    strength: float = field(0.75, "Denoising strength", "float", lo=0, hi=1, step=0.01, infotext="Denoising strength",
                            help="With an initial image: 0 keeps it, 1 repaints it entirely.")

    def check(self, registry: Any, entry: Any) -> None:
        steps = getattr(self, "num_inference_steps", 1)
        if self.init_image is not None and int(steps * self.strength) < 1:
            raise ValueError(f"Denoising strength (strength) × Steps must leave at least one step to run, got "
                             f"{self.strength:g} × {steps} = {steps * self.strength:g}; raise either")
