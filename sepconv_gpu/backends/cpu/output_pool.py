"""Memory for large CPU outputs, recycled once every array using it has been freed.

A fresh NumPy array of tens of megabytes costs its first touch: the kernel zeroes each
new page as it is first written (measured on the 2-core Xeon, 2026-12-05: 15 ms of one
core to touch 88 MB on NumPy's huge pages, 68 ms on 4 KB pages; the 147x147x64->128
Xception layer at batch 8, whose output that is, took 47 ms on two cores before this
pool). TensorFlow's caching allocator pays it once; this pool does the same for the
outputs of the compiled CPU kernel (numba_kernel.py). Each returned array is new to its
caller: its memory comes back to the pool only when the caller has dropped that array
and every view of it, and is then handed to a later call of the same byte size.
"""
from __future__ import annotations

import math
import threading

import numpy as np

# Outputs of at least this many bytes come from the pool (NumPy's own threshold for huge
# pages; smaller ones are cheap to touch). glibc's malloc itself recycles freed blocks up
# to 32 MB (its largest mmap threshold): there the pool measured neither faster nor slower
# (MobileNetV1's 26 MB 112x112x32->64 output); the larger ones are where it counts.
MIN_BYTES = 4 << 20
# Freed memory the pool keeps at most: past it, the blocks freed longest ago go back to
# the system.
MAX_KEPT_BYTES = 1 << 29

# Re-entrant: a garbage collection inside the lock may free an output (see _Lease).
_lock = threading.RLock()
_free = []  # freed raw blocks, the most recently freed last
_kept = 0


class _Lease:
    """The base of one returned array (NumPy makes it, or that array, the base of every
    view of it too): when the last of them is freed, the memory goes back to the pool."""

    def __init__(self, raw, shape, dtype):
        self._raw = raw
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "version": 3,
                                    "data": (raw.ctypes.data, False)}

    def __del__(self):
        _give_back(self._raw)


def empty(shape, dtype):
    """A new, uninitialized C-contiguous array of `shape` and `dtype`."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    return np.asarray(_Lease(_take(nbytes), shape, dtype))


def _take(nbytes):
    global _kept
    with _lock:
        for i in range(len(_free) - 1, -1, -1):
            if _free[i].nbytes == nbytes:
                _kept -= nbytes
                return _free.pop(i)
    return np.empty(nbytes, np.uint8)


def _give_back(raw):
    global _kept
    if _lock is None:  # interpreter shutdown
        return
    with _lock:
        _free.append(raw)
        _kept += raw.nbytes
        while _kept > MAX_KEPT_BYTES:
            _kept -= _free.pop(0).nbytes
