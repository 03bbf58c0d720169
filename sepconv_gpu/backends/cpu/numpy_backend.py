"""NumPy backend: a float64 reference written for obviousness, and a cache-tiled fast path
(the "numpy" CPU kernel; the compiled "numba" one, numba_kernel.py, runs instead where
Numba imports: `backends.cpu_kernel`).

Both read the same `ConvGeometry`; neither re-derives padding. Internally everything is
viewed channels-last and 2D (1D is height 1); channels_first is a transposed *view*, so
no input copy is made beyond one padded tile at a time.
"""
from __future__ import annotations

import math

import numpy as np

from ... import geometry as _geometry
from .. import Ops, cpu_kernel, identity, lives_on_device

# Bytes of depthwise intermediate per tile: large enough for an efficient BLAS call,
# small enough to stay in a typical L2/L3 slice.
TILE_BYTES = 1 << 21
# Calls whose depthwise products (positions · taps · C·M) number at most this run untiled
# (`_small_separable_conv`): fewer NumPy calls, which is what a small call's time is made of.
SMALL_WINDOW_ELEMENTS = 1 << 15


def _channels_last_4d(a, geom):
    """View an input/output array (user layout) as (N, H, W, C) without copying."""
    if geom.channels_first:
        a = np.moveaxis(a, 1, -1)
    return a if geom.rank == 2 else a[:, None]


def _input_extent(geom, axis, out_len):
    """Padded input positions that `out_len` outputs read along spatial axis 0 or 1."""
    span = geom.dilation[axis] * (geom.kernel[axis] - 1) + 1
    return (out_len - 1) * geom.strides[axis] + span


def _padded_size(geom):
    """(rows, columns) of the zero-padded input the untiled paths copy: what the outputs
    read, or the whole input when that is more."""
    (h, w), (pt, pl) = geom.in_size, geom.pad_before
    return (max(_input_extent(geom, 0, geom.out_size[0]), pt + h),
            max(_input_extent(geom, 1, geom.out_size[1]), pl + w))


def _weights(depthwise, pointwise, bias, geom, dtype):
    kh, kw = geom.kernel
    dk = np.asarray(depthwise, dtype=dtype).reshape(kh, kw, geom.channels, geom.depth_multiplier)
    pk = np.asarray(pointwise, dtype=dtype).reshape(geom.intermediate_channels, geom.filters)
    b = None if bias is None else np.asarray(bias, dtype=dtype)
    return dk, pk, b


def _tap(buf, geom, i, j, rows):
    """The input positions that kernel tap (i, j) sees for `rows` output rows."""
    (sh, sw), (dh, dw), ow = geom.strides, geom.dilation, geom.out_size[1]
    return buf[:, i * dh: i * dh + (rows - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]


def reference_separable_conv(x, depthwise, pointwise, bias, geom, activation):
    """float64 oracle: pad, sum the k·k shifted products, one matmul, bias, activation."""
    x4 = _channels_last_4d(np.asarray(x, dtype=np.float64), geom)
    dk, pk, b = _weights(depthwise, pointwise, bias, geom, np.float64)
    (oh, ow), (pt, pl), (h, w) = geom.out_size, geom.pad_before, geom.in_size
    padded = np.zeros((geom.batch, *_padded_size(geom), geom.channels))
    padded[:, pt:pt + h, pl:pl + w] = x4
    depthwise_out = np.zeros((geom.batch, oh, ow, geom.channels, geom.depth_multiplier))
    for i in range(geom.kernel[0]):
        for j in range(geom.kernel[1]):
            depthwise_out += _tap(padded, geom, i, j, oh)[..., None] * dk[i, j]
    y = depthwise_out.reshape(geom.batch, oh, ow, -1) @ pk
    if b is not None:
        y += b
    y = y if geom.rank == 2 else y[:, 0]
    if geom.channels_first:
        y = np.moveaxis(y, -1, 1)
    return np.asarray(activation(y), dtype=np.float64)


class NumpyOps(Ops):
    """The NumPy backend (`Ops` says what each method does)."""

    name = "numpy"
    xp = np

    def owns(self, x):
        return isinstance(x, np.ndarray)

    def take(self, x):
        if isinstance(x, np.ndarray):
            return x, identity
        if lives_on_device(x):
            import cupy

            return _device_to_host(x), cupy.asarray
        return _host_array(x), identity

    def asarray(self, a, dtype=None):
        host = _device_to_host(a) if lives_on_device(a) else _host_array(a)
        return np.array(host, dtype=dtype, copy=True)

    def to_numpy(self, a):
        return np.asarray(a)

    def separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                       weights_cache=None, unrounded=False):
        """Always exact (`allow_tf32` is a CUDA option); nothing is cached (`weights_cache`).
        The weights are cast to the compute dtype (float16 and bfloat16 compute in float32,
        rounded once at the end unless `unrounded`)."""
        compute = np.float64 if x.dtype == np.float64 else np.float32
        if cpu_kernel() == "numba":  # the compiled kernel, same arguments
            from .numba_kernel import separable_conv as kernel
        else:
            kernel = _numpy_kernel
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            y = kernel(x, depthwise, pointwise, bias, geom, activation, compute)
        return y if unrounded or y.dtype == x.dtype else y.astype(x.dtype)


