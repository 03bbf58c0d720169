"""The compiled CPU kernel: depthwise, pointwise, bias and activation in Numba, on every core.

The NumPy backend (numpy_backend.py) calls `separable_conv` here when Numba imports (the
"numba" CPU kernel, `backends.cpu_kernel`). Two plans, chosen per call by its size:

- fused (small calls, one thread: no hand-over to pay for): per output position, the
  depthwise sums for all channels into a row that stays in L1, the pointwise product,
  bias and activation from it, the result written once.
- chunked (the rest): chunks of output positions (sized to stay in L2) shared out to
  `threads()` threads; each chunk runs on one thread through a depthwise pass into its
  buffer, one BLAS matmul from it (BLAS held to one thread meanwhile: no
  oversubscription) straight into the chunk's rows of the output (channels_last; for
  channels_first into a second buffer) and an epilogue (bias, activation) over that
  still-cached result (for channels_first, which then writes it to the output once).
  BLAS's GEMM beats a loop nest compiled by Numba several times over (measured here:
  90-190 against 15-45 GFLOP/s per core at K = 32-728), hence BLAS for the pointwise.
  The threads are ours, not Numba's OpenMP pool: that pool's spinning workers starved
  BLAS's threads when the two took turns (measured: a matmul 7x slower).

Outputs come from `output_pool.empty`: large ones in memory recycled from freed outputs,
which spares the page zeroing of a fresh array's first touch.

Every array reaches the kernels flat, with its element strides in (batch, row, column,
channel) order, so one compiled specialization serves both layouts, 1D and 2D, every
padding, stride and dilation: one compile per kernel and dtype (float32, float64),
cached on disk by Numba (beside this file, or NUMBA_CACHE_DIR / a user cache directory
where that is read-only). float16 and bfloat16 compute in float32 and are rounded once.

Activations, all in the compute dtype, before the one rounding to float16 or bfloat16:
those in `_FUSED` run in the kernels (gelu in its erfc form, which does not cancel for
large negative inputs); other elementwise ones (silu, sigmoid, tanh, ...: Numba's scalar
exp is several times slower than NumPy's vectorized one) are applied by NumPy to each
chunk while it is in cache, silu and sigmoid in this module's branch-free forms
(`_CHUNK_FORMS`); the rest (softmax and other functions of several outputs, a
non-default parameter) by NumPy to the whole result.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import math
import threading

import numba
import numpy as np

from ... import geometry as _geometry
from . import output_pool
from .numpy_backend import _channels_last_4d

# No reassociation (the tolerance table assumes sums in the reference's order, tap by
# tap); "contract" lets a multiply and its add become one FMA, which only rounds less.
_FASTMATH = {"contract"}
_JIT = dict(cache=True, fastmath=_FASTMATH, nogil=True)

# Depthwise products (positions · taps · C·M) plus pointwise ones (positions · K · F) up to
# which a call runs fused: at most a few hundred microseconds of work, where the chunked
# plan's three passes and BLAS's thread start-up cost more than the loop nest loses.
FUSED_MAX_PRODUCTS = 1 << 20
# Multiply-adds per depthwise inner loop (neighbouring outputs share one: _depthwise_rows).
RUN_ELEMENTS = 256
# Bytes of depthwise intermediate plus matmul result per chunk: within the L2 caches.
CHUNK_BYTES = 1 << 20

# Activation kernel_id -> code for `_finish_rows` (0 is linear).
_FUSED = {"linear": 0, "relu": 1, "relu6": 2, "leaky_relu": 3, "gelu": 4}
# Known activations that are not elementwise: applied to the whole result.
_NOT_ELEMENTWISE = frozenset({"softmax", "log_softmax", "sparsemax", "glu"})


def _sigmoid(z):
    """1 / (1 + e^-z) in place: exp's overflow to inf gives the limit 0 exactly."""
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1
    np.reciprocal(z, out=z)
    return z


def _silu(z):
    """z / (1 + e^-z): activations.silu's x · sigmoid(x) picks each element's branch with
    np.where, several times slower on mixed signs (measured: 22 against 1.7 ms per 2M)."""
    t = np.exp(np.negative(z))
    t += 1
    return np.divide(z, t, out=z)


