"""Keep large freed CPU buffers for reuse instead of handing them back to the OS (glibc only; opt-in for library users).

PyTorch's CPU tensors come from the C allocator. glibc serves a request above its mmap threshold (at most 32 MB by
default) with a fresh ``mmap`` and unmaps it on free, so every such tensor is page-faulted in again, page by page,
on first touch. A (1, H, W, 64) fp32 map is 12.8 MB at 224 x 224 but 51 MB at 448 x 448, so past that size every
activation of an inference pass pays the faults: measured here (``benchmarks/memory_reference.py``, 2 threads) an add
into a fresh tensor costs 4.6x more per pixel at 896 x 896 than at 224 x 224, a permuted copy 7.3x; with the
threshold raised both stay flat (0.96x and 1.45x), and DaViT's window attention on an 896 x 896 map runs 913 ->
569 ms, GRL's shifted window attention 2878 -> 963 ms.

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds (``mallopt``) so freed blocks stay in the heap and
are reused: the process's resident memory then stays near its peak until it exits, the usual trade-off of the
allocators (jemalloc, tcmalloc) that PyTorch's CPU performance guide recommends. The ``visattn`` command line calls
it at start (``--no-allocator-tuning`` or ``VISATTN_NO_ALLOCATOR_TUNING=1`` leave the allocator alone); importing
visattn never does. The same effect without code: ``MALLOC_MMAP_THRESHOLD_=2147483647
MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory", "keeping_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers of glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1    # mallopt takes an int
_applied = False


def keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _applied


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 2 GiB; True if applied, False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global _applied
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    return _applied