def _numpy_kernel(x, depthwise, pointwise, bias, geom, activation, compute):
    """The pure-NumPy CPU kernel, in `compute`: untiled for small calls, else tiled."""
    products = (geom.output_positions * geom.kernel[0] * geom.kernel[1]
                * geom.intermediate_channels)
    # untiled only where the tiled path would make a single tile anyway, and where the
    # padded input it copies is small too (huge strides read few of many positions)
    limit = min(SMALL_WINDOW_ELEMENTS, TILE_BYTES // np.dtype(compute).itemsize)
    small = products <= limit and geom.batch * math.prod(_padded_size(geom)) * geom.channels <= limit
    conv = _small_separable_conv if small else _fast_separable_conv
    return conv(x, depthwise, pointwise, bias, geom, activation, compute)


def _host_array(a):
    """A host array-like as NumPy; a torch bfloat16 tensor (which NumPy cannot read) as
    ml_dtypes' bfloat16, through its bits, without a copy."""
    if type(a).__module__.split(".")[0] == "torch" and str(getattr(a, "dtype", "")) == "torch.bfloat16":
        import torch

        from ..._dtypes import bfloat16

        return a.detach().view(torch.int16).numpy().view(bfloat16())
    return np.asarray(a)


def _device_to_host(a):
    """A host copy of a CuPy array, torch CUDA tensor or other CUDA array-like."""
    import cupy

    view = cupy.asarray(a) if hasattr(a, "__cuda_array_interface__") else cupy.from_dlpack(a)
    return cupy.asnumpy(view)


class _Axis:
    """How one spatial axis of the input reaches a tile of `n` outputs, from output `o0`.

    dense: the tile holds the padded input positions the outputs' windows cover, each once
    (windows overlap or nearly touch: the usual case). sparse: the tile holds each output's
    k taps side by side, n·k positions, when that is fewer (strides or dilations far larger
    than the kernel, where most of the covered span is never read: a stride of 2^30 over
    2^31 inputs needs 3·k positions, not 2^31). Either way padding is zeros in the tile, so
    the taps multiply it (IEEE: 0 · inf is NaN) exactly as the reference does.
    """

    def __init__(self, size, kernel, stride, dilation, pad, outputs):
        self.size, self.k, self.s, self.d, self.pad = size, kernel, stride, dilation, pad
        self.span = dilation * (kernel - 1) + 1
        self.sparse = outputs * kernel < (outputs - 1) * stride + self.span

    def extent(self, n):
        """Tile positions for n outputs."""
        return n * self.k if self.sparse else (n - 1) * self.s + self.span

    def tap(self, t, n):
        """The tile positions tap t reads for the n outputs."""
        if self.sparse:
            return slice(t, t + (n - 1) * self.k + 1, self.k)
        return slice(t * self.d, t * self.d + (n - 1) * self.s + 1, self.s)

    def copies(self, o0, n):
        """(tile slice, input slice) pairs that fill the tile; the rest is padding."""
        if not self.sparse:
            top = o0 * self.s - self.pad  # input position of tile position 0
            src0, src1 = max(top, 0), min(top + self.extent(n), self.size)
            return [(slice(src0 - top, src1 - top), slice(src0, src1))] if src1 > src0 else []
        pairs = []
        for t in range(self.k):
            first = t * self.d - self.pad  # input position of output o0 + o, tap t: first + (o0 + o)·s
            lo = max(0, -((first + o0 * self.s) // self.s))  # outputs whose tap is inside the input
            hi = min(n, (self.size - 1 - first) // self.s - o0 + 1)
            if hi > lo:
                src = first + (o0 + lo) * self.s
                pairs.append((slice(lo * self.k + t, (hi - 1) * self.k + t + 1, self.k),
                              slice(src, src + (hi - lo - 1) * self.s + 1, self.s)))
        return pairs


def _small_separable_conv(x, depthwise, pointwise, bias, geom, activation, dtype):
    """Small calls (serving batch 1, 7x7 layers): no tiling, a few NumPy calls in all. The
    padded input is read through a strided view of every output's k·k window, the
    depthwise stage is one einsum over it, the pointwise one matmul; the windows view
    costs no memory and the einsum's product is at most SMALL_WINDOW_ELEMENTS."""
    dk, pk, b = _weights(depthwise, pointwise, bias, geom, dtype)
    x4 = _channels_last_4d(x, geom)
    n, (h, w), c = geom.batch, geom.in_size, geom.channels
    (oh, ow), (pt, pl), (kh, kw) = geom.out_size, geom.pad_before, geom.kernel
    (sh, sw), (dh, dw) = geom.strides, geom.dilation
    padded = np.zeros((n, *_padded_size(geom), c), dtype=dtype)
    padded[:, pt:pt + h, pl:pl + w] = x4
    s0, s1, s2, s3 = padded.strides
    windows = np.ndarray((n, oh, ow, kh, kw, c), dtype, buffer=padded,
                         strides=(s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3))
    depthwise_out = np.einsum("nhwijc,ijcm->nhwcm", windows, dk)
    y = depthwise_out.reshape(-1, pk.shape[0]) @ pk
    if b is not None:
        y += b
    y = y.reshape(n, oh, ow, geom.filters)
    y = y if geom.rank == 2 else y[:, 0]
    if geom.channels_first:
        y = np.ascontiguousarray(np.moveaxis(y, -1, 1))
    if not activation.is_linear:  # by_rows activations (see _activate): whole rows here
        y[...] = activation(y)
    return y


def _fast_separable_conv(x, depthwise, pointwise, bias, geom, activation, dtype):
    """Cache-tiled rows: per tile, depthwise taps into a reused buffer, one BLAS matmul
    straight into the output slice, then bias and activation in place. Extra memory is
    O(tile), never O(input · k²); only the input positions the outputs read are copied."""
    dk, pk, b = _weights(depthwise, pointwise, bias, geom, dtype)
    x4 = _channels_last_4d(x, geom)
    n, (h, w), c, m = geom.batch, geom.in_size, geom.channels, geom.depth_multiplier
    (oh, ow), (pt, pl) = geom.out_size, geom.pad_before
    itemsize = np.dtype(dtype).itemsize
    row_bytes = ow * c * m * itemsize
    rows = max(1, min(oh, TILE_BYTES // max(row_bytes, 1)))
    images = max(1, min(n, TILE_BYTES // max(row_bytes * oh, 1))) if rows == oh else 1
    axis_h = _Axis(h, geom.kernel[0], geom.strides[0], geom.dilation[0], pt, rows)
    axis_w = _Axis(w, geom.kernel[1], geom.strides[1], geom.dilation[1], pl, ow)
    tile_shape = (images, axis_h.extent(rows), axis_w.extent(ow), c)
    _geometry.check_host_memory(
        (math.prod(geom.output_shape) + math.prod(tile_shape) + 2 * images * rows * row_bytes // itemsize)
        * itemsize, f"A separable convolution with output shape {geom.output_shape} (NumPy backend, {dtype.__name__})")
    y = np.empty(geom.output_shape, dtype=dtype)
    y4 = _channels_last_4d(y, geom)
    padded = np.zeros(tile_shape, dtype=dtype)
    acc = np.empty((images, rows, ow, c, m), dtype=dtype)
    prod = np.empty_like(acc)
    col_copies = axis_w.copies(0, ow)
    for n0 in range(0, n, images):
        nb = min(images, n - n0)
        for r0 in range(0, oh, rows):
            nr = min(rows, oh - r0)
            tile = padded[:nb, :axis_h.extent(nr)]
            tile.fill(0)
            for dst_r, src_r in axis_h.copies(r0, nr):
                for dst_c, src_c in col_copies:
                    tile[:, dst_r, dst_c] = x4[n0:n0 + nb, src_r, src_c]
            out = acc[:nb, :nr]
            tmp = prod[:nb, :nr]
            for t, (i, j) in enumerate(np.ndindex(*geom.kernel)):
                # the first tap initializes the accumulator; the others add to it
                tap = tile[:, axis_h.tap(i, nr), axis_w.tap(j, ow)]
                np.multiply(tap[..., None], dk[i, j], out=tmp if t else out)
                if t:
                    out += tmp
            _pointwise_into(y, y4, out, pk, b, geom, n0, nb, r0, nr)
            _activate(y, activation, geom, n0, nb, r0, nr)
    return y


def _pointwise_into(y, y4, depthwise_out, pk, b, geom, n0, nb, r0, nr):
    ow, f = geom.out_size[1], geom.filters
    if not geom.channels_first:
        dst = y4[n0:n0 + nb, r0:r0 + nr].reshape(-1, f)  # contiguous rows: a view
        np.matmul(depthwise_out.reshape(-1, pk.shape[0]), pk, out=dst)
        if b is not None:
            dst += b
        return
    for k in range(nb):  # channels_first: (F, rows·W) of one image is a view
        dst = y[n0 + k].reshape(f, -1)[:, r0 * ow:(r0 + nr) * ow]
        np.matmul(pk.T, depthwise_out[k].reshape(-1, pk.shape[0]).T, out=dst)
        if b is not None:
            dst += b[:, None]


def _activate(y, activation, geom, n0, nb, r0, nr):
    if activation.is_linear:
        return
    # Per tile is right for what reaches a backend: activations with `by_rows` (ops
    # applies any other to the whole output). This is the user-layout slice of the tile;
    # it holds whole output rows, so softmax sees complete last-axis vectors.
    if geom.rank == 1:
        view = y[n0:n0 + nb]
    elif geom.channels_first:
        view = y[n0:n0 + nb, :, r0:r0 + nr]
    else:
        view = y[n0:n0 + nb, r0:r0 + nr]
    view[...] = activation(view)
