"""The presets panel: pick, save, import, export, share a link, and restore settings from a PNG.

Every way in goes through the same check (`_checked`): the settings are merged over the current
widget values and validated as a full request first, so a rejected preset changes nothing.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from studio import presets as P
from studio.metadata import read_png_settings
from studio.pipelines.txt2img import REQUEST_FIELDS, Txt2ImgRequest
from studio.ui.txt2img import Txt2ImgWidgets, aspect_for, make_request, widget_values


class PresetStore:
    """Shipped presets plus the user's folder (which wins on equal names)."""

    def __init__(self, registry: Any, user_dir: Path, shipped_dir: Path = P.SHIPPED_DIR):
        self.registry, self.user_dir, self.shipped_dir = registry, Path(user_dir), Path(shipped_dir)

    def names(self) -> list[str]:
        return sorted(P.list_presets(self.shipped_dir, self.user_dir))

    def get(self, name: str) -> P.Preset:
        path = P.list_presets(self.shipped_dir, self.user_dir).get(name)
        if path is None:
            raise ValueError(f"unknown preset {name!r}; expected one of {self.names()}")
        return P.load_preset(path, self.registry)

    def save(self, preset: P.Preset, overwrite: bool = False) -> Path:
        path = P.preset_path(self.user_dir, preset.name)
        if path.exists() and not overwrite:
            raise ValueError(f"a preset named {preset.name!r} already exists in {self.user_dir}; pick another name")
        return P.save_preset(preset, self.user_dir)

    def resolve(self, preset: str) -> P.Preset:
        """A preset given by name, or as JSON text."""
        text = preset.strip() if isinstance(preset, str) else ""
        return P.parse_preset(text, self.registry) if text.startswith("{") else self.get(preset)


def _checked(registry: Any, current: dict[str, Any], updates: dict[str, Any], keep: tuple = ("prompt", "negative_prompt")):
    """`current` with `updates` applied, validated as a request. None in `updates` keeps the
    current value for the fields in `keep` (a preset's null prompts) and means "default" elsewhere."""
    merged = {**current, **{k: v for k, v in updates.items() if v is not None or k not in keep}}
    request = make_request(merged)
    request.validate(registry.get(request.model))
    return request


def model_defaults(registry: Any, model: str) -> dict[str, Any]:
    """Full settings for `model` from its registry defaults (what a preset is applied over in the API)."""
    d = registry.get(model).defaults
    request = Txt2ImgRequest(prompt="", width=d.width, height=d.height, num_inference_steps=d.num_inference_steps,
                             guidance_scale=d.guidance_scale, scheduler=d.scheduler, model=model)
    return dataclasses.asdict(request)


def build_preset_api(store: PresetStore) -> None:
    """Public endpoints: /presets, /preset and /apply_preset."""
    registry = store.registry

    def presets() -> list[dict]:
        """Every preset: name, description, model, and whether it ships with Studio or is the user's."""
        out = []
        for name, path in P.list_presets(store.shipped_dir, store.user_dir).items():
            try:
                p = store.get(name)
            except ValueError:
                continue  # a broken file in the user's folder is skipped, not fatal for the list
            source = "user" if path.parent.resolve() == store.user_dir.resolve() else "shipped"
            out.append({"name": p.name, "description": p.description, "model": p.model, "source": source})
        return sorted(out, key=lambda p: p["name"])

    def preset(name: str) -> dict:
        """The preset called `name`, as its JSON document."""
        try:
            return store.get(name).model_dump()
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

    def apply_preset(preset: str) -> dict:
        """The full text-to-image settings a preset (a name, or preset JSON text) fills in."""
        try:
            p = store.resolve(preset)
            return dataclasses.asdict(_checked(registry, model_defaults(registry, p.model), p.settings()))
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"Preset not applied: {exc}") from exc

    for fn in (presets, preset, apply_preset):
        gr.api(fn, api_name=fn.__name__, queue=False)


