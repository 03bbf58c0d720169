"""A small workload for compute-sanitizer (memcheck, racecheck, initcheck).

Covers each dtype, both layouts, 1D and 2D, specialized and generic kernel extents, the
halo and the no-halo (global gather) paths, several filter blocks, a depth multiplier
above the channel chunk, softmax / log_softmax, with and without bias on the SIMT kernel
(sepconv_fused); and the tensor-core kernel (sepconv_tc: float16 and float32 with
allow_tf32) with F above 256 (filter blocks), strides, a generic extent and grids small
enough to split the channels (sepconv_tc_reduce). Every result is checked against the
float64 reference, so the run also fails on wrong numbers; the tensor-core cases also
fail if the dispatch did not pick that kernel.

    compute-sanitizer --tool racecheck python benchmarks/gpu_sanitize_driver.py
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np

from sepconv_gpu import ops
from sepconv_gpu.backends import cuda_kernels

TOLERANCE = {"float16": 4e-3, "float32": 2e-5, "float64": 1e-12}
# TF32 rounds both pointwise operands to 10-bit mantissas (unit roundoff 2^-11), as fp16
# does: the float16 bound applies (tests/test_tensor_core_kernel.py derives it).
TF32_TOLERANCE = TOLERANCE["float16"]

CASES = [
    # rank, x shape (channels_last), kernel, M, F, strides, padding, dilation, activation, bias
    (2, (2, 11, 13, 8), 3, 1, 20, 1, "same", 1, "relu", True),
    (2, (1, 12, 12, 5), 5, 2, 70, 2, "same", 1, "gelu", False),
    (2, (2, 9, 10, 3), (2, 4), 17, 9, 1, "valid", (2, 1), "softmax", True),
    (2, (1, 40, 38, 4), 3, 1, 6, 1, "same", 15, "tanh", True),       # no halo: global gather
    (1, (2, 300, 6), 3, 1, 16, 1, "causal", 1, "log_softmax", True),
    (1, (1, 257, 12), 31, 2, 40, 1, "same", 1, "swish", False),
]

TENSOR_CORE_CASES = [
    # rank, x shape (channels_last, C a multiple of 8), kernel, F, strides, padding, dilation,
    # activation, bias; M = 1
    (2, (2, 19, 21, 64), 3, 72, 1, "same", 1, "relu", True),
    (2, (1, 14, 14, 32), 3, 300, 2, "same", 1, "gelu", False),     # F > 256: filter blocks
    (2, (2, 9, 10, 40), (2, 5), 24, 1, "valid", (2, 1), "silu", True),  # generic extent
    (2, (1, 7, 7, 256), 3, 64, 1, "same", 1, "linear", True),      # tiny grid: channel split
    (1, (2, 200, 16), 31, 40, 1, "same", 1, "sigmoid", True),
]


@contextlib.contextmanager
def _recording_launches():
    """The kinds of the kernels launched inside the block ("fused" = SIMT, "tc", "tc_reduce", "softmax")."""
    from sepconv_gpu.backends import cuda_backend

    kinds, real_launch = [], cuda_backend._launch
    cuda_backend._launch = lambda launch, arrays: (kinds.append(launch.kind), real_launch(launch, arrays))
    try:
        yield kinds
    finally:
        cuda_backend._launch = real_launch


def _tensor_core_smem_limit():
    """The shared memory the planner gives sepconv_tc on the current device (0 below sm_80)."""
    import cupy

    from sepconv_gpu.backends import cuda_backend

    return cuda_backend._shared_memory_limit(cupy.cuda.Device().id)


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
    for dtype, allow_tf32 in (("float16", False), ("float32", True)):
        for rank, shape, k, f, s, pad, d, act, use_bias in TENSOR_CORE_CASES:
            kernel = (k,) * rank if isinstance(k, int) else k
            c = shape[-1]
            x = rng.uniform(-1, 1, shape).astype(dtype)
            dk = (rng.uniform(-1, 1, kernel + (c, 1)) / np.sqrt(np.prod(kernel))).astype(dtype)
            pk = (rng.uniform(-1, 1, (1,) * rank + (c, f)) / np.sqrt(c)).astype(dtype)
            b = rng.uniform(-1, 1, f).astype(dtype) if use_bias else None
            kw = dict(strides=s, padding=pad, dilation_rate=d, activation=act)
            with _recording_launches() as launched:
                y = ops.separable_conv(rank, x, dk, pk, b, backend="cuda", allow_tf32=allow_tf32, **kw)
            ref = ops.reference_separable_conv(rank, x, dk, pk, b, **kw)
            err = float(np.max(np.abs(y.astype(np.float64) - ref)))
            # below H100's shared memory (sm_86/89: 99 KB; sm_75: no tensor-core kernel) a
            # case may rightly run SIMT; on H100-class devices it must run sepconv_tc
            tc_expected = _tensor_core_smem_limit() >= cuda_kernels.TC_SMEM_LIMIT
            ok = (("tc" in launched or not tc_expected)
                  and err <= TF32_TOLERANCE * max(1.0, float(np.max(np.abs(ref)))))
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {dtype}{' tf32' if allow_tf32 else ''} {rank}d {shape} "
                  f"k={kernel} F={f} s={s} d={d} {pad} {act}: launches {launched}, max err {err:.3g}")
    print(f"{failures} wrong results")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
