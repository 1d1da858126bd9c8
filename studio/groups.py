"""Reusable field groups: each request field of every task is declared here, once.

A task's request composes the groups it needs (studio/pipelines/<task>.py). A group's SECTION
is where its fields live in a preset: None for the task's own section ("txt2img", ...), "" for
the top level, or a named section ("style", "camera") shared by every task that has the group.
A group may define `check(self, registry, entry)` for rules that involve several fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from studio.fields import Request, defaults, field
from studio.groups_control import OPTIONAL_MODEL, same_kind
from studio.images import RESIZE_MODES
from studio.schedulers import SCHEDULERS

MAX_SEED = 2**32 - 1  # seeds as A1111 shows them; -1 asks for a random one
Pair = tuple[int, int]
DOF_MODES = {"lens": "lens blur from estimated depth", "prompt": "prompt words only (no depth model)"}
MODEL_NAME = r"^[a-z0-9][a-z0-9._-]*$"  # a registry name, never a URL or a path


@dataclass(frozen=True, kw_only=True)
class Prompt(Request):
    prompt: str = field("", "Prompt", "text", hi=20000, essential=True, keep_if_null=True,
                        help="What to draw. Longer than 75 tokens is fine: it is encoded in windows, as in A1111.")
    negative_prompt: str = field("", "Negative prompt", "text", hi=20000, keep_if_null=True,
                                 help="What to keep out of the image.")


@dataclass(frozen=True, kw_only=True)
class Size(Request):
    width: int = field(1024, "Width", "int", lo=64, hi=2048, multiple_of=8, step=8, sized=True, from_model=True,
                       infotext="Size")
    height: int = field(1024, "Height", "int", lo=64, hi=2048, multiple_of=8, step=8, sized=True, from_model=True,
                        infotext="Size")


@dataclass(frozen=True, kw_only=True)
class Sampler(Request):
    num_inference_steps: int = field(30, "Steps", "int", lo=1, hi=150, step=1, from_model=True, infotext="Steps")
    guidance_scale: float = field(6.0, "Guidance scale", "float", lo=0, hi=30, step=0.5, from_model=True,
                                  infotext="CFG scale", help="How strictly to follow the prompt (0: ignore it).")
    seed: int = field(-1, "Seed", "int", lo=-1, hi=MAX_SEED, infotext="Seed",
                      help="-1 picks a random seed; image i of a batch uses seed + i.")
    batch_size: int = field(1, "Batch size", "int", lo=1, hi=8, step=1, infotext="Batch size")
    scheduler: str = field("DPM++ 2M Karras", "Sampler", "choice", choices=tuple(SCHEDULERS), from_model=True,
                           infotext="Sampler")


@dataclass(frozen=True, kw_only=True)
class Model(Request):
    SECTION: ClassVar[str] = ""  # top level of a preset
    model: str = field("sdxl-base", "Model", "text", hi=100, pattern=MODEL_NAME, infotext="Model", keep_if_null=True)


@dataclass(frozen=True, kw_only=True)
class Style(Request):
    """A named style (Fooocus-like): the prompt goes where {prompt} is, the negatives are joined."""

    SECTION: ClassVar[str] = "style"
    style_prompt: str = field("{prompt}", "Style prompt", "text", hi=4000, key="prompt",
                              help="{prompt} is replaced by your prompt.")
    style_negative_prompt: str = field("", "Style negative prompt", "text", hi=4000, key="negative_prompt",
                                       help="Added to your negative prompt.")
    style_name: str = field("", "Style", "text", hi=64, key="name",
                            help="Pick a style from the library; it fills the two boxes below.")

    def check(self, registry: Any, entry: Any) -> None:
        if "{prompt}" not in self.style_prompt:
            raise ValueError(f"Style prompt (style_prompt) must contain the placeholder {{prompt}}, "
                             f"got {self.style_prompt!r}")

    def styled_prompts(self) -> tuple[str, str]:
        """The prompt and negative prompt the model sees once the style is applied: {prompt}
        replaced by the user's, the style's negative prompt and the user's joined (style first)."""
        prompt = self.style_prompt.replace("{prompt}", self.prompt)
        negative = ", ".join(p for p in (self.style_negative_prompt, self.negative_prompt) if p)
        return prompt, negative


