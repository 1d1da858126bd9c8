"""Studio: start the Gradio app. Parses arguments, builds the model manager and the UI, launches."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description="Studio: image generation on diffusers.")
    p.add_argument("--model", default=None, help="registry name of the base model to start with (default: the "
                   "registry's default; 'tiny' forces the built-in test model)")
    # Hugging Face Spaces and Docker set GRADIO_SERVER_NAME/PORT; a plain start stays on loopback.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to share on your network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port to listen on (default 7860, or GRADIO_SERVER_PORT)")
    p.add_argument("--outputs", type=Path, default=Path(os.environ.get("STUDIO_OUTPUTS", "outputs")),
                   help="folder for generated images (default outputs, or STUDIO_OUTPUTS)")
    p.add_argument("--user-presets", type=Path, default=Path(os.environ.get("STUDIO_USER_PRESETS", "user_presets")),
                   help="folder for presets you save or import (default user_presets, or STUDIO_USER_PRESETS)")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STUDIO_CACHE", Path.home() / ".cache" / "studio")),
                   help="folder for the built-in tiny models (default ~/.cache/studio, or STUDIO_CACHE)")
    p.add_argument("--depth-model", default=None, help="registry name of the depth model for the lens blur (default: "
                   "the registry's first; the built-in tiny models use 'tiny-depth')")
    p.add_argument("--lora-dir", type=Path, default=Path(os.environ.get("STUDIO_LORAS", "loras")),
                   help="folder of the LoRA library; trained LoRAs go there, their runs to training/ beside it "
                   "(default loras, or STUDIO_LORAS)")
    p.add_argument("--upscale-max-pixels", type=int, default=None, metavar="N",
                   help="largest upscale output in pixels (default 16384×16384); the disk must also hold it")
    p.add_argument("--registry", type=Path, default=None, help="model registry JSON (default: presets/models.json)")
    return p, p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from studio.models.manager import ModelManager
    from studio.models.registry import DEFAULT_REGISTRY, load_registry
    from studio.ui import build_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser, args = parse_args(argv)
    try:
        registry = load_registry(args.registry or DEFAULT_REGISTRY)
    except (OSError, ValueError) as exc:
        parser.error(f"--registry: cannot use {args.registry or DEFAULT_REGISTRY}: {exc}")
    bases = registry.names("base")
    if args.model is not None and args.model not in bases:
        parser.error(f"--model must be a base model, one of {', '.join(bases)}; got {args.model!r}")
    depth_names = [m.name for m in registry.depth_models]
    if args.depth_model is not None and args.depth_model not in depth_names:
        parser.error(f"--depth-model must be one of {', '.join(depth_names)}; got {args.depth_model!r}")
    if args.upscale_max_pixels is not None and args.upscale_max_pixels < 1:
        parser.error(f"--upscale-max-pixels must be a positive number of pixels, got {args.upscale_max_pixels}")
    manager = ModelManager(registry, cache_dir=args.cache_dir)
    model, notice = manager.resolve_startup_model(args.model or registry.default)
    # A random test model pairs with the random depth model and line detector, so the app runs fully offline.
    builtin = registry.get(model).builtin is not None
    manager.depth_model = args.depth_model or ("tiny-depth" if builtin else None)
    manager.annotator_models = {"lineart": "tiny-lineart"} if builtin else None
    manager.lora_dir = args.lora_dir.resolve()
    manager.upscale_max_pixels = args.upscale_max_pixels
    outputs = args.outputs.resolve()
    demo = build_app(manager, default_model=model, outputs_dir=outputs, user_presets=args.user_presets.resolve(),
                     notice=notice, lora_dir=args.lora_dir.resolve())
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[str(outputs), str(ASSETS)], show_error=True,
        css_paths=[ASSETS / "studio.css"], favicon_path=ASSETS / "icon.png",
    )


if __name__ == "__main__":
    main()
