"""The compiled CPU kernel: depthwise, pointwise, bias and activation in Numba, on every core.

The NumPy backend (numpy_backend.py) calls `separable_conv` here when Numba imports (the
"numba" CPU kernel, `backends.cpu_kernel`). Two plans, chosen per call by its size:

- fused (small calls): one parallel loop over blocks of output positions; per position the
  depthwise sums for all channels go into a thread-local row that stays in L1, the
  pointwise product, bias and activation follow from it, and the result is written once.
- chunked (the rest): per chunk of output positions (sized to stay in cache), a parallel
  depthwise pass into one buffer, one BLAS matmul from it (NumPy's, on all of BLAS's
  threads), then a parallel epilogue (bias, activation) over the matmul's still-cached
  result. Numba's and BLAS's threads take turns, never run at once: no oversubscription.
  BLAS's GEMM beats a loop nest compiled by Numba several times over (measured: 140-180
  against 25-45 GFLOP/s per core at K = 32-728), which is why it does the pointwise here.

Every array reaches the kernels flat, with its element strides in (batch, row, column,
channel) order, so one compiled specialization serves both layouts, 1D and 2D, every
padding, stride and dilation: one compile per kernel and dtype (float32, float64),
cached on disk by Numba (beside this file, or NUMBA_CACHE_DIR / a user cache directory
where that is read-only). float16 and bfloat16 compute in float32 and are rounded once.

Activations: the elementwise ones in `_FUSED` run in the kernels, in the compute dtype
(gelu in its erfc form, which does not cancel for large negative inputs); any other is
applied by NumPy to the whole compute-dtype result, before the one rounding to float16 or
bfloat16.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

# No reassociation (the tolerance table assumes sums in the reference's order, tap by
# tap); "contract" lets a multiply and its add become one FMA, which only rounds less.
_FASTMATH = {"contract"}
_JIT = dict(cache=True, fastmath=_FASTMATH, nogil=True)

# Output positions per parallel task: enough work per task to hide the scheduling.
BLOCK = 64
# Depthwise products (positions · taps · C·M) plus pointwise ones (positions · K · F) up to
# which a call runs fused: at most a few hundred microseconds of work, where the chunked
# plan's three passes and BLAS's thread start-up cost more than the loop nest loses.
FUSED_MAX_PRODUCTS = 1 << 20
# Bytes of depthwise intermediate plus matmul result per chunk: within the L2 caches.
CHUNK_BYTES = 1 << 20

# Activation kernel_id -> code for `_activate_row` (0 is linear).
_FUSED = {"linear": 0, "relu": 1, "relu6": 2, "leaky_relu": 3, "silu": 4, "sigmoid": 5,
          "gelu": 6, "tanh": 7}


def fused_code(activation):
    """The in-kernel code of `activation`, or None when NumPy must apply it."""
    return _FUSED.get(activation.kernel_id)


# Geometry vector `g` (int64), the kernels' one description of the convolution.
(_H, _W, _C, _M, _KH, _KW, _SH, _SW, _DH, _DW, _PT, _PL, _OH, _OW) = range(14)


def _geometry_vector(geom):
    (h, w), (kh, kw), (sh, sw) = geom.in_size, geom.kernel, geom.strides
    (dh, dw), (pt, pl), (oh, ow) = geom.dilation, geom.pad_before, geom.out_size
    return np.array([h, w, geom.channels, geom.depth_multiplier, kh, kw, sh, sw, dh, dw,
                     pt, pl, oh, ow], dtype=np.int64)


@numba.njit(inline="always", **_JIT)
def _depthwise_position(x, xs, g, dk, p, row):
    """row[:C·M] = the depthwise sums at flat output position p (batch, row, column), tap
    by tap in the reference's order. A tap in the padding adds 0 · weight (IEEE: an
    infinite weight makes NaN there, as in the reference)."""
    ow, oh, c, m = g[_OW], g[_OH], g[_C], g[_M]
    col = p % ow
    r = (p // ow) % oh
    n = p // (ow * oh)
    for k in range(c * m):
        row[k] = 0.0
    for i in range(g[_KH]):
        ih = r * g[_SH] - g[_PT] + i * g[_DH]
        for j in range(g[_KW]):
            iw = col * g[_SW] - g[_PL] + j * g[_DW]
            inside = 0 <= ih < g[_H] and 0 <= iw < g[_W]
            base = n * xs[0] + ih * xs[1] + iw * xs[2] if inside else 0
            if m == 1:
                if inside:
                    for ch in range(c):
                        row[ch] += x[base + ch * xs[3]] * dk[i, j, ch, 0]
                else:
                    for ch in range(c):
                        row[ch] += 0.0 * dk[i, j, ch, 0]
            else:
                for ch in range(c):
                    v = x[base + ch * xs[3]] if inside else x.dtype.type(0.0)
                    for q in range(m):
                        row[ch * m + q] += v * dk[i, j, ch, q]


@numba.njit(inline="always", **_JIT)
def _activate_row(row, act, param):
    """The fused activations (codes in `_FUSED`) in place, as activations.py computes them."""
    one = row.dtype.type(1.0)
    if act == 1:  # relu (NaN stays NaN, as NumPy's maximum)
        for f in range(row.size):
            if row[f] < 0:
                row[f] = 0.0
    elif act == 2:  # relu6: clip to [0, 6]
        for f in range(row.size):
            v = row[f]
            row[f] = 0.0 if v < 0 else (6.0 if v > 6 else v)
    elif act == 3:  # leaky_relu
        slope = row.dtype.type(param)
        for f in range(row.size):
            v = row[f]
            if not v >= 0:
                row[f] = v * slope
    elif act == 4 or act == 5:  # silu, sigmoid: exp of a non-positive number only
        for f in range(row.size):
            v = row[f]
            e = np.exp(-abs(v))
            s = one / (one + e) if v >= 0 else e / (one + e)
            row[f] = v * s if act == 4 else s
    elif act == 6:  # gelu = x/2 · erfc(-x/√2), which does not cancel for x << 0
        for f in range(row.size):
            v = row[f]
            row[f] = 0.5 * v * math.erfc(-v * 0.7071067811865476)
    elif act == 7:
        for f in range(row.size):
            row[f] = np.tanh(row[f])


@numba.njit(inline="always", **_JIT)
def _store_row(row, y, ys, g, p):
    """row (F values of flat output position p) into y, a flat array with strides ys."""
    ow, oh = g[_OW], g[_OH]
    base = (p // (ow * oh)) * ys[0] + ((p // ow) % oh) * ys[1] + (p % ow) * ys[2]
    for f in range(row.size):
        y[base + f * ys[3]] = row[f]


@numba.njit(parallel=True, **_JIT)
def _fused(x, xs, g, dk, pk, bias, act, param, y, ys, count):
    """y = activation(bias + pointwise(depthwise(x))) for output positions [0, count)."""
    k, f = pk.shape
    for block in prange((count + BLOCK - 1) // BLOCK):
        d = np.empty(k, dtype=pk.dtype)
        out = np.empty(f, dtype=pk.dtype)
        for p in range(block * BLOCK, min(count, (block + 1) * BLOCK)):
            _depthwise_position(x, xs, g, dk, p, d)
            out[:] = bias
            for kk in range(k):
                a = d[kk]
                for ff in range(f):
                    out[ff] += a * pk[kk, ff]
            _activate_row(out, act, param)
            _store_row(out, y, ys, g, p)


@numba.njit(parallel=True, **_JIT)
def _depthwise(x, xs, g, dk, p0, d):
    """d[q] = the depthwise sums at output position p0 + q, for every row of d."""
    count = d.shape[0]
    for block in prange((count + BLOCK - 1) // BLOCK):
        for q in range(block * BLOCK, min(count, (block + 1) * BLOCK)):
            _depthwise_position(x, xs, g, dk, p0 + q, d[q])


@numba.njit(parallel=True, **_JIT)
def _epilogue(z, bias, has_bias, act, param, y, ys, g, p0, scatter):
    """z (positions p0 + q, filters) += bias, then the activation, in place; with
    `scatter`, each row is then stored into y (channels_first: z is not y's memory)."""
    count, f = z.shape
    for block in prange((count + BLOCK - 1) // BLOCK):
        for q in range(block * BLOCK, min(count, (block + 1) * BLOCK)):
            row = z[q]
            if has_bias:
                for ff in range(f):
                    row[ff] += bias[ff]
            _activate_row(row, act, param)
            if scatter:
                _store_row(row, y, ys, g, p0 + q)


def _element_strides(a, geom):
    """Element strides of contiguous array `a` (user layout) in (batch, row, column,
    channel) order; 1D is one row."""
    s = [st // a.itemsize for st in a.strides]
    if geom.channels_first:
        s = [s[0]] + s[2:] + [s[1]]
    if geom.rank == 1:
        s = [s[0], 0] + s[1:]
    return np.array(s, dtype=np.int64)


def separable_conv(x, depthwise, pointwise, bias, geom, activation, compute):
    """y = activation(bias + pointwise(depthwise(x))) in `compute` (float32 or float64),
    returned in that dtype; the caller rounds it to x's dtype."""
    x = np.ascontiguousarray(x, dtype=compute)
    kh, kw = geom.kernel
    dk = np.ascontiguousarray(np.reshape(depthwise, (kh, kw, geom.channels, geom.depth_multiplier)),
                              dtype=compute)
    pk = np.ascontiguousarray(np.reshape(pointwise, (geom.intermediate_channels, geom.filters)),
                              dtype=compute)
    b = np.zeros(geom.filters, compute) if bias is None else np.ascontiguousarray(bias, dtype=compute)
    code = fused_code(activation)
    act, param = (code, float(activation.kernel_param)) if code is not None else (0, 0.0)
    y = np.empty(geom.output_shape, dtype=compute)
    g, count = _geometry_vector(geom), geom.output_positions
    xs, ys = _element_strides(x, geom), _element_strides(y, geom)
    xf, yf = x.reshape(-1), y.reshape(-1)
    k, f = pk.shape
    taps = kh * kw
    if count * (taps * k + k * f) <= FUSED_MAX_PRODUCTS:
        _fused(xf, xs, g, dk, pk, b, act, param, yf, ys, count)
    else:
        _chunked(xf, xs, g, dk, pk, b, bias is not None, act, param, yf, ys, count, geom.channels_first)
    if code is None and not activation.is_linear:
        y = activation(y)
    return y


def _chunked(xf, xs, g, dk, pk, b, has_bias, act, param, yf, ys, count, channels_first):
    k, f = pk.shape
    chunk = max(BLOCK, CHUNK_BYTES // (pk.itemsize * (k + f)) // BLOCK * BLOCK)
    chunk = min(chunk, count)
    d = np.empty((chunk, k), dtype=pk.dtype)
    z = np.empty((chunk, f), dtype=pk.dtype) if channels_first else None
    rows = yf.reshape(-1, f)  # channels_last: output positions are y's rows
    for p0 in range(0, count, chunk):
        n = min(chunk, count - p0)
        _depthwise(xf, xs, g, dk, p0, d[:n])
        out = z[:n] if channels_first else rows[p0:p0 + n]
        np.matmul(d[:n], pk, out=out)
        _epilogue(out, b, has_bias, act, param, yf, ys, g, p0, channels_first)
