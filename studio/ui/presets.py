"""The presets panel: pick, save, import, export, share a link, and restore settings from a PNG,
for any tab. It talks to tabs through their `Tab` interface only.

Every way in goes through `Filler.fill`: the settings are merged over the current widget values
of the preset's tab and validated as a full request first, so a rejected preset changes nothing;
then that tab is filled and shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio import presets as P
from studio.fields import specs
from studio.metadata import read_png_settings
from studio.owners import Owners
from studio.tasks import task as task_named
from studio.ui.tab import Tab, bucket_table
from studio.ui.widgets import parse


class PresetStore:
    """Shipped presets plus the user's folder (which wins on equal names). `owner` (studio.owners)
    picks the user's folder: the folder itself when presets are shared, else the owner's own."""

    def __init__(self, registry: Any, user_dir: Path, shipped_dir: Path = P.SHIPPED_DIR, owners: Any = None):
        self.registry, self.user_dir, self.shipped_dir = registry, Path(user_dir), Path(shipped_dir)
        self.owners = owners or Owners()

    def folder(self, owner: str | None = None) -> Path:
        return self.owners.folder(self.user_dir, owner)

    def paths(self, owner: str | None = None) -> dict[str, Path]:
        return P.list_presets(self.shipped_dir, self.folder(owner))

    def names(self, owner: str | None = None) -> list[str]:
        return sorted(self.paths(owner))

    def get(self, name: str, owner: str | None = None) -> P.PresetBase:
        path = self.paths(owner).get(name) if isinstance(name, str) else None
        if path is None:
            raise ValueError(f"unknown preset {name!r:.100}; expected one of {self.names(owner)}")
        return P.load_preset(path, self.registry)

    def save(self, preset: P.PresetBase, overwrite: bool = False, owner: str | None = None) -> Path:
        folder = self.folder(owner)
        path = P.preset_path(folder, preset.name)
        if path.exists() and not overwrite:
            where = f" in {folder}" if owner is None else ""  # a visitor is not shown the server's folders
            raise ValueError(f"a preset named {preset.name!r} already exists{where}; pick another name")
        return P.save_preset(preset, folder)

    def resolve(self, preset: str, owner: str | None = None) -> P.PresetBase:
        """A preset given by name, or as JSON text."""
        text = preset.strip() if isinstance(preset, str) else ""
        return P.parse_preset(text, self.registry) if text.startswith("{") else self.get(preset, owner)


def nearest_bucket(entry: Any, width: Any, height: Any) -> tuple[int, int]:
    """The model's bucket closest in aspect ratio to width × height."""
    ratio = width / height if isinstance(width, int) and isinstance(height, int) and height else 1.0
    return min(bucket_table(entry).values(), key=lambda wh: abs(wh[0] / wh[1] - ratio))


