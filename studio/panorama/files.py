"""Saving a panorama: the LDR equirectangular PNG (with its settings), the HDR as Radiance .hdr and
OpenEXR, LDR previews at chosen exposures, a cubemap and a 360° pan video.

Every file is written atomically by its writer; if any of them fails, the ones already written for
this panorama are removed, so a failed save leaves nothing half made in the outputs folder.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from studio.metadata import png_info
from studio.outputs import output_name, save_png


def ev_name(ev: float) -> str:
    """-2 -> 'ev-2', 0.5 -> 'ev+0.5' (file names that sort and read well)."""
    return f"ev{ev:+g}" if ev else "ev0"


def save_panorama(result: Any, outputs_dir: Path) -> list[Path]:
    """[LDR PNG, .hdr, .exr, previews at each exposure…, cubemap PNG, video MP4 (if asked)]."""
    import numpy as np
    from PIL import Image

    from studio.groups_panorama import parse_exposures
    from studio.panorama import hdr

    folder = Path(outputs_dir) / f"{datetime.now():%Y-%m-%d}"
    stem, request, radiance = output_name(result.seed)[:-4], result.request, result.radiance
    ldr = np.asarray(result.images[0].convert("RGB"))
    written: list[Path] = []
    try:
        written.append(save_png(result.images[0], folder, f"{stem}.png", png_info(result, 0)))
        for suffix, write in ((".hdr", hdr.write_hdr), (".exr", hdr.write_exr)):
            written.append(folder / f"{stem}{suffix}")
            write(radiance, written[-1])
        for ev in parse_exposures(request.exposures):
            written.append(save_png(Image.fromarray(hdr.expose(radiance, ev)), folder, f"{stem}-{ev_name(ev)}.png"))
        written.append(save_png(Image.fromarray(hdr.cubemap(ldr)), folder, f"{stem}-cubemap.png"))
        if request.video:
            written.append(folder / f"{stem}-pan.mp4")
            hdr.pan_video(ldr, written[-1])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
