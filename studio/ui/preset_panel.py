"""The presets panel above the tabs, and the history of this session's images below them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from studio import presets as P
from studio.tasks import task as task_named
from studio.ui.presets import Filler, PresetStore


def build_presets_panel(demo: gr.Blocks, filler: Filler, store: PresetStore, active: gr.State, loaded: Any) -> None:
    """`loaded`: the page-load event that tells `store.owners` whose page it is; the picker then lists
    that visitor's presets."""
    registry, owners = filler.registry, store.owners
    inputs = filler.inputs

    with gr.Row(equal_height=True):
        # Before the page is known: every saved preset when shared, the shipped ones when private
        first = store.names() if not owners.private else sorted(P.list_presets(store.shipped_dir))
        picker = gr.Dropdown(first, value=None, label="Preset", elem_id="preset-picker", scale=4)
        upload = gr.UploadButton("Import preset", file_types=[".json"], elem_id="import-preset", scale=1)
        export = gr.Button("Export preset", elem_id="export-preset", scale=1)
        share = gr.Button("Share link", elem_id="share-preset", scale=1)
    status = gr.Markdown(elem_id="preset-status")
    with gr.Accordion("Save a preset · restore settings from a PNG · files and links", open=False,
                      elem_id="preset-tools") as tools:
        with gr.Row(equal_height=True):
            save_name = gr.Textbox(label="Save current settings as", placeholder="My look", elem_id="preset-name", scale=3)
            include_prompts = gr.Checkbox(True, label="Include prompts")
            save = gr.Button("Save preset", elem_id="save-preset")
        with gr.Row():
            png = gr.File(label="Drop a PNG to restore its settings", file_types=[".png"], height=140,
                          elem_id="png-settings")
            exported = gr.File(label="Exported preset", interactive=False, height=140, elem_id="exported-preset")
        link = gr.Textbox(label="Share link", buttons=["copy"], elem_id="share-link")
    outputs = [*filler.outputs, status]

    def apply(preset: P.PresetBase, current: tuple, message: str) -> list:
        return filler.fill(current, preset.task, preset.settings(), message)

    def pick(request: gr.Request, name, *current):
        if not name:
            return filler.unchanged()
        try:
            preset = store.get(name, owners.of(request))
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        return apply(preset, current, f"Applied preset **{preset.name}**. {preset.description}")

    def from_png(file, *current):
        return filler.unchanged() if file is None else filler.from_png(file, current)

    def current_preset(current: tuple, task_name: str, name: str = "Shared settings", include: bool = True):
        request = task_named(task_name).request(**filler.current(current, task_name))
        request.validate(registry, inputs=False)
        return P.preset_from_request(request, name=name, author="", include_prompts=include)

    def save_current(request: gr.Request, name, include, task_name, *current):
        owner = owners.of(request)
        try:
            path = store.save(current_preset(current, task_name, name.strip() if isinstance(name, str) else name,
                                             include), owner=owner)
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"Preset not saved: {exc}", print_exception=False) from exc
        # a visitor is told it is theirs, not shown the server's folders
        where = f" to `{path}`" if owner is None else " (yours: other visitors do not see it)"
        return gr.update(choices=store.names(owner), value=None), f"Saved preset **{path.stem}**{where}."

    def import_file(request: gr.Request, file, *current):
        owner = owners.of(request)
        try:
            preset = P.load_preset(Path(file), registry)
            store.save(preset, owner=owner)
        except (ValueError, OSError) as exc:
            raise gr.Error(f"Preset not imported: {exc}", print_exception=False) from exc
        return [*apply(preset, current, f"Imported and applied preset **{preset.name}**."),
                gr.update(choices=store.names(owner), value=None)]

    def export_current(task_name, *current):
        try:
            preset = current_preset(current, task_name, name="Studio preset")
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"Preset not exported: {exc}", print_exception=False) from exc
        path = Path(tempfile.mkdtemp(prefix="studio-preset-")) / "studio-preset.json"
        path.write_text(P.preset_json(preset), encoding="utf-8")
        return str(path), gr.update(open=True)

    def share_link(request: gr.Request, task_name, *current):
        try:
            token = P.share_token(current_preset(current, task_name))
        except (ValueError, TypeError) as exc:
            raise gr.Error(f"No link made: {exc}", print_exception=False) from exc
        # The page the user is on (behind proxies and Spaces too), without its own query.
        headers = getattr(request, "headers", {}) or {}
        base = (headers.get("referer") or f"http://{headers.get('host', '127.0.0.1:7860')}/").split("?")[0]
        return f"{base}?preset={token}", gr.update(open=True)

    def from_link(request: gr.Request, *current):
        token = dict(getattr(request, "query_params", {}) or {}).get("preset")
        if not token:
            return filler.unchanged()
        try:
            preset = P.preset_from_token(token, registry)
        except ValueError as exc:
            return [*filler.unchanged()[:-1], f"The link's preset was not applied: {exc}"]
        return apply(preset, current, f"Applied the shared preset **{preset.name}**.")

    def own_presets(request: gr.Request):  # once the page's owner is known
        return gr.update(choices=store.names(owners.of(request)))

    def forget_pick():  # settings edited by hand: the picker no longer names what is shown
        return gr.update(value=None)

    # Queued, so that a gr.Error reaches the page as a message (Gradio shows none for queue=False).
    private = dict(api_visibility="private")
    picker.input(pick, [picker, *inputs], outputs, **private)
    png.upload(from_png, [png, *inputs], outputs, **private)
    save.click(save_current, [save_name, include_prompts, active, *inputs], [picker, status], **private)
    upload.upload(import_file, [upload, *inputs], [*outputs, picker], **private)
    export.click(export_current, [active, *inputs], [exported, tools], **private)
    share.click(share_link, [active, *inputs], [link, tools], **private)
    demo.load(from_link, inputs, outputs, **private)
    loaded.then(own_presets, None, picker, queue=False, **private)
    gr.on([w.input for w in inputs], forget_pick, None, picker, queue=False, **private)


def build_history(filler: Filler, history: gr.State) -> None:
    """This session's images, newest first; pick one and restore the settings that made it."""
    with gr.Accordion("History (this session)", open=False, elem_id="history"):
        # Six fixed columns of thumbnails (fitted columns would blow one image up and crop it).
        gallery = gr.Gallery(label="Your images this session", columns=6, fit_columns=False, object_fit="contain",
                             allow_preview=False, interactive=False, elem_id="history-gallery")
        chosen = gr.State(None)
        restore = gr.Button("Restore settings of the selected image", elem_id="history-restore")
        status = gr.Markdown(elem_id="history-status")

    def shown(items: list) -> list:
        return [path for path, _task in reversed(items or [])]

    def select(items: list, evt: gr.SelectData):
        ordered = shown(items)
        return ordered[evt.index] if isinstance(evt.index, int) and evt.index < len(ordered) else None

    def restore_settings(path: str | None, *current: Any):
        if not path:
            raise gr.Error("Select an image in the history first.", print_exception=False)
        return filler.from_png(path, current)

    private = dict(api_visibility="private")
    history.change(shown, history, gallery, queue=False, **private)
    gallery.select(select, history, chosen, queue=False, **private)
    restore.click(restore_settings, [chosen, *filler.inputs], [*filler.outputs, status], **private)
