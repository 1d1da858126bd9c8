"""Tiny, randomly initialised diffusers pipelines built in code, for offline use and tests.

They follow the diffusers "dummy components" recipe (a UNet of a few channels, 2-layer-ish CLIP
encoders) but keep the real architecture shapes that matter to Studio: SDXL has two CLIP text
encoders with `text_time` add-embeds, both families have a VAE with scale factor 8. The CLIP
tokenizers are built here from the byte-level alphabet, so nothing comes from the Hub.

The pipelines are written with `save_pretrained` once and then loaded with `from_pretrained`,
exactly like a model downloaded from the Hub. Their images are noise-like and carry no meaning.
The tiny metric depth model ("tiny-depth") is built in `studio.models.depth` and cached here too.
"tiny-lora" and "tiny-lora-b" are seeded random LoRAs on the tiny SDXL UNet, saved as diffusers'
training scripts do; "tiny-controlnet-depth" and "-canny" are ControlNets copied from that UNet
(different seeds), "tiny-controlnet-union" a ControlNet-Union model, "tiny-controlnet-depth-sd15"
one for the SD1.5 model, "tiny-inpaint" an SDXL inpainting pipeline and "tiny-lineart" the line art
detector of controlnet-aux (built in `studio.models.annotators`), so every registry role has a
built-in stand-in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_FORMAT_VERSION = 1  # bump when the construction below changes, so caches are rebuilt
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TEXT_HIDDEN = 32  # hidden size of each tiny CLIP encoder


def build_clip_tokenizer():
    """A CLIP BPE tokenizer over the 256 byte symbols with no merges (one token per character)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    # CLIP's vocab: every byte symbol, then the same with the end-of-word marker, then specials.
    symbols = alphabet + [s + "</w>" for s in alphabet] + [BOS, EOS]
    vocab = {s: i for i, s in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=[], bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        model_max_length=77,
    )


def _clip_config(tokenizer, projection_dim: int = TEXT_HIDDEN):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="gelu",
    )


def _vae():
    from diffusers import AutoencoderKL

    # Four blocks => 3 downsamplings => vae_scale_factor 8, as in SD1.5 and SDXL.
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=64,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading",
    )


def _unet(cross_attention_dim: int, sdxl: bool, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:
        # text_time add-embeds: 6 micro-conditioning numbers x 8 Fourier dims + pooled text (32).
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
            transformer_layers_per_block=(1, 1),
            use_linear_projection=True,
        )
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
        in_channels=in_channels,  # 9 for inpainting: noisy latents, the mask and the masked image's latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        **extra,
    )


def _sdxl_components(unet_in_channels: int = 4) -> dict:
    """The components of a tiny SDXL pipeline, drawn from the random state the caller seeded."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer()
    config = _clip_config(tokenizer)
    return dict(
        # cross attention sees both encoders concatenated
        unet=_unet(cross_attention_dim=2 * TEXT_HIDDEN, sdxl=True, in_channels=unet_in_channels),
        vae=_vae(),
        scheduler=_scheduler(),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(),
    )


def build_tiny_sdxl():
    """A StableDiffusionXLPipeline with random weights (seeded, so always the same)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(0)
    return StableDiffusionXLPipeline(**_sdxl_components(), force_zeros_for_empty_prompt=True)


