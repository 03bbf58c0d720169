"""python -m benchmarks --host-overhead: what a call costs in Python, per suite layer.

Three figures per layer, measured in one run on this machine, medians of per-call
samples after a warm-up call:

  cuda   `layer(x)` to the kernel launch call, for a CuPy input of a seen shape (the
         layer's shape at batch 1): the CUDA backend runs against the fake CuPy of
         benchmarks/fake_cupy.py, whose launch only records a timestamp. No GPU is used,
         and what CuPy itself spends converting the launch arguments is not included.
  numpy  a whole NumPy-backend call on a tiny input: the layer's kernel, stride,
         activation and bias at batch 1, spatial 4, 8 channels -> 8 filters.
  torch  PyTorch's per-call CPU time for the same depthwise + 1x1 + activation module on
         the same tiny input (torch.no_grad, one thread as ours; skipped where torch is not
         installed).

The ratios are ours / torch. The last line is
`host-overhead: cuda median X us, numpy tiny median Y us, torch cpu median Z us`
(medians over the layers; "n/a" for torch where it is absent).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

import sepconv_gpu as sg
from sepconv_gpu import geometry

from . import fake_cupy

TINY = {"batch": 1, "size": 4, "channels": 8, "filters": 8}
DEFAULT_CALLS = {"cuda": 2000, "numpy": 1000, "torch": 1000}


def _layer_class(rank):
    return sg.SeparableConv1D if rank == 1 else sg.SeparableConv2D


def _make_layer(spec, backend, channels, filters):
    layer = _layer_class(spec.rank)(filters, spec.kernel, strides=spec.stride, padding="same",
                                    activation=spec.activation, use_bias=spec.use_bias,
                                    backend=backend)
    rng = np.random.default_rng(0)
    layer.build((1,) + (1,) * spec.rank + (channels,))
    layer.set_weights([rng.uniform(-0.3, 0.3, w.shape).astype(np.float32) for w in layer.weights])
    return layer


def _tiny_input(spec):
    shape = (TINY["batch"],) + (TINY["size"],) * spec.rank + (TINY["channels"],)
    return np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)


def cuda_to_launch_us(spec, calls, backend_and_fake):
    """Median µs from `layer(x)` to the launch call (fake CuPy, batch 1, the layer's shape)."""
    backend, cupy = backend_and_fake
    layer = _make_layer(spec, backend.CupyOps(), spec.channels, spec.filters)
    x = cupy.asarray(np.zeros(spec.input_shape(1), np.float32))
    layer(x)  # warm-up: weights onto the "device", kernels loaded, the call planned
    cupy.record = False
    samples = []
    try:
        for _ in range(calls):
            start = time.perf_counter_ns()
            layer(x)
            samples.append(cupy.last_launch_ns - start)
    finally:
        cupy.record = True
    return statistics.median(samples) / 1e3


def _per_call_us(fn, calls):
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e3


def numpy_tiny(spec, calls):
    """(median µs of a whole tiny NumPy-backend call, its layer, its input)."""
    layer = _make_layer(spec, "numpy", TINY["channels"], TINY["filters"])
    x = _tiny_input(spec)
    return _per_call_us(lambda: layer(x), calls), layer, x


def torch_tiny(spec, calls, layer, x):
    """(median µs of PyTorch's CPU module on the tiny input, whether it agrees with ours),
    or None where torch is not installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    geom = geometry.make_geometry(spec.rank, x.shape, layer.depthwise_kernel.shape,
                                  layer.pointwise_kernel.shape,
                                  layer.bias.shape if spec.use_bias else None,
                                  (spec.stride,) * spec.rank, "same", "channels_last",
                                  (1,) * spec.rank)
    pads = []  # F.pad order: last axis first, (before, after) each
    for axis in reversed(range(2 - spec.rank, 2)):
        n, k, s = geom.in_size[axis], geom.kernel[axis], geom.strides[axis]
        total = max((geom.out_size[axis] - 1) * s + k - n, 0)
        pads += [geom.pad_before[axis], total - geom.pad_before[axis]]
    conv = F.conv1d if spec.rank == 1 else F.conv2d
    c, f = TINY["channels"], TINY["filters"]
    weights = layer.get_weights()
    dk = torch.from_numpy(np.ascontiguousarray(np.moveaxis(weights[0][..., 0], -1, 0))[:, None])
    pk = torch.from_numpy(np.ascontiguousarray(weights[1].reshape(c, f).T))
    pk = pk.reshape((f, c) + (1,) * spec.rank)
    bias = torch.from_numpy(weights[2]) if spec.use_bias else None
    act = {None: lambda y: y, "relu6": F.relu6, "swish": F.silu, "relu": F.relu}[spec.activation]
    stride = spec.stride

    class Module(torch.nn.Module):  # depthwise + 1x1 + activation, as the peers time it
        def forward(self, t):
            t = conv(F.pad(t, pads), dk, stride=stride, groups=c)
            return act(conv(t, pk, bias))

    module = Module()
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as ours runs a tiny call; idle pool threads only add noise
    try:
        with torch.no_grad():
            us = _per_call_us(lambda: module(xt), calls)
            y = np.moveaxis(module(xt).numpy(), 1, -1)
    finally:
        torch.set_num_threads(threads)
    agrees = bool(np.allclose(y, layer(x), atol=1e-4, rtol=1e-4))
    return us, agrees


def run(layers, calls=None, out=print):
    """Measure every layer, print the table and the summary line; returns the rows."""
    calls = {**DEFAULT_CALLS, **(calls or {})}
    backend_and_fake = fake_cupy.load_backend(arena_bytes=64 << 20)
    rows = []
    out(f"{'layer':34} {'cuda us':>8} {'numpy us':>9} {'torch us':>9} "
        f"{'cuda/torch':>10} {'numpy/torch':>11}")
    for spec in layers:
        cuda = cuda_to_launch_us(spec, calls["cuda"], backend_and_fake)
        numpy_us, layer, x = numpy_tiny(spec, calls["numpy"])
        torch_result = torch_tiny(spec, calls["torch"], layer, x)
        torch_us, agrees = torch_result if torch_result else (None, None)
        rows.append({"key": spec.key, "cuda_us": cuda, "numpy_tiny_us": numpy_us,
                     "torch_cpu_us": torch_us, "torch_agrees": agrees})
        ratio = (lambda ours: f"{ours / torch_us:.2f}") if torch_us else (lambda ours: "n/a")
        torch_text = "n/a" if torch_us is None else f"{torch_us:.1f}" + ("" if agrees else "!")
        out(f"{spec.key:34} {cuda:8.1f} {numpy_us:9.1f} {torch_text:>9} "
            f"{ratio(cuda):>10} {ratio(numpy_us):>11}")
    if any(r["torch_agrees"] is False for r in rows):
        out("! torch's output differs from ours on that layer: its time is not comparable")
    out(summary_line(rows))
    return rows


def summary_line(rows):
    median = lambda key: statistics.median(r[key] for r in rows)
    torch_times = [r["torch_cpu_us"] for r in rows if r["torch_cpu_us"] is not None]
    torch_text = f"{statistics.median(torch_times):.1f} us" if torch_times else "n/a"
    return (f"host-overhead: cuda median {median('cuda_us'):.1f} us, numpy tiny median "
            f"{median('numpy_tiny_us'):.1f} us, torch cpu median {torch_text}")
