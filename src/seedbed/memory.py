"""Keep freed memory for reuse, so that reading a model does not pay page faults.

Caching every activation keeps a forward pass's intermediates alive together, so
each pass asks the allocator for megabytes of fresh memory. glibc hands large
blocks back to the kernel as soon as they are freed (`munmap`, or trimming the
heap top), and the kernel must zero-fill them again on the next pass: measured
on config (a) of bench/read.py, that page-faulting was ~40% of a cache-everything
forward. Raising glibc's mmap and trim thresholds keeps the memory in the process
instead. It changes nothing but speed; on systems without glibc it does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
_tuned: bool | None = None  # None: not tried yet in this process


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc (once per process) to reuse freed blocks rather than return them; True if it could."""
    global _tuned
    if _tuned is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt  # the C library already linked into this process
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _tuned = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
        except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl): nothing to tune
            _tuned = False
    return _tuned