def build_presets_panel(demo: gr.Blocks, manager: Any, widgets: Txt2ImgWidgets, store: PresetStore) -> None:
    registry = manager.registry
    fields = list(widgets.fields.values())
    filled = [*fields, widgets.aspect]

    with gr.Row(equal_height=True):
        picker = gr.Dropdown(store.names(), value=None, label="Preset", elem_id="preset-picker", scale=4)
        upload = gr.UploadButton("Import preset", file_types=[".json"], elem_id="import-preset", scale=1)
        export = gr.Button("Export preset", elem_id="export-preset", scale=1)
        share = gr.Button("Share link", elem_id="share-preset", scale=1)
    status = gr.Markdown(elem_id="preset-status")
    with gr.Accordion("Save a preset · restore settings from a PNG · files and links", open=False, elem_id="preset-tools") as tools:
        with gr.Row(equal_height=True):
            save_name = gr.Textbox(label="Save current settings as", placeholder="My look", elem_id="preset-name", scale=3)
            include_prompts = gr.Checkbox(True, label="Include prompts")
            save = gr.Button("Save preset", elem_id="save-preset")
        with gr.Row():
            png = gr.File(label="Drop a PNG to restore its settings", file_types=[".png"], height=140, elem_id="png-settings")
            exported = gr.File(label="Exported preset", interactive=False, height=140, elem_id="exported-preset")
        link = gr.Textbox(label="Share link", buttons=["copy"], elem_id="share-link")

    def fill(current_values: tuple, updates: dict[str, Any], message: str) -> list:
        try:
            request = _checked(registry, dict(zip(REQUEST_FIELDS, current_values)), updates)
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"{message.split(':')[0]} not applied: {exc}") from exc
        aspect = aspect_for(registry.get(request.model), request.width, request.height)
        return [*widget_values(request), aspect, message]

    def pick(name, *current):
        if not name:
            return [gr.update()] * (len(filled) + 1)
        try:
            preset = store.get(name)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        return fill(current, preset.settings(), f"Applied preset **{preset.name}**. {preset.description}")

    def from_png(file, *current):
        if file is None:
            return [gr.update()] * (len(filled) + 1)
        try:
            settings, source = read_png_settings(file)
        except ValueError as exc:
            raise gr.Error(f"Settings not loaded from the image: {exc}") from exc
        notes = []
        if "model" in settings and settings["model"] not in registry.names("base"):
            notes.append(f"its model {settings.pop('model')!r} is not in Studio's registry, so the current model is kept")
        message = f"Loaded the settings of an image made by {'Studio' if source == 'studio' else 'AUTOMATIC1111 or a compatible tool'}."
        return fill(current, settings, " ".join([message, *(f"Note: {n}." for n in notes)]))

    def current_preset(current, name="Shared settings", include=True) -> P.Preset:
        request = make_request(dict(zip(REQUEST_FIELDS, current)))
        request.validate(registry.get(request.model))
        return P.preset_from_request(request, name=name, author="", include_prompts=include)

    def save_current(name, include, *current):
        try:
            path = store.save(current_preset(current, name.strip() if isinstance(name, str) else name, include))
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"Preset not saved: {exc}") from exc
        return gr.update(choices=store.names(), value=None), f"Saved preset **{path.stem}** to `{path}`."

    def import_file(file, *current):
        try:
            preset = P.load_preset(Path(file), registry)
            store.save(preset)
        except (ValueError, OSError) as exc:
            raise gr.Error(f"Preset not imported: {exc}") from exc
        return [*fill(current, preset.settings(), f"Imported and applied preset **{preset.name}**."),
                gr.update(choices=store.names(), value=None)]

    def export_current(*current):
        try:
            preset = current_preset(current, name="Studio preset")
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"Preset not exported: {exc}") from exc
        folder = Path(tempfile.mkdtemp(prefix="studio-preset-"))
        path = folder / "studio-preset.json"
        path.write_text(P.preset_json(preset), encoding="utf-8")
        return str(path), gr.update(open=True)

    def share_link(request: gr.Request, *current):
        try:
            token = P.share_token(current_preset(current))
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"No link made: {exc}") from exc
        # The page the user is on (behind proxies and Spaces too), without its own query.
        headers = getattr(request, "headers", {}) or {}
        base = (headers.get("referer") or f"http://{headers.get('host', '127.0.0.1:7860')}/").split("?")[0]
        return f"{base}?preset={token}", gr.update(open=True)

    def from_link(request: gr.Request, *current):
        token = dict(getattr(request, "query_params", {}) or {}).get("preset")
        if not token:
            return [gr.update()] * (len(filled) + 1)
        try:
            preset = P.preset_from_token(token, registry)
        except ValueError as exc:
            return [gr.update()] * len(filled) + [f"The link's preset was not applied: {exc}"]
        return fill(current, preset.settings(), f"Applied the shared preset **{preset.name}**.")

    # Queued, so that a gr.Error reaches the page as a message (Gradio shows none for queue=False).
    private = dict(api_visibility="private")
    picker.input(pick, [picker, *fields], [*filled, status], **private)
    png.upload(from_png, [png, *fields], [*filled, status], **private)
    save.click(save_current, [save_name, include_prompts, *fields], [picker, status], **private)
    upload.upload(import_file, [upload, *fields], [*filled, status, picker], **private)
    export.click(export_current, fields, [exported, tools], **private)
    share.click(share_link, fields, [link, tools], **private)
    demo.load(from_link, fields, [*filled, status], **private)
