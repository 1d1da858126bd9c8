"""Serving the app: who can reach it (address, share link, passwords) and which files it serves.
No torch and no gradio here: app.py's argument parsing uses these before anything heavy loads.

What Gradio serves at /gradio_api/file=<path>: files in `allowed_paths` (Studio's outputs and
assets folders), in its own upload folder, and nothing under `blocked_paths`, which win over
allowed ones. Studio blocks the folders that hold private files (the LoRA library, training runs,
user presets, the model cache) so that none leaks if one of them was put inside the outputs.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

# An 8192² image (Studio's 67-megapixel input limit) is ~200 MB as an uncompressed RGB PNG or
# TIFF; photos and PNGs of that size are usually far smaller. Units as Gradio's: 1 kb = 1024 b.
DEFAULT_MAX_FILE_SIZE = "200mb"
SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from "200mb", "64kb", "1gb" or a plain number of bytes (units as Gradio's)."""
    match = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb)?\s*", str(text).lower())
    if match is None or int(match[1]) < 1:
        raise ValueError(f"expected a positive size such as 200mb, 64kb or 1gb, got {text!r}")
    return int(match[1]) * SIZE_UNITS[match[2] or "b"]


def is_loopback(host: str) -> bool:
    """True when `host` accepts connections from this machine only (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # 0.0.0.0 parses; a host name may resolve to any address, so it counts as exposed


def parse_account(entry: str, where: str) -> tuple[str, str]:
    """(user, password) from "USER:PASSWORD" (the password may contain ':'). Errors say `where`
    (an option or a file's line) and never repeat the password."""
    user, colon, password = entry.partition(":")
    if not colon:
        raise ValueError(f"{where} must be USER:PASSWORD, got an entry without ':'")
    if not user.strip() or not password:
        missing = "user name" if not user.strip() else "password"
        raise ValueError(f"{where} must be USER:PASSWORD with a non-empty {missing}")
    return user.strip(), password


def read_accounts(options: list[str], file: Path | None) -> list[tuple[str, str]] | None:
    """The accounts of every --auth option and of the --auth-file (one USER:PASSWORD a line; blank
    lines and lines starting with # are skipped); None when there are none, so the app is open."""
    accounts = [parse_account(entry, f"--auth #{i}") for i, entry in enumerate(options, 1)]
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--auth-file: cannot read {file}: {exc}") from None
        accounts += [parse_account(line.strip(), f"--auth-file {file} line {n}")
                     for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
        if not accounts:
            raise ValueError(f"--auth-file {file} holds no USER:PASSWORD line")
    users = [user for user, _ in accounts]
    twice = sorted({user for user in users if users.count(user) > 1})
    if twice:  # Gradio would silently keep only the last password of each
        raise ValueError(f"each user must be given once, got {', '.join(map(repr, twice))} more than once")
    return accounts or None


def exposure_warning(host: str, share: bool, has_auth: bool) -> str | None:
    """What to tell the person starting Studio when others can reach it; None on loopback."""
    if is_loopback(host) and not share:
        return None
    where = "through a public share link" if share else f"on {host}, reachable from other machines"
    if has_auth:
        return (f"Studio is served {where}; only the --auth users can open it. Use it on networks you "
                "trust: traffic to this address is not encrypted unless a proxy adds HTTPS.")
    return (f"Studio is served {where} WITHOUT A PASSWORD: anyone who reaches it can use your GPU and "
            "see every image it makes. Add --auth USER:PASSWORD (or --auth-file PATH).")


def private_paths(candidates: list[Path], served: list[Path]) -> list[str]:
    """The folders to pass as Gradio's `blocked_paths`: the candidates, except any that holds a
    served folder (a blocked path wins over an allowed one, so blocking --lora-dir . would also
    hide the outputs)."""
    served = [Path(s).resolve() for s in served]
    blocked = []
    for folder in (Path(c).resolve() for c in candidates):
        if not any(s == folder or s.is_relative_to(folder) for s in served):
            blocked.append(str(folder))
    return blocked


def launch_options(args: Any, served: list[Path]) -> dict[str, Any]:
    """Gradio launch() keywords for the parsed command line: address, share link, logins, upload
    size limit, and the folders served (`served`) and blocked. ValueError names the bad option."""
    try:
        max_file_size = parse_size(args.max_file_size)
    except ValueError as exc:
        raise ValueError(f"--max-file-size: {exc}") from None
    lora_dir = Path(args.lora_dir).resolve()
    # Training runs go to training/ beside the LoRA library (studio.training.jobs.TrainingJobs).
    private = [lora_dir, lora_dir.parent / "training", args.user_presets, args.cache_dir]
    from starlette.middleware import Middleware

    from studio.late_cancel import LateCancel
    from studio.urlguard import NoUrlFetch

    return dict(server_name=args.host, server_port=args.port, share=args.share,
                auth=read_accounts(args.auth, args.auth_file), max_file_size=max_file_size,
                allowed_paths=[str(Path(s).resolve()) for s in served], blocked_paths=private_paths(private, served),
                # No server-side fetch of users' URLs; an API job cancelled before its caller knew its id never runs.
                app_kwargs={"middleware": [Middleware(NoUrlFetch), Middleware(LateCancel)]})
