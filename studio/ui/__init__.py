"""The Gradio Blocks app: one builder per tab, wired to one ModelManager. No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.ui.jobs import StopFlags
from studio.ui.presets import PresetStore, build_preset_api, build_presets_panel
from studio.ui.txt2img import build_txt2img_tab


def build_app(manager: Any, default_model: str, outputs_dir: Path, user_presets: Path,
              notice: str | None = None) -> gr.Blocks:
    with gr.Blocks(title="Studio") as demo:
        gr.Markdown("# Studio\nImage generation on diffusers.")
        if notice:
            gr.Markdown(f"**Notice:** {notice}", elem_id="model-notice")
        stops = StopFlags()
        store = PresetStore(manager.registry, user_presets)
        presets_slot = gr.Column()
        with gr.Tabs():
            with gr.Tab("Text to image", id="txt2img"):
                widgets = build_txt2img_tab(manager, default_model, Path(outputs_dir), stops)
        with presets_slot:  # shown above the tabs, built once the widgets it fills exist
            build_presets_panel(demo, manager, widgets, store)
        build_preset_api(store)
    return demo