@dataclass(frozen=True, kw_only=True)
class Loras(Request):
    """LoRAs from the user's library (or the registry's), by name and weight: in this field, or as
    A1111's <lora:name:weight> tags in the prompt. The model lease loads and applies them."""

    SECTION: ClassVar[str] = ""  # top level of a preset
    loras: str = field("", "LoRAs", "text", hi=2000, infotext=None,
                       help="name:weight, … from your LoRA library (or write <lora:name:weight> in the prompt)")

    def check(self, registry: Any, entry: Any) -> None:
        self.lora_stack()

    def lora_stack(self) -> tuple[str, list[tuple[str, float]]]:
        """(the prompt without its <lora:…> tags, [(name, weight)]): this field's LoRAs, then the tags'."""
        from studio.loras import parse_lora_list, parse_lora_tags

        try:
            listed = parse_lora_list(self.loras)
        except ValueError as exc:
            raise ValueError(f"LoRAs (loras) must be 'name:weight, name:weight', got {self.loras!r:.200}: "
                             f"{exc}") from None
        try:
            prompt, tagged = parse_lora_tags(self.prompt)
        except ValueError as exc:
            raise ValueError(f"Prompt (prompt) has a bad <lora:name:weight> tag: {exc}") from None
        if not tagged:
            prompt = self.prompt  # untouched: tidying commas and spaces would change what the model reads
        both = sorted({n for n, _ in listed} & {n for n, _ in tagged})
        if both:
            raise ValueError(f"LoRAs (loras) and the prompt's <lora:…> tags both name {', '.join(both)}; "
                             "give each LoRA once, in one place")
        return prompt, listed + tagged

    def with_lora_stack(self) -> tuple[Any, list[tuple[str, float]]]:
        """(this request with its prompt's tags moved into `loras`, the stack): the request as run,
        so its preset and PNG metadata name every LoRA in one place."""
        from studio.loras import format_lora_list

        prompt, stack = self.lora_stack()
        return self.replace(prompt=prompt, loras=format_lora_list(stack)), stack


PAIR = dict(lo=0, hi=8192)
PAIR_HELP = "height, width in pixels; empty: the image's own size"


