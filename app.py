"""Studio: start the Gradio app. Parses arguments, builds the model manager and the UI, launches."""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial
from pathlib import Path

from studio.deploy import data_defaults, use_persistent_hub_cache
from studio.owners import MODES

ASSETS = Path(__file__).resolve().parent / "assets"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description="Studio: image generation on diffusers.")
    data = data_defaults()  # on a Space with persistent storage, folders under /data
    p.add_argument("--model", default=None, help="registry name of the base model to start with (default: the "
                   "registry's default; 'tiny' forces the built-in test model)")
    # Hugging Face Spaces and Docker set GRADIO_SERVER_NAME/PORT; a plain start stays on loopback.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to share on your network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port to listen on (default 7860, or GRADIO_SERVER_PORT)")
    p.add_argument("--outputs", type=Path, default=Path(os.environ.get("STUDIO_OUTPUTS", data["outputs"])),
                   help="folder for generated images (default outputs, /data/outputs on a Space with persistent "
                   "storage, or STUDIO_OUTPUTS)")
    p.add_argument("--user-presets", type=Path, default=Path(os.environ.get("STUDIO_USER_PRESETS", data["user_presets"])),
                   help="folder for presets you save or import (default user_presets, /data/user_presets on a "
                   "Space with persistent storage, or STUDIO_USER_PRESETS)")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STUDIO_CACHE", data["cache"])),
                   help="folder for the built-in tiny models (default ~/.cache/studio, /data/cache/studio on a "
                   "Space with persistent storage, or STUDIO_CACHE)")
    p.add_argument("--depth-model", default=None, help="registry name of the depth model for the lens blur (default: "
                   "the registry's first; the built-in tiny models use 'tiny-depth')")
    p.add_argument("--lora-dir", type=Path, default=Path(os.environ.get("STUDIO_LORAS", data["loras"])),
                   help="folder of the LoRA library; trained LoRAs go there, their runs to training/ beside it "
                   "(default loras, /data/loras on a Space with persistent storage, or STUDIO_LORAS)")
    p.add_argument("--upscale-max-pixels", type=int, default=None, metavar="N",
                   help="largest upscale output in pixels (default 16384×16384); the disk must also hold it")
    p.add_argument("--registry", type=Path, default=None, help="model registry JSON (default: presets/models.json)")
    p.add_argument("--gpus", default=None, metavar="0,1",
                   help="CUDA devices to use, one job on each at a time (default: the first)")
    p.add_argument("--queue-size", type=int, default=50, metavar="N",
                   help="most jobs waiting at once; more are refused until the line shortens (default 50)")
    p.add_argument("--share", action="store_true",
                   help="also serve through a public Gradio share link (use it with --auth)")
    p.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                   help="ask for this login before anything is shown or served; repeat for more users")
    p.add_argument("--auth-file", type=Path, default=None, metavar="PATH",
                   help="file of logins, one USER:PASSWORD a line (keeps passwords out of the process list)")
    p.add_argument("--user-data", choices=MODES, default="auto",
                   help="saved presets and training runs: 'shared' by everyone who opens Studio, or 'private' to "
                   "each login or browser (default auto: private when served beyond this machine or with --auth)")
    p.add_argument("--max-file-size", default="200mb", metavar="SIZE",
                   help="largest upload, e.g. 200mb (default: enough for a 67-megapixel image), 64kb, 1gb")
    return p, p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    use_persistent_hub_cache()  # before huggingface_hub is imported: it reads HF_HOME once
    from studio.models.manager import ModelManager, probe_device
    from studio.models.pool import DevicePool, parse_gpus
    from studio.models.registry import DEFAULT_REGISTRY, load_registry
    from studio.owners import Owners, is_private
    from studio.serve import exposure_warning, is_loopback, launch_options
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
    if args.queue_size < 1:
        parser.error(f"--queue-size must be at least 1, got {args.queue_size}")
    if args.upscale_max_pixels is not None and args.upscale_max_pixels < 1:
        parser.error(f"--upscale-max-pixels must be a positive number of pixels, got {args.upscale_max_pixels}")
    outputs = args.outputs.resolve()
    try:
        serving = launch_options(args, served=[outputs, ASSETS])  # only these two folders
    except ValueError as exc:
        parser.error(str(exc))
    exposed = args.share or not is_loopback(args.host)
    owners = Owners(private=is_private(args.user_data, exposed, serving["auth"] is not None))
    warning = exposure_warning(args.host, args.share, serving["auth"] is not None)
    if warning:
        logging.getLogger("studio").warning(warning)
    try:
        gpus = parse_gpus(args.gpus) if args.gpus is not None else [0]
    except ValueError as exc:
        parser.error(str(exc))
    # One manager per GPU, each probing its own device (probes are lazy: nothing touches CUDA here)
    devices = DevicePool([ModelManager(registry, cache_dir=args.cache_dir, probe=partial(probe_device, i)) for i in gpus])
    manager = devices.primary
    model, notice = manager.resolve_startup_model(args.model or registry.default)
    # A random test model pairs with the random depth model and line detector, so the app runs fully offline.
    builtin = registry.get(model).builtin is not None
    for each in devices.managers:
        each.depth_model = args.depth_model or ("tiny-depth" if builtin else None)
        each.annotator_models = {"lineart": "tiny-lineart"} if builtin else None
        each.lora_dir = args.lora_dir.resolve()
        each.upscale_max_pixels = args.upscale_max_pixels
    demo = build_app(manager, default_model=model, outputs_dir=outputs, user_presets=args.user_presets.resolve(),
                     notice=notice, lora_dir=args.lora_dir.resolve(), devices=devices,
                     owners=owners)
    # One bounded queue: past --queue-size waiting jobs a new one is refused ("the queue is full")
    # instead of piling up without end on a busy Space.
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size).launch(
        **serving, show_error=True, css_paths=[ASSETS / "studio.css"], favicon_path=ASSETS / "icon.png",
    )


if __name__ == "__main__":
    main()
