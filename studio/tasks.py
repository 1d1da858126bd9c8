"""The task table: every tab's task by name, so shared code (presets, metadata, outputs, the app)
knows tasks only through it and never imports one task's request.

A new task is one request declaration and `run` in studio/pipelines/<task>.py, one tab in
studio/ui/<task>.py, and one row here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from studio.pipelines.controlnet import ControlNetRequest
from studio.pipelines.img2img import Img2ImgRequest
from studio.pipelines.inpaint import InpaintRequest
from studio.pipelines.outpaint import OutpaintRequest
from studio.pipelines.panorama import PanoramaRequest
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.pipelines.upscale import UpscaleRequest


@dataclass(frozen=True)
class Task:
    name: str  # also the preset section and the API endpoint (/txt2img)
    label: str  # the tab's title
    request: type  # the request dataclass, composed of field groups
    ui: str  # the module whose build_tab(...) builds the tab (imported by the UI layer only)

    def run(self, request: Any, models: Any, on_step: Any = None) -> Any:
        """The task's pipeline: studio.pipelines.<name>.run, imported when first used."""
        return importlib.import_module(f"studio.pipelines.{self.name}").run(request, models, on_step)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("txt2img", "Text to image", Txt2ImgRequest, "studio.ui.txt2img"),
    Task("img2img", "Image to image", Img2ImgRequest, "studio.ui.img2img"),
    Task("controlnet", "ControlNet", ControlNetRequest, "studio.ui.controlnet"),
    Task("inpaint", "Inpaint", InpaintRequest, "studio.ui.inpaint"),
    Task("outpaint", "Outpaint", OutpaintRequest, "studio.ui.outpaint"),
    Task("upscale", "Upscale", UpscaleRequest, "studio.ui.upscale"),
    Task("panorama", "360° Panorama", PanoramaRequest, "studio.ui.panorama"),
)}


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {name!r}")
    return TASKS[name]


def task_of(request: Any) -> Task:
    return task(type(request).TASK)
