"""Clocks, the sampling loop, device time and the measured ceilings (copy bandwidth,
GEMM rate).

A sample times `inner` back-to-back calls and divides, so that per-call launch and
event overheads are amortized the same way for every implementation; each call reads
the next of several rotating input buffers, together more than twice the last-level
cache (at most MOST_BUFFERS: a layer too small for that is recorded as cache-resident),
so no implementation is timed on warm-cache inputs. The runner takes the samples of all
implementations of a layer in interleaved rounds. Device time (GPU) is the busy time the
profiler records for the same calls, the same way for every framework.
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


MOST_BUFFERS = 1024  # a tiny layer would need thousands: the record says it stayed cache-resident


def buffer_count(input_bytes, cache_bytes, most=MOST_BUFFERS):
    """Enough rotating input buffers that together they exceed twice the cache (the last
    one read is then evicted before it comes round again), at most `most`."""
    return int(min(most, max(2, 2 * cache_bytes // max(input_bytes, 1) + 1)))


def rotation(input_bytes, count, cache_bytes):
    """What a layer's rotation covers: its bytes, the cache's, and whether the inputs
    stay cache-resident (the rotation does not exceed twice the cache)."""
    return {"buffers": count, "bytes": input_bytes * count, "cache_bytes": cache_bytes,
            "cache_resident": input_bytes * count <= 2 * cache_bytes}


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
        return stats(self.samples) | {"inner": self.inner}

    def device_time(self, calls):
        """Device time per call: `calls` calls on the rotating inputs under torch.profiler
        (CUDA activities), the GPU's busy time over them divided by `calls`. One method for
        ours, PyTorch and XLA alike; it leaves out what each framework's Python dispatch
        costs the host, unless the GPU waited for it (idle gaps are not counted)."""
        import torch
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            self._run(calls)
            torch.cuda.synchronize()
        return device_events_seconds(prof.events()) / calls


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


# Device activities that occupy the GPU, as torch.profiler (Kineto) names them; API calls
# and synchronizations are the host's time.
DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")


def busy_seconds(intervals):
    """Seconds covered by the union of (start, end) intervals: kernels that overlap on
    two streams count once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def device_events_seconds(events):
    """The GPU's busy seconds in a torch.profiler event list: every kernel, copy and
    memset of the process, whichever framework launched it (CUPTI records them all)."""
    return busy_seconds((e.time_range.start * 1e-6, e.time_range.end * 1e-6) for e in events
                        if str(getattr(e, "device_type", "")).endswith("CUDA")
                        and e.activity_type in DEVICE_ACTIVITIES)
