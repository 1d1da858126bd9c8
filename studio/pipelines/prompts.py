"""Prompts longer than CLIP's 77-token window, encoded in chunks instead of being truncated.

Short prompts are handed to diffusers as strings, so they are encoded exactly as diffusers does.
Long ones are split into windows of 75 tokens, each wrapped in BOS/EOS and padded to 77, encoded
separately and concatenated along the sequence axis: the UNet's cross-attention accepts any
sequence length. This is the scheme AUTOMATIC1111 users know. The pooled embedding SDXL needs
comes from the first window, which holds the start of the prompt.
"""

from __future__ import annotations

import math
from typing import Any


def _pairs(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of a pipeline: one for SD1.5, two for SDXL."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "tokenizer_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def _encode_windows(tokenizer: Any, text_encoder: Any, text: str, windows: int, device: Any, sdxl: bool):
    """Encode `text` in `windows` windows -> (hidden (1, 77*windows, d), pooled (1, p))."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    width = tokenizer.model_max_length - 2  # room for BOS and EOS
    hidden, pooled = [], None
    for k in range(windows):
        piece = ids[k * width : (k + 1) * width]
        row = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
        row += [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(row))
        out = text_encoder(torch.tensor([row], device=device), output_hidden_states=True)
        # Same features as diffusers: SDXL uses the penultimate layer, SD1.5 the final one.
        hidden.append(out.hidden_states[-2] if sdxl else out[0])
        if pooled is None:
            pooled = out[0]  # for CLIPTextModelWithProjection: the projected text embedding
    return torch.cat(hidden, dim=1), pooled


def _encode(pipe: Any, text: str, windows: int):
    import torch

    sdxl = getattr(pipe, "tokenizer_2", None) is not None
    device = pipe._execution_device
    parts = [_encode_windows(t, e, text, windows, device, sdxl) for t, e in _pairs(pipe)]
    embeds = torch.cat([p[0] for p in parts], dim=-1)  # SDXL: (1, 77*windows, 768 + 1280)
    return embeds, parts[-1][1]


def prompt_arguments(pipe: Any, prompt: str, negative_prompt: str) -> tuple[dict, dict]:
    """Keyword arguments for `pipe(...)` carrying both prompts, and metadata on how they were handled."""
    import torch

    tokenizer = pipe.tokenizer
    width = tokenizer.model_max_length - 2
    counts = [count_tokens(t, text) for t, _ in _pairs(pipe) for text in (prompt, negative_prompt)]
    info = {"prompt_tokens": count_tokens(tokenizer, prompt), "negative_prompt_tokens": count_tokens(tokenizer, negative_prompt)}
    if max(counts) <= width:
        # An empty negative prompt goes as None: SDXL then uses zeros (force_zeros_for_empty_prompt),
        # exactly as a plain diffusers call does.
        return {"prompt": prompt, "negative_prompt": negative_prompt or None}, {**info, "prompt_handling": "single window"}

    windows = math.ceil(max(counts) / width)
    with torch.no_grad():
        embeds, pooled = _encode(pipe, prompt, windows)
        if negative_prompt == "" and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)  # as diffusers' SDXL does
        else:
            neg_embeds, neg_pooled = _encode(pipe, negative_prompt, windows)
    kwargs = {"prompt_embeds": embeds, "negative_prompt_embeds": neg_embeds}
    if getattr(pipe, "tokenizer_2", None) is not None:
        kwargs |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": neg_pooled}
    handling = f"chunked: {windows} windows of {width} tokens, encoded separately and concatenated"
    return kwargs, {**info, "prompt_handling": handling}
