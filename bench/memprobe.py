"""Process memory probes the CPU benchmarks share (Linux): peak RSS, resetting it, trimming the heap."""

from __future__ import annotations

import ctypes
import gc
import resource


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_max_rss() -> None:
    """Reset the high-water mark that ru_maxrss reports to the current RSS (Linux >= 4.0), so a
    warm-up's own peak cannot hide a smaller measured one. Where this fails, the peak may be the
    warm-up's: callers that care check whether it rose."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def trim_heap() -> None:
    """Give freed heap memory back to the OS, so a baseline RSS is what is really in use (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline then includes free heap the measured code may reuse
