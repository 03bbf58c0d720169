"""NVTX ranges in the library's own domain; a no-op where the `nvtx` package is absent.

The `nvtx` package itself costs next to nothing when no profiler is attached, so ranges
stay on in the hot path. See the README for viewing them in Nsight Systems.
"""
from __future__ import annotations

import contextlib

DOMAIN = "sepconv_gpu"

try:
    import nvtx as _nvtx
except Exception:  # not installed (e.g. the device machine, CI): ranges vanish
    _nvtx = None


_NO_RANGE = contextlib.nullcontext()  # reusable: one for every call without nvtx


def annotate(message):
    """A context manager marking one op or layer call."""
    if _nvtx is None:
        return _NO_RANGE
    return _nvtx.annotate(message, domain=DOMAIN)
