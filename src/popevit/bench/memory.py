"""Peak memory of a piece of work, on CPU (resident set size) or CUDA (the caching allocator's statistics).

``tracemalloc`` sees only Python-level allocations, not torch's tensor storage, so it is useless here. Instead:

- CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``torch.cuda.max_memory_allocated``: bytes of live tensors at
  the high-water mark (the allocator's cache on top of that is not counted).
- CPU on Linux: the kernel's resident high-water mark ``VmHWM`` (``/proc/self/status``) is reset to the current RSS
  by writing ``5`` to ``/proc/self/clear_refs`` (proc(5), Linux >= 4.0), after ``gc.collect()`` and glibc's
  ``malloc_trim(0)`` returned freed heap pages. The figure is ``VmHWM`` after the work minus RSS before it: what the
  work added at its peak (activations, gradients, optimizer state on a first step, temporaries). Pages that the
  allocator kept from earlier work and re-used are not counted, so it can under-state slightly.
- CPU elsewhere: ``resource.getrusage(...).ru_maxrss`` deltas, which only grow (a later, smaller model reads 0),
  flagged ``method="ru_maxrss_delta"``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    import resource  # Unix only: imported where it is used, so the module imports on Windows too

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def peak_memory(fn: Callable[[], Any], device: str = "cpu") -> dict[str, Any]:
    """Run ``fn()`` once and measure the memory it added at its peak.

    Args:
        fn: the work, e.g. one or two training steps of a freshly built model.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``{"peak_delta_mb": ..., "peak_total_mb": ..., "method": ...}``; ``peak_total_mb`` is the process RSS
        high-water mark (CPU) or the allocated bytes at the peak (CUDA).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {
            "peak_delta_mb": (peak - before) / 2**20,
            "peak_total_mb": peak / 2**20,
            "method": "torch.cuda.max_memory_allocated",
        }
    _trim()
    if _status_kb("VmHWM") is not None and _reset_hwm():
        before = _status_kb("VmRSS") or 0
        fn()
        peak = _status_kb("VmHWM") or 0
        return {"peak_delta_mb": max(peak - before, 0) / 1024, "peak_total_mb": peak / 1024, "method": "VmHWM_reset"}
    before_mb = _ru_maxrss_mb()
    fn()
    after_mb = _ru_maxrss_mb()
    return {"peak_delta_mb": max(after_mb - before_mb, 0.0), "peak_total_mb": after_mb, "method": "ru_maxrss_delta"}
