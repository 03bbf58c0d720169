"""The float64 reference every implementation is checked against before it is timed.

Computed with the case's array module (CuPy on the GPU, where float64 is fast enough for
every suite layer at batch 32; NumPy on the CPU) from the input and weights exactly as the
implementations receive them (input in the mode's dtype, weights rounded to it), widened
to float64: depthwise by summing the shifted, strided input per tap, pointwise as one
matmul, then bias and activation.
"""
from __future__ import annotations

import numpy as np

# Largest relative error (max |out - ref| / max |ref|) an implementation may show per mode:
# float32 is exact (a few ulps of accumulation order over up to 2048 channels); TF32 and
# float16 round inputs to 10 mantissa bits (2^-11 relative) and may round the depthwise
# result before the pointwise sum. A wrong tap, padding, stride or layout is O(1).
TOLERANCE = {"float32": 2e-5, "tf32": 1e-2, "float16": 1e-2}

_ACTIVATIONS = {
    None: lambda xp, y: y,
    "relu6": lambda xp, y: xp.clip(y, 0.0, 6.0),
    "swish": lambda xp, y: y / (1.0 + xp.exp(-y)),
}


def separable_conv(xp, x, depthwise, pointwise, bias, case_2d, activation):
    """act(bias + pointwise(depthwise(x))) in float64. x: channels_last (N, *spatial, C);
    depthwise (KH, KW, C), pointwise (C, F), bias (F,) or None; case_2d: `Case.as_2d()`
    (kernel, strides, (before, after) pads per axis, 1D as height 1)."""
    (kh, kw), (sh, sw), pads = case_2d
    x = xp.asarray(x, dtype=xp.float64)
    x = x[:, None] if x.ndim == 3 else x  # 1D as height 1
    n, c = x.shape[0], x.shape[-1]
    padded = xp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    oh = (padded.shape[1] - kh) // sh + 1
    ow = (padded.shape[2] - kw) // sw + 1
    dk = xp.asarray(depthwise, dtype=xp.float64)
    acc = xp.zeros((n, oh, ow, c), dtype=xp.float64)
    for i in range(kh):
        for j in range(kw):
            acc += padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] * dk[i, j]
    y = acc.reshape(-1, c) @ xp.asarray(pointwise, dtype=xp.float64)
    if bias is not None:
        y += xp.asarray(bias, dtype=xp.float64)
    return _ACTIVATIONS[activation](xp, y)


def relative_error(out, ref):
    """max |out - ref| / max |ref| (at least 1 in the denominator), inf for a wrong shape
    or a non-finite output. Both on the host, any dtype."""
    out = np.asarray(out, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.max(np.abs(out - ref), initial=0.0) / max(1.0, float(np.max(np.abs(ref), initial=0.0))))
