"""Clocks, the sampling loop and the measured ceilings (copy bandwidth, GEMM rate).

A sample times `inner` back-to-back calls and divides, so that per-call launch and
event overheads are amortized the same way for every implementation; each call reads
the next of several rotating input buffers, together larger than the last-level cache,
so no implementation is timed on warm-cache inputs. The runner takes the samples of all
implementations of a layer in interleaved rounds.
"""
from __future__ import annotations

import math
import time

import numpy as np


class WallClock:
    """perf_counter around a body; `sync(result)` waits for asynchronous work (JAX)."""

    def __init__(self, sync=None):
        self.sync = sync or (lambda result: None)

    def __call__(self, body):
        self.sync(None)
        t0 = time.perf_counter()
        self.sync(body())
        return time.perf_counter() - t0


class EventClock:
    """CUDA events recorded on the framework's current stream around a body."""

    def __init__(self, new_event, elapsed_ms):
        self.new_event, self.elapsed_ms = new_event, elapsed_ms

    def __call__(self, body):
        start, end = self.new_event(), self.new_event()
        start.record()
        body()
        end.record()
        end.synchronize()
        return self.elapsed_ms(start, end) / 1e3


def cupy_clock():
    import cupy

    return EventClock(cupy.cuda.Event, cupy.cuda.get_elapsed_time)


def torch_cuda_clock():
    import torch

    return EventClock(lambda: torch.cuda.Event(enable_timing=True), lambda s, e: s.elapsed_time(e))


def buffer_count(input_bytes, cache_bytes, most=16):
    """Enough rotating input buffers that together they exceed twice the cache."""
    return int(min(most, max(2, math.ceil(2 * cache_bytes / max(input_bytes, 1)))))


class Timer:
    """One implementation's timer: warm-up, then samples of `inner` back-to-back calls on
    rotating buffer indices, `inner` chosen so that a sample lasts `min_sample_s`."""

    def __init__(self, call, buffers, clock, warmup, min_sample_s):
        self.call, self.buffers, self.clock = call, buffers, clock
        self.count, self.samples = 0, []
        for _ in range(warmup):
            self._run(1)
        one = max(self._run(1), 1e-7)
        self.inner = int(min(1000, max(1, math.ceil(min_sample_s / one))))

    def _run(self, n):
        def body():
            out = None
            for _ in range(n):
                out = self.call(self.count % self.buffers)
                self.count += 1
            return out
        return self.clock(body)

    def sample(self):
        self.samples.append(self._run(self.inner) / self.inner)
        return self.samples[-1]

    def result(self):
        return stats(self.samples) | {"inner": self.inner, "buffers": self.buffers}


def stats(samples):
    p10, median, p90 = np.percentile(samples, [10, 50, 90])
    return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90),
            "samples_s": [float(s) for s in samples]}


def _best_time(fn, clock, repeats=5):
    """A ceiling is what the machine can do: the fastest of a few runs after a warm-up."""
    fn()  # warm-up: allocation, library handles, GEMM heuristics
    return min(clock(fn) for _ in range(repeats))


def copy_bandwidth(xp, clock, nbytes):
    """Measured copy bandwidth (bytes/s, read + write counted) with NumPy or CuPy."""
    src = xp.ones(nbytes // 4, dtype=xp.float32)
    dst = xp.empty_like(src)
    return 2 * src.nbytes / _best_time(lambda: xp.copyto(dst, src), clock)


def gemm_rates(gemms, clock):
    """FLOP/s of each library's square GEMM: {mode: {library: (n, fn)}} -> same keys."""
    return {mode: {lib: 2 * n ** 3 / _best_time(fn, clock) for lib, (n, fn) in libs.items()}
            for mode, libs in gemms.items()}


def cpu_cache_bytes(default=32 << 20):
    """The last-level cache size the kernel reports, else a typical server L3."""
    import glob

    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        text = open(path).read().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=default)
