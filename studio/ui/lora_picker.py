"""The LoRA picker under every generation tab's LoRAs box: choose a LoRA of the library and it is
added to the box as `name:1.0`, with a reminder of its trigger word. Its choices are read again
when the page loads and whenever it gets the focus, so a LoRA trained or uploaded meanwhile is there.
"""

from __future__ import annotations

import gradio as gr

from studio.loras import TRIGGER_KEYS, LoraLibrary

CHOICE_INFO = "name — trigger word — base model"


def library_records(library: LoraLibrary) -> list[dict]:
    """Every LoRA of the library with what its file says about it."""
    records = []
    for entry in library.list():
        meta = entry.metadata
        trigger = next((meta[k] for k in TRIGGER_KEYS if meta.get(k)), None)
        records.append({"name": entry.name, "trigger_word": trigger, "base_model": meta.get("base_model"),
                        "rank": meta.get("rank"), "steps": meta.get("steps"), "date": meta.get("date")})
    return records


def choice_label(record: dict) -> str:
    """"name — trigger word — base model", saying so where the file does not tell."""
    return " — ".join([record["name"], record["trigger_word"] or "no trigger word",
                       record["base_model"] or "unknown base model"])


def add_lora(text: str | None, name: str) -> str:
    """The LoRAs box's text with `name:1.0` appended; what was typed stays as it was, and a LoRA
    already named there is not added twice."""
    text = (text or "").strip().rstrip(",").rstrip()
    named = [item.partition(":")[0].strip() for item in text.split(",")]
    if name in named:
        return text
    return f"{text}, {name}:1.0" if text else f"{name}:1.0"


def trigger_hint(record: dict | None) -> str:
    if record is None:
        return ""
    if record["trigger_word"]:
        return f"Add '{record['trigger_word']}' to the prompt: {record['name']} was trained on that word."
    return f"{record['name']} has no trigger word: it works on any prompt."


def lora_picker(library: LoraLibrary | None, loras_box: gr.Textbox, elem_prefix: str) -> gr.Dropdown | None:
    """A dropdown of the library's LoRAs under `loras_box`; picking one appends it to the box.
    Without a library (a tab built on its own) there is nothing to pick from, and no picker."""
    if library is None:
        return None
    picker = gr.Dropdown([], value=None, label="Add a LoRA from the library", elem_id=f"{elem_prefix}lora-pick",
                         info=CHOICE_INFO, interactive=True)
    hint = gr.Markdown("", elem_id=f"{elem_prefix}lora-hint")

    def read() -> tuple[dict[str, dict], str]:
        """The library by name, or an empty one and why it could not be read (a damaged file)."""
        try:
            return {r["name"]: r for r in library_records(library)}, ""
        except (OSError, ValueError) as exc:
            return {}, f"The LoRA library cannot be read: {exc}"

    def refresh():
        records, problem = read()  # the hint keeps its reminder unless the library cannot be read
        choices = [(choice_label(r), name) for name, r in records.items()]
        info = CHOICE_INFO if choices else "None yet: train one, or add a LoRA file, in the Train LoRA tab"
        return gr.update(choices=choices, value=None, info=info), problem or gr.skip()

    def pick(name: str | None, text: str | None):
        if not name:  # the box emptied by hand: nothing picked
            return gr.skip(), gr.skip(), gr.skip()
        records, problem = read()
        if name not in records:  # gone since the list was read
            return gr.skip(), None, problem or f"LoRA {name!r} is no longer in the library."
        return add_lora(text, name), None, trigger_hint(records[name])

    private = dict(api_visibility="private", queue=False, show_progress="hidden")
    picker.focus(refresh, None, [picker, hint], **private)
    gr.on(None, refresh, None, [picker, hint], **private)  # no triggers and no inputs: when the page loads
    picker.input(pick, [picker, loras_box], [loras_box, picker, hint], **private)
    return picker