# Chunk-wise NumPy forms of elementwise activations, by kernel_id (in place on a chunk).
_CHUNK_FORMS = {"sigmoid": _sigmoid, "silu": _silu}


# Geometry vector `g` (int64), the kernels' one description of the convolution.
(_H, _W, _C, _M, _KH, _KW, _SH, _SW, _DH, _DW, _PT, _PL, _OH, _OW) = range(14)


def _geometry_vector(geom):
    (h, w), (kh, kw), (sh, sw) = geom.in_size, geom.kernel, geom.strides
    (dh, dw), (pt, pl), (oh, ow) = geom.dilation, geom.pad_before, geom.out_size
    return np.array([h, w, geom.channels, geom.depth_multiplier, kh, kw, sh, sw, dh, dw,
                     pt, pl, oh, ow], dtype=np.int64)


@numba.njit(inline="always", **_JIT)
def _depthwise_rows(x, xs, g, wt, p0, d, q0, n):
    """d[(q0 + q)·K : (q0 + q + 1)·K] = the K = C·M depthwise sums at flat output position
    p0 + q (batch, row, column), q < n, tap by tap in the reference's order.

    wt[t] is tap t's weights repeated `run` = wt.shape[1] // K times: with stride 1 along
    columns and M = 1, the inputs of `run` neighbouring outputs are contiguous, so one
    loop of run·C multiply-adds serves them all (a loop of C alone, for small C, is
    mostly its own start-up). A tap in the padding adds 0 · weight (IEEE: an infinite
    weight makes NaN there, as in the reference)."""
    h, w, c, m, kh, kw = g[_H], g[_W], g[_C], g[_M], g[_KH], g[_KW]
    sh, sw, dh, dw, pt, pl, oh, ow = g[_SH], g[_SW], g[_DH], g[_DW], g[_PT], g[_PL], g[_OH], g[_OW]
    xs0, xs1, xs2 = xs[0], xs[1], xs[2]  # channels are contiguous (xs[3] == 1)
    k = c * m
    run = wt.shape[1] // k if sw == 1 and m == 1 else 1
    q = q0
    while q < q0 + n:
        p = p0 + q - q0
        col = p % ow
        r = (p // ow) % oh
        b = p // (ow * oh)
        cols = min(run, ow - col, q0 + n - q)
        at = max(q * k, 0)  # max(): see `base` below
        for e in range(cols * k):
            d[at + e] = 0.0
        for i in range(kh):
            ih = r * sh - pt + i * dh
            j = 0
            while j < kw:
                t = i * kw + j
                first = col * sw - pl + j * dw  # input column of output col on tap j
                if (m == 1 and j + 2 < kw and 0 <= ih < h and first >= 0
                        and first + (cols - 1) * sw + 2 * dw < w):
                    # taps j, j + 1, j + 2 all inside the input for every output here: one
                    # pass adds the three, in the same order (a third of the loads and
                    # stores of d)
                    base = max(b * xs0 + ih * xs1 + first * xs2, 0)
                    base1, base2 = max(base + dw * xs2, 0), max(base + 2 * dw * xs2, 0)
                    for e in range(cols * c):
                        d[at + e] = ((d[at + e] + x[base + e] * wt[t, e]) + x[base1 + e] * wt[t + 1, e]
                                     ) + x[base2 + e] * wt[t + 2, e]
                    j += 3
                    continue
                j += 1
                # outputs col + [lo, hi) read inside the input on this tap
                lo, hi = 0, 0
                if 0 <= ih < h:
                    if cols == 1:
                        lo, hi = 0, 1 if 0 <= first < w else 0
                    else:
                        lo, hi = max(0, -first), min(cols, w - first)
                for o in range(cols):
                    if o < lo or o >= hi:
                        for e in range(k):
                            d[at + o * k + e] += 0.0 * wt[t, e]
                if hi > lo:
                    # max(): tells LLVM that these offsets are >= 0, so that the indexing
                    # below needs no negative-index wraparound, which would keep the loops
                    # from vectorizing (array views would too: their reference counting
                    # costs more than a short loop)
                    base = max(b * xs0 + ih * xs1 + (first + lo * sw) * xs2, 0)
                    out = max(at + lo * k, 0)
                    if m == 1:  # (hi - lo) neighbours, contiguous when cols > 1
                        for e in range((hi - lo) * c):
                            d[out + e] += x[base + e] * wt[t, e]
                    else:
                        for ch in range(c):
                            v = x[base + ch]
                            for e in range(m):
                                d[out + ch * m + e] += v * wt[t, ch * m + e]
        q += cols


@numba.njit(inline="always", **_JIT)
def _finish_rows(z, q0, q1, bias, has_bias, act, param, y, ys, g, p0, store):
    """Rows q0..q1-1 of z (output positions p0, p0 + 1, ...): += bias, then the fused
    activation (codes in `_FUSED`, computed as activations.py does), in place; with
    `store`, then written to y (a flat array with strides ys). One branch per block of
    rows, not per element, so that each loop vectorizes."""
    f = z.shape[1]
    if has_bias:
        for q in range(q0, q1):
            for ff in range(f):
                z[q, ff] += bias[ff]
    if act == 1:  # relu (NaN stays NaN, as NumPy's maximum)
        for q in range(q0, q1):
            for ff in range(f):
                if z[q, ff] < 0:
                    z[q, ff] = 0.0
    elif act == 2:  # relu6: clip to [0, 6], NaN stays
        for q in range(q0, q1):
            for ff in range(f):
                if z[q, ff] < 0:
                    z[q, ff] = 0.0
                elif z[q, ff] > 6:
                    z[q, ff] = 6.0
    elif act == 3:  # leaky_relu
        for q in range(q0, q1):
            for ff in range(f):
                if not z[q, ff] >= 0:
                    z[q, ff] *= param
    elif act == 4:  # gelu = x/2 · erfc(-x/√2), which does not cancel for x << 0
        for q in range(q0, q1):
            for ff in range(f):
                v = z[q, ff]
                z[q, ff] = 0.5 * v * math.erfc(-v * 0.7071067811865476)
    if store:
        ow, oh, ys0, ys1, ys2, ys3 = g[_OW], g[_OH], ys[0], ys[1], ys[2], ys[3]
        for q in range(q0, q1):
            p = p0 + q - q0
            # max(): no wraparound code, so that the channels_last copy vectorizes
            base = max((p // (ow * oh)) * ys0 + ((p // ow) % oh) * ys1 + (p % ow) * ys2, 0)
            if ys3 == 1:
                for ff in range(f):
                    y[base + ff] = z[q, ff]
            else:
                for ff in range(f):
                    y[base + ff * ys3] = z[q, ff]


@numba.njit(**_JIT)
def _fused(x, xs, g, wt, pk, bias, act, param, y, ys, p0, p1, d, z):
    """y = activation(bias + pointwise(depthwise(x))) at output positions [p0, p1), one
    at a time through d (C·M) and z (1, F)."""
    k, f = pk.shape
    for p in range(p0, p1):
        _depthwise_rows(x, xs, g, wt, p, d, 0, 1)
        for ff in range(f):
            z[0, ff] = 0.0
        for kk in range(k):
            a = d[kk]
            for ff in range(f):
                z[0, ff] += a * pk[kk, ff]
        _finish_rows(z, 0, 1, bias, True, act, param, y, ys, g, p, True)


@numba.njit(**_JIT)
def _depthwise(x, xs, g, wt, p0, d):
    """d (positions, C·M): row q = the depthwise sums at output position p0 + q."""
    _depthwise_rows(x, xs, g, wt, p0, d.reshape(d.size), 0, d.shape[0])


@numba.njit(**_JIT)
def _epilogue(z, bias, has_bias, act, param, y, ys, g, p0, store):
    """Every row q of z (output position p0 + q): bias and activation in place; with
    `store`, then written into y."""
    _finish_rows(z, 0, z.shape[0], bias, has_bias, act, param, y, ys, g, p0, store)


def _element_strides(a, rank, channels_first):
    """Element strides of contiguous array `a` in (batch, row, column, channel) order;
    1D is one row."""
    s = [st // a.itemsize for st in a.strides]
    if channels_first:
        s = [s[0]] + s[2:] + [s[1]]
    if rank == 1:
        s = [s[0], 0] + s[1:]
    return np.array(s, dtype=np.int64)


def separable_conv(x, depthwise, pointwise, bias, geom, activation, compute):
    """y = activation(bias + pointwise(depthwise(x))) in `compute` (float32 or float64),
    returned in that dtype; the caller rounds it to x's dtype."""
    xf, xs = _flat_input(_channels_last_4d(x, geom), compute)
    kh, kw = geom.kernel
    k = geom.intermediate_channels
    dk = np.ascontiguousarray(np.reshape(depthwise, (kh * kw, k)), dtype=compute)
    pk = np.ascontiguousarray(np.reshape(pointwise, (k, geom.filters)), dtype=compute)
    b = np.zeros(geom.filters, compute) if bias is None else np.ascontiguousarray(bias, dtype=compute)
    code = _FUSED.get(activation.kernel_id)
    act, param = (code, float(activation.kernel_param)) if code is not None else (0, 0.0)
    elementwise = code is None and activation.kernel_id not in _NOT_ELEMENTWISE | {None}
    per_chunk = _CHUNK_FORMS.get(activation.kernel_id, activation) if elementwise else None
    g, count = _geometry_vector(geom), geom.output_positions
    f = pk.shape[1]
    fused = plan(geom) == "fused"
    scratch = 0 if fused else threads() * _chunk_positions(k, f) * (k + f)
    _geometry.check_host_memory(
        (math.prod(geom.output_shape) + scratch) * np.dtype(compute).itemsize,
        f"A separable convolution with output shape {geom.output_shape} (Numba CPU kernel, {compute.__name__})")
    y = output_pool.empty(geom.output_shape, compute)
    ys = _element_strides(y, geom.rank, geom.channels_first)
    yf = y.reshape(-1)
    if fused:  # one output at a time: dk as it is (see _depthwise_rows)
        _fused(xf, xs, g, dk, pk, b, act, param, yf, ys, 0, count, np.empty(k, compute),
               np.empty((1, f), compute))
    else:
        wt = np.tile(dk, (1, max(1, RUN_ELEMENTS // k)))  # see _depthwise_rows
        _chunked(xf, xs, g, wt, pk, b, bias is not None, act, param, per_chunk, yf, ys, count)
        if elementwise:
            return y
    return y if code is not None else activation(y)


def plan(geom):
    """"fused" (one thread) or "chunked" (`threads()` threads): how a call runs."""
    k, f = geom.intermediate_channels, geom.filters
    products = geom.output_positions * (geom.kernel[0] * geom.kernel[1] * k + k * f)
    return "fused" if products <= FUSED_MAX_PRODUCTS else "chunked"


def _flat_input(x4, compute):
    """(a flat `compute` array, element strides in (batch, row, column, channel) order)
    for x4, the input viewed (N, H, W, C). Where channels are contiguous (or one), the
    input is read in place, with its strides, whatever they are (a broadcast input stays a
    few values: converting to `compute` copies only the memory it spans); otherwise (say,
    channels_first) it is copied channels-last, as the kernels need contiguous channels."""
    item = x4.itemsize
    strides = [st // item for st in x4.strides]
    if x4.flags.c_contiguous and x4.dtype == compute:  # the usual case, quickly
        flat = x4.reshape(-1)
    elif (x4.size == 0 or any(st < 0 or st % item for st in x4.strides)
            or (x4.shape[3] > 1 and strides[3] != 1)):
        x4 = np.ascontiguousarray(x4, dtype=compute)
        flat, strides = x4.reshape(-1), [st // x4.itemsize for st in x4.strides]
    else:
        span = 1 + sum((n - 1) * st for n, st in zip(x4.shape, strides))
        flat = np.asarray(np.lib.stride_tricks.as_strided(x4, shape=(span,), strides=(item,)), dtype=compute)
    flat = flat.view()
    flat.flags.writeable = False  # always read-only: Numba compiles one kernel for both
    return flat, np.array(strides[:3] + [1], dtype=np.int64)


def _chunk_positions(k, f):
    """Output positions per chunk: CHUNK_BYTES of intermediate and result (float32)."""
    return max(16, CHUNK_BYTES // (4 * (k + f)))


def threads():
    """How many threads the chunked plan runs on: Numba's setting (all usable cores
    unless `numba.set_num_threads` or NUMBA_NUM_THREADS says fewer)."""
    return numba.get_num_threads()


_pool = None
_pool_lock = threading.Lock()
_local = threading.local()


def _workers(n):
    """A pool of n - 1 threads (the caller is the n-th), made once, grown when n grows."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n - 1:
            _pool = concurrent.futures.ThreadPoolExecutor(max(1, n - 1), thread_name_prefix="sepconv_cpu")
        return _pool


@functools.lru_cache(maxsize=None)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit = None


@contextlib.contextmanager
def _blas_on_one_thread():
    """BLAS on one thread while any call of ours runs (the setting is process-wide:
    concurrent calls count themselves in and out, the last one out restores it)."""
    global _blas_users, _blas_limit
    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = _blas_controller().limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()

def _buffer(name, shape, dtype):
    """This thread's scratch array of at least `shape`, reused across calls."""
    buf = getattr(_local, name, None)
    if buf is None or buf.dtype != dtype or buf.shape[1] != shape[1] or buf.shape[0] < shape[0]:
        buf = np.empty(shape, dtype)
        setattr(_local, name, buf)
    return buf[:shape[0]]


def _chunked(xf, xs, g, wt, pk, b, has_bias, act, param, activation, yf, ys, count):
    """Chunks of output positions, each through depthwise -> BLAS matmul -> epilogue (and
    `activation`, an elementwise NumPy one, or None) on one thread, so that its
    intermediate and matmul result stay in that core's cache and the output is written
    once: by the matmul where output positions are rows of y (channels_last: bias and
    activation then in place while those rows are in cache; measured ~10% faster than a
    matmul into a cached buffer copied out by the epilogue, with the output's memory
    recycled: 21.7 against 24.0 ms on Xception's 147x147x64->128), else by the epilogue. The threads take chunks in turn from one counter (a loaded core
    takes fewer). BLAS runs one thread per call meanwhile: the parallelism is ours."""
    k, f = pk.shape
    chunk = _chunk_positions(k, f)
    n_chunks = -(-count // chunk)
    n_threads = max(1, min(threads(), n_chunks))
    next_chunk = itertools.count()

    # channels contiguous in y (channels_last, or one output position): each output
    # position is a row of y, so a chunk's outputs are rows p0..p0+n-1 of this view
    rows = yf.reshape(count, f) if ys[3] == 1 else None

    errors = np.geterr()  # the caller's np.errstate, which other threads do not inherit

    def work():
        with np.errstate(**errors):
            chunks()

    def chunks():
        d = _buffer("d", (chunk, k), pk.dtype)
        z = _buffer("z", (chunk, f), pk.dtype) if rows is None else None
        for i in iter(lambda: next(next_chunk), None):
            if i >= n_chunks:
                return
            p0 = i * chunk
            n = min(chunk, count - p0)
            _depthwise(xf, xs, g, wt, p0, d[:n])
            out = z[:n] if rows is None else rows[p0:p0 + n]
            np.matmul(d[:n], pk, out=out)
            store = rows is None  # z: the epilogue writes it to y
            if activation is None:
                _epilogue(out, b, has_bias, act, param, yf, ys, g, p0, store)
                continue
            _epilogue(out, b, has_bias, act, param, yf, ys, g, p0, False)
            result = activation(out)  # the _CHUNK_FORMS work in place
            if result is not out:
                out[...] = result
            if store:
                _epilogue(out, b, False, 0, 0.0, yf, ys, g, p0, True)

    with _blas_on_one_thread():
        if n_threads == 1:
            return work()
        pool = _workers(n_threads)
        futures = [pool.submit(work) for _ in range(n_threads - 1)]
        work()
        for fut in futures:
            fut.result()