@dataclass(frozen=True, kw_only=True)
class MicroConditioning(Request):
    """SDXL's size and crop conditioning, ordered as diffusers orders it: sizes (height, width),
    crop (top, left). None: the image's own size, or for negatives the positive value."""

    original_size: Pair | None = field(None, "Original size", "pair", optional=True, help=PAIR_HELP, **PAIR)
    crops_coords_top_left: Pair = field((0, 0), "Crop top-left", "pair", help="top, left in pixels", **PAIR)
    target_size: Pair | None = field(None, "Target size", "pair", optional=True, help=PAIR_HELP, **PAIR)
    negative_original_size: Pair | None = field(None, "Negative original size", "pair", optional=True, **PAIR)
    negative_crops_coords_top_left: Pair | None = field(None, "Negative crop top-left", "pair", optional=True, **PAIR)
    negative_target_size: Pair | None = field(None, "Negative target size", "pair", optional=True, **PAIR)
    micro_conditioning_power: float = field(0.0, "Cosine schedule power", "float", lo=0, hi=8, step=0.5,
                                            help="0: off. Larger powers let the metadata act later in sampling.")

    def check(self, registry: Any, entry: Any) -> None:
        changed = [n for n, default in defaults(MicroConditioning).items() if getattr(self, n) != default]
        if changed and not registry.family(entry.family).micro_conditioning:
            raise ValueError(f"{', '.join(changed)} need an SDXL-family model, got {entry.name!r} ({entry.family})")

    def micro_conditioning(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """(neutral, requested, negative neutral, negative requested) SDXL time ids."""
        from studio.pipelines.conditioning import time_ids

        size = (self.height, self.width)
        neutral = time_ids(size, (0, 0), size)
        requested = time_ids(self.original_size or size, self.crops_coords_top_left, self.target_size or size)
        negative = time_ids(self.negative_original_size or self.original_size or size,
                            self.negative_crops_coords_top_left or self.crops_coords_top_left,
                            self.negative_target_size or self.target_size or size)
        return neutral, requested, neutral, negative


@dataclass(frozen=True, kw_only=True)
class Camera(Request):
    """Camera controls (studio/camera.py, pipelines/camera.py). None turns a control off; the
    defaults are plain text-to-image. Focal length is full-frame equivalent (50 mm when only pitch
    or aperture is set); pitch is in degrees, positive looking up."""

    SECTION: ClassVar[str] = "camera"
    camera_pitch: float | None = field(None, "Pitch (°, + looks up)", "float", lo=-60, hi=60, optional=True)
    focal_length_mm: float | None = field(None, "Focal length (mm, full frame)", "float", lo=8, hi=800, optional=True)
    aperture_f_number: float | None = field(None, "Aperture (f-number)", "float", lo=0.7, hi=64, optional=True)
    focus_distance_m: float | None = field(None, "Focus distance (m)", "float", lo=0.1, hi=10000, optional=True,
                                           help="Empty: focus on what is at the centre.")
    dof_mode: str = field("lens", "Depth of field from", "choice", choices=tuple(DOF_MODES))
    horizon_strength: float = field(0.6, "Horizon layout strength", "float", lo=0, hi=2, step=0.05,
                                    help="How hard the starting noise is pushed to the horizon layout; 0: plain noise.")

    @property
    def focal_length(self) -> float:
        """The focal length the geometry uses (mm): the requested one, or a normal 50 mm lens."""
        return 50.0 if self.focal_length_mm is None else self.focal_length_mm

    def check(self, registry: Any, entry: Any) -> None:
        if self.focus_distance_m is not None and self.focus_distance_m * 1000 <= 2 * self.focal_length:
            raise ValueError(f"Focus distance (focus_distance_m) must be beyond twice the focal length "
                             f"({self.focal_length:g} mm), got {self.focus_distance_m!r}")

    def camera_words(self) -> tuple[list[str], list[str]]:
        """Prompt and negative words for the lens, tilt and depth of field."""
        from studio.camera import camera_terms

        return camera_terms(self.focal_length_mm, self.camera_pitch, self.aperture_f_number,
                            dof_from_prompt=self.dof_mode == "prompt")


def check_steps_run(request: Any) -> None:
    """diffusers runs int(steps · strength) of the schedule's last steps: at least one must remain."""
    steps = getattr(request, "num_inference_steps", 1)
    if int(steps * request.strength) < 1:
        raise ValueError(f"Denoising strength (strength) × Steps must leave at least one step to run, got "
                         f"{request.strength:g} × {steps} = {steps * request.strength:g}; raise either")


@dataclass(frozen=True, kw_only=True)
class InitImage(Request):
    """An input image that the model repaints (image-to-image; later inpainting and upscaling).

    The image itself is an input, not a setting: presets and PNG metadata do not keep it."""

    image: Any = field(None, "Image", "image", record=False, essential=True,
                       help="The picture to start from; it is resized to the output size by the resize mode.")
    strength: float = field(0.75, "Denoising strength", "float", lo=0, hi=1, step=0.01, infotext="Denoising strength",
                            help="How much to change: 0 keeps the image, 1 repaints it entirely.")
    resize_mode: str = field("crop and resize", "Resize mode", "choice", choices=RESIZE_MODES,
                             help="just resize: stretch; crop and resize: fill and crop the overflow; "
                                  "resize and fill: fit inside and extend the edges.")

    def check(self, registry: Any, entry: Any) -> None:
        check_steps_run(self)


# --- Inpainting and outpainting ------------------------------------------------------------------

MASKED_CONTENT = ("original", "fill", "latent noise")
INPAINT_MODEL_HELP = ("Empty: the model's own inpainting pipeline. Or an inpainting checkpoint, or a ControlNet-Union "
                      "model's repaint mode, of the same family.")


@dataclass(frozen=True, kw_only=True)
class Repaint(Request):
    """What inpainting and outpainting share: how hard and with which model the masked area is repainted."""

    strength: float = field(0.75, "Denoising strength", "float", lo=0, hi=1, step=0.01, infotext="Denoising strength",
                            help="How much the masked area changes: 0 keeps it, 1 repaints it entirely.")
    mask_blur: int = field(4, "Mask blur", "int", lo=0, hi=64, step=1, infotext="Mask blur",
                           help="Feathers the seam (Gaussian sigma in pixels); outside it every pixel stays yours.")
    inpaint_model: str = field("", "Inpainting model", "text", hi=100, pattern=OPTIONAL_MODEL, help=INPAINT_MODEL_HELP)

    def check(self, registry: Any, entry: Any) -> None:
        check_steps_run(self)
        if self.inpaint_model:
            if self.inpaint_model not in [m.name for m in registry.models]:
                raise ValueError(f"Inpainting model (inpaint_model) must be one of {inpaint_models(registry, entry)}, "
                                 f"got {self.inpaint_model!r:.100}")
            helper = registry.get(self.inpaint_model)
            union = helper.role == "controlnet" and "inpaint" in helper.control_types and helper.union
            if not (helper.role == "inpaint" or union) or helper.family != entry.family or not same_kind(entry, helper):
                choices = inpaint_models(registry, entry)
                raise ValueError(f"Inpainting model (inpaint_model) must be an inpainting checkpoint or a "
                                 f"ControlNet-Union model for {entry.name!r}, one of {choices}; got "
                                 f"{self.inpaint_model!r} (role {helper.role!r}, family {helper.family!r})")


def inpaint_models(registry: Any, entry: Any) -> list[str]:
    """Registry names usable as `inpaint_model` with model `entry`."""
    return [m.name for m in registry.models if m.family == entry.family and same_kind(entry, m) and (
        m.role == "inpaint" or (m.role == "controlnet" and m.union and "inpaint" in m.control_types))]


@dataclass(frozen=True, kw_only=True)
class InpaintMask(Request):
    """An image and the mask of what to repaint in it (white = repaint)."""

    image: Any = field(None, "Image", "image", record=False, essential=True, help="The picture to repaint part of.")
    mask: Any = field(None, "Mask", "image", record=False, essential=True,
                      help="White (or painted) = repaint. Alpha: painted where opaque; grey: thresholded at 128.")
    mask_grow: int = field(0, "Mask grow", "int", lo=-64, hi=64, step=1,
                           help="Grow (+) or shrink (−) the mask by this many pixels before blurring.")
    masked_content: str = field("original", "Masked content", "choice", choices=MASKED_CONTENT, help="What the model starts from under the mask: the "
                                "original, colours filled in from around it, or grey (pure noise at strength 1).")
    inpaint_only_masked: bool = field(False, "Only masked", "bool",
                                      help="Repaint a padded box around the mask at the model's full resolution "
                                           "and paste it back (A1111's 'inpaint at full resolution').")
    padding: int = field(32, "Only masked padding", "int", lo=0, hi=256, step=4,
                         help="Context around the mask in 'only masked' mode (pixels).")


@dataclass(frozen=True, kw_only=True)
class Extend(Request):
    """Outpainting: how many pixels to add on each side of the image."""

    image: Any = field(None, "Image", "image", record=False, essential=True, help="The picture to extend.")
    left: int = field(128, "Left", "int", lo=0, hi=2048, step=8, help="Pixels to add on the left.")
    right: int = field(128, "Right", "int", lo=0, hi=2048, step=8, help="Pixels to add on the right.")
    top: int = field(0, "Top", "int", lo=0, hi=2048, step=8, help="Pixels to add at the top.")
    bottom: int = field(0, "Bottom", "int", lo=0, hi=2048, step=8, help="Pixels to add at the bottom.")

    def check(self, registry: Any, entry: Any) -> None:
        if not any((self.left, self.right, self.top, self.bottom)):
            raise ValueError(f"Outpaint (left, right, top, bottom) must add at least one pixel, got "
                             f"{self.left}, {self.right}, {self.top}, {self.bottom}")