class Filler:
    """Fills one tab from settings (a preset's, a PNG's) and shows that tab."""

    def __init__(self, manager: Any, tabs: list[Tab], selector: gr.Tabs, active: gr.State):
        self.manager, self.registry, self.tabs = manager, manager.registry, {t.task.name: t for t in tabs}
        self.inputs = [w for t in tabs for w in t.fields.values()]
        self.outputs = [o for t in tabs for o in t.outputs] + [selector, active]

    def current(self, values: tuple, task_name: str) -> dict[str, Any]:
        """The request values a tab's widgets show now (its input image aside)."""
        offset = 0
        for name, tab in self.tabs.items():
            if name == task_name:
                declared = specs(tab.task.request)
                raw = dict(zip(tab.fields, values[offset:offset + len(tab.fields)]))
                return {n: None if declared[n].kind == "image" else parse(declared[n], v) for n, v in raw.items()}
            offset += len(tab.fields)
        raise ValueError(f"no tab for task {task_name!r}")

    def request(self, values: tuple, task_name: str, settings: dict[str, Any]) -> tuple[Any, list[str]]:
        """The request the settings make over the tab's current values, validated, and notes on
        what was kept (a model that cannot load now)."""
        request_type, notes = task_named(task_name).request, []
        current = self.current(values, task_name)
        settings = dict(settings)
        model = settings.get("model")
        reason = self.manager.available(model) if model else None
        if reason is not None:
            settings["model"] = None
            entry = self.registry.get(current["model"])
            lo, hi = entry.size_range
            if not all(isinstance(settings.get(k), int) and lo <= settings[k] <= hi for k in ("width", "height")):
                settings["width"], settings["height"] = nearest_bucket(entry, settings.get("width"), settings.get("height"))
            notes.append(f"it needs model {model!r}, which is not available now ({reason}), so the current "
                         f"model {current['model']!r} is kept, at {settings['width']}×{settings['height']}")
        request = request_type(**P.merge_settings(request_type, current, settings, self.registry))
        request.validate(self.registry, inputs=False)
        return request, notes

    def fill(self, values: tuple, task_name: str, settings: dict[str, Any], message: str) -> list:
        """Updates for `outputs` (and the status message) that show the settings in their tab."""
        try:
            request, notes = self.request(values, task_name, settings)
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"{message.split(':')[0]} not applied: {exc}", print_exception=False) from exc
        updates: list = []
        for name, tab in self.tabs.items():
            updates += tab.fill(request, self.registry) if name == task_name else [gr.update()] * len(tab.outputs)
        text = " ".join([message, *(f"Note: {n}." for n in notes)])
        return [*updates, gr.Tabs(selected=task_name), task_name, text]

    def unchanged(self) -> list:
        return [gr.update()] * (len(self.outputs) + 1)

    def from_png(self, path: str, values: tuple) -> list:
        """Fill the right tab from a PNG made by Studio or by A1111-compatible tools."""
        try:
            task_name, settings, source = read_png_settings(path)
        except ValueError as exc:
            raise gr.Error(f"Settings not loaded from the image: {exc}", print_exception=False) from exc
        notes = []
        if "model" in settings and settings["model"] not in self.registry.names("base", task=task_named(task_name).request.needs()):
            notes.append(f"its model {settings.pop('model')!r} is not in Studio's registry, so the current model is kept")
        maker = "Studio" if source == "studio" else "AUTOMATIC1111 or a compatible tool"
        message = " ".join([f"Loaded the settings of an image made by {maker}.", *(f"Note: {n}." for n in notes)])
        return self.fill(values, task_name, settings, message)


def build_preset_api(store: PresetStore) -> None:
    """Public endpoints: /presets, /preset and /apply_preset."""
    registry = store.registry

    def presets(request: gr.Request) -> list[dict]:
        """Every preset: name, task, description, model, and whether it ships with Studio or is the user's."""
        owner, out = store.owners.of(request), []
        for name, path in store.paths(owner).items():
            try:
                p = store.get(name, owner)
            except ValueError:
                continue  # a broken file in the user's folder is skipped, not fatal for the list
            source = "user" if path.parent.resolve() == store.folder(owner).resolve() else "shipped"
            out.append({"name": p.name, "task": p.task, "description": p.description, "model": p.model,
                        "source": source})
        return sorted(out, key=lambda p: p["name"])

    def preset(name: str, request: gr.Request) -> dict:
        """The preset called `name`, as its JSON document."""
        try:
            return store.get(name, store.owners.of(request)).model_dump()
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    def apply_preset(preset: str, request: gr.Request) -> dict:
        """The full settings a preset (a name, or preset JSON text) fills in, ready for its task's endpoint."""
        try:
            settings = P.preset_request(store.resolve(preset, store.owners.of(request)), registry)
            settings.validate(registry, inputs=False)
            return settings.record()
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"Preset not applied: {exc}", print_exception=False) from exc

    for fn in (presets, preset, apply_preset):
        gr.api(fn, api_name=fn.__name__, queue=False)
