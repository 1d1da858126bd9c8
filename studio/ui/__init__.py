"""The Gradio Blocks app: one tab per task of the task table, wired to one ModelManager. No torch here."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import gradio as gr

from studio.owners import Owners
from studio.styles import load_styles
from studio.tasks import TASKS
from studio.training.jobs import TrainingJobs
from studio.ui.jobs import StopFlags
from studio.ui.preset_panel import build_history, build_presets_panel
from studio.ui.presets import Filler, PresetStore, build_preset_api
from studio.ui.tab import AppContext, Tab
from studio.ui.train import build_train_tab


def build_app(manager: Any, default_model: str, outputs_dir: Path, user_presets: Path,
              notice: str | None = None, lora_dir: Path = Path("loras"), devices: Any = None,
              owners: Owners | None = None) -> gr.Blocks:
    """The app on `manager` (the first GPU's, or the only one); `devices` (a DevicePool whose
    first manager is `manager`) runs generation jobs on several GPUs; `owners` says whether saved
    presets and training runs are shared or each visitor's own (default: shared)."""
    from studio.models.pool import DevicePool

    devices, owners = devices or DevicePool([manager]), owners or Owners()
    with gr.Blocks(title="Studio") as demo:
        gr.Markdown("# Studio\nImage generation on diffusers.")
        if notice:
            gr.Markdown(f"**Notice:** {notice}", elem_id="model-notice")
        loaded = bind_owner(demo, owners)
        history = gr.State([])
        # Before the tabs: their LoRA pickers list its library, and it marks runs a restart cut short
        jobs = TrainingJobs(manager, Path(lora_dir))
        ctx = AppContext(manager, default_model, Path(outputs_dir), StopFlags(), history, load_styles(), jobs.library,
                         devices)
        store = PresetStore(manager.registry, user_presets, owners=owners)
        presets_slot = gr.Column()
        active = gr.State("txt2img")  # the tab shown: what "save" and "share" take their settings from
        with gr.Tabs() as selector:
            tabs = []
            for task in TASKS.values():
                with gr.Tab(task.label, id=task.name) as page:
                    tabs.append(importlib.import_module(task.ui).build_tab(ctx))
                page.select(lambda name=task.name: name, None, active, api_visibility="private", queue=False)
            with gr.Tab("Train LoRA", id="train"):  # not a task: it makes a LoRA, not images
                build_train_tab(jobs, manager.registry, default_model, owners, loaded)
        filler = Filler(manager, tabs, selector, active)
        with presets_slot:  # shown above the tabs, built once the widgets it fills exist
            build_presets_panel(demo, filler, store, active, loaded)
        build_history(filler, history)
        wire_send_to(tabs, selector, active)
        build_preset_api(store)
    return demo


def bind_owner(demo: gr.Blocks, owners: Owners) -> Any:
    """When a page loads, tell `owners` whose it is (its login, or the random token its browser
    keeps in localStorage, minted on a first visit); returns that event, for what must follow it."""
    # The token is a random name, not a password: the "secret" only scrambles it in localStorage,
    # and a fixed one keeps it readable after Studio restarts.
    token = gr.BrowserState(None, storage_key="studio-owner", secret="studio-owner")

    def bind(request: gr.Request, kept: Any) -> Any:
        return owners.bind(request, kept)

    def forget(request: gr.Request) -> None:
        owners.forget(request)

    demo.unload(forget)
    return demo.load(bind, token, token, queue=False, api_visibility="private", show_progress="hidden")


def wire_send_to(tabs: list[Tab], selector: gr.Tabs, active: gr.State) -> None:
    """"Send to <tab>" under every gallery, for each tab that takes an input image."""
    for source in tabs:
        for target in (t for t in tabs if t.image_input is not None):
            with source.send_row:
                name = target.task.label
                button = gr.Button(f"Send to {name}", size="sm", min_width=90,
                                   elem_id=f"send-{source.task.name}-to-{target.task.name}")

            def send(selected: str | None, gallery: list | None, name: str = target.task.name):
                paths = [item[0] for item in gallery or []]
                path = selected if selected in paths else (paths[0] if paths else None)
                if path is None:
                    raise gr.Error("Generate an image first: there is nothing to send.", print_exception=False)
                return path, gr.Tabs(selected=name), name

            button.click(send, [source.selected, source.gallery], [target.image_input, selector, active],
                         api_visibility="private", queue=False)
