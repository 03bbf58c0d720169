"""A small workload for compute-sanitizer (memcheck, racecheck, initcheck).

Covers each dtype, both layouts, 1D and 2D, specialized and generic kernel extents, the
halo and the no-halo (global gather) paths, several filter blocks, a depth multiplier
above the channel chunk, softmax / log_softmax, with and without bias; every result is
checked against the float64 reference, so the run also fails on wrong numbers.

    compute-sanitizer --tool racecheck python benchmarks/gpu_sanitize_driver.py
"""
from __future__ import annotations

import sys

import numpy as np

from sepconv_gpu import ops

TOLERANCE = {"float16": 4e-3, "float32": 2e-5, "float64": 1e-12}

CASES = [
    # rank, x shape (channels_last), kernel, M, F, strides, padding, dilation, activation, bias
    (2, (2, 11, 13, 8), 3, 1, 20, 1, "same", 1, "relu", True),
    (2, (1, 12, 12, 5), 5, 2, 70, 2, "same", 1, "gelu", False),
    (2, (2, 9, 10, 3), (2, 4), 17, 9, 1, "valid", (2, 1), "softmax", True),
    (2, (1, 40, 38, 4), 3, 1, 6, 1, "same", 15, "tanh", True),       # no halo: global gather
    (1, (2, 300, 6), 3, 1, 16, 1, "causal", 1, "log_softmax", True),
    (1, (1, 257, 12), 31, 2, 40, 1, "same", 1, "swish", False),
]


def main():
    rng = np.random.default_rng(0)
    failures = 0
    for dtype in ("float32", "float16", "float64"):
        for data_format in ("channels_last", "channels_first"):
            for rank, shape, k, m, f, s, pad, d, act, use_bias in CASES:
                kernel = (k,) * rank if isinstance(k, int) else k
                c = shape[-1]
                x = rng.uniform(-1, 1, shape).astype(dtype)
                if data_format == "channels_first":
                    x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
                dk = (rng.uniform(-1, 1, kernel + (c, m)) / np.sqrt(np.prod(kernel))).astype(dtype)
                pk = (rng.uniform(-1, 1, (1,) * rank + (c * m, f)) / np.sqrt(c * m)).astype(dtype)
                b = rng.uniform(-1, 1, f).astype(dtype) if use_bias else None
                kw = dict(strides=s, padding=pad, data_format=data_format, dilation_rate=d,
                          activation=act)
                y = ops.separable_conv(rank, x, dk, pk, b, backend="cuda", **kw)
                ref = ops.reference_separable_conv(rank, x, dk, pk, b, **kw)
                err = float(np.max(np.abs(y.astype(np.float64) - ref)))
                ok = err <= TOLERANCE[dtype] * max(1.0, float(np.max(np.abs(ref))))
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {dtype} {data_format} {rank}d {shape} k={kernel} "
                      f"M={m} F={f} s={s} d={d} {pad} {act}: max err {err:.3g}")
    print(f"{failures} wrong results")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