def build_tiny_sdxl_inpaint():
    """A StableDiffusionXLInpaintPipeline (UNet with 9 input channels) with seeded random weights."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline

    torch.manual_seed(2)
    return StableDiffusionXLInpaintPipeline(**_sdxl_components(unet_in_channels=9), requires_aesthetics_score=False,
                                            force_zeros_for_empty_prompt=True)


def _make_visible(controlnet, seed: int, zeroed=()) -> None:
    """Give a tiny ControlNet's zero-initialised output layers (and `zeroed` others) seeded random
    weights, so that its effect shows in tests.

    `from_unet` zeroes the layers through which a ControlNet acts (training starts from "no
    effect"), so an untrained copy would change nothing. The hint's own path, the conditioning
    embedding's small convolutions, gets He initialisation: with PyTorch's default the signal
    shrinks layer by layer until the hint image barely matters."""
    import torch

    torch.manual_seed(seed)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        for layer in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, embedding.conv_out, *zeroed]:
            layer.weight.normal_(std=0.05)


def build_tiny_controlnet(family: str = "sdxl", seed: int = 3):
    """A ControlNet for the tiny SDXL (or SD1.5) model, copied from its UNet as diffusers' training
    scripts do; each `seed` gives different output layers."""
    from diffusers import ControlNetModel

    unet = (build_tiny_sdxl() if family == "sdxl" else build_tiny_sd15()).unet
    controlnet = ControlNetModel.from_unet(unet)
    _make_visible(controlnet, seed)
    return controlnet


def build_tiny_controlnet_union():
    """A ControlNet-Union model for the tiny SDXL model, copied from its UNet.

    `from_unet` keeps the union-specific sizes of the real model (a 320-wide fusion transformer,
    6 control types); here the transformer works at the tiny UNet's first width (8) and there are
    8 control types, as in ControlNet-Union ProMax (mode 6 tile, 7 repaint)."""
    from diffusers import ControlNetUnionModel

    copied = ControlNetUnionModel.from_unet(build_tiny_sdxl().unet)
    width = copied.config.block_out_channels[0]
    controlnet = ControlNetUnionModel.from_config(copied.config, num_control_type=8, num_trans_channel=width,
                                                  num_trans_head=2, num_proj_channel=width)
    own = controlnet.state_dict()
    controlnet.load_state_dict({k: v for k, v in copied.state_dict().items() if v.shape == own[k].shape}, strict=False)
    # spatial_ch_projs is the union model's zero-initialised projection of the fused condition.
    _make_visible(controlnet, seed=7, zeroed=[controlnet.spatial_ch_projs])
    return controlnet


def build_tiny_sd15():
    """A StableDiffusionPipeline with random weights (seeded) and no safety checker."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    return StableDiffusionPipeline(
        unet=_unet(cross_attention_dim=TEXT_HIDDEN, sdxl=False),
        vae=_vae(),
        scheduler=_scheduler(),
        text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(build):
    """A saver writing the diffusers pipeline (or model) `build()` returns into a folder (safetensors)."""
    return lambda folder: build().save_pretrained(folder)


def save_depth(folder) -> None:
    from studio.models.depth import save_tiny_depth

    save_tiny_depth(folder)


def save_lineart(folder) -> None:
    from studio.models.annotators import save_tiny_lineart

    save_tiny_lineart(folder)


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name


def save_tiny_lora(folder, seed: int = 1) -> None:
    """Write a rank-4 LoRA on the tiny SDXL UNet's attention, as diffusers' training scripts do;
    each `seed` gives a different LoRA."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = build_tiny_sdxl().unet
    torch.manual_seed(seed)  # the LoRA's own weights, seeded so the file is always the same
    # init_lora_weights=False makes B random instead of zero, so the LoRA visibly changes images.
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_WEIGHT_NAME,
                                                safe_serialization=True)


# kind -> (writes the model into a folder, the file whose presence proves the folder is complete)
BUILDERS = {
    "tiny-sdxl": (save_pipeline(build_tiny_sdxl), "model_index.json"),
    "tiny-sd15": (save_pipeline(build_tiny_sd15), "model_index.json"),
    "tiny-depth": (save_depth, "config.json"),
    "tiny-lora": (save_tiny_lora, LORA_WEIGHT_NAME),
    "tiny-lora-b": (lambda folder: save_tiny_lora(folder, seed=4), LORA_WEIGHT_NAME),
    "tiny-controlnet-depth": (save_pipeline(lambda: build_tiny_controlnet(seed=3)), "config.json"),
    "tiny-controlnet-canny": (save_pipeline(lambda: build_tiny_controlnet(seed=5)), "config.json"),
    "tiny-controlnet-union": (save_pipeline(build_tiny_controlnet_union), "config.json"),
    "tiny-controlnet-depth-sd15": (save_pipeline(lambda: build_tiny_controlnet("sd15", seed=6)), "config.json"),
    "tiny-lineart": (save_lineart, "sk_model2.safetensors"),
    "tiny-inpaint": (save_pipeline(build_tiny_sdxl_inpaint), "model_index.json"),
}


def ensure_tiny_model(kind: str, cache_dir: Path) -> Path:
    """Return the folder of tiny model `kind`, writing it with `save_pretrained` on first use.

    The folder is written under a temporary name and renamed, so a crash never leaves a half
    model that later loads.
    """
    if kind not in BUILDERS:
        raise ValueError(f"tiny model must be one of {sorted(BUILDERS)}, got {kind!r}")
    save, marker = BUILDERS[kind]
    target = Path(cache_dir) / f"{kind}-v{TINY_FORMAT_VERSION}"
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        save(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
