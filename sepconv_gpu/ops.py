"""Functional separable convolution: normalize, validate, compute geometry once, dispatch.

    y = act(bias + pointwise(depthwise(x)))

Ops compute where `x` lives (NumPy arrays on the NumPy backend, CuPy arrays / torch CUDA
tensors on the CUDA backend) unless `backend=` names one; the result is the same kind of
array as `x`.

`allow_tf32=True` lets float32 inputs on the CUDA backend use TF32 tensor cores (10-bit
mantissa products, fp32 accumulation), as PyTorch / TensorFlow allow by default; the
default False computes exact float32. The NumPy backend is always exact.
"""
from __future__ import annotations

import functools

import numpy as np

from . import activations as _activations
from . import backends as _backends
from . import geometry as _geometry
from ._nvtx import annotate

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
_NO_ACTIVATION = _activations.get(None)


def is_float_dtype(dtype):
    """One of FLOAT_DTYPES, in either byte order (">f4" is float32 stored big-endian);
    ml_dtypes' bfloat16 is a NumPy dtype of kind "V". Remembered per dtype: a call checks
    its arrays several times, and NumPy's `dtype.name` costs a microsecond."""
    if not isinstance(dtype, np.dtype):
        return False
    known = _IS_FLOAT.get(dtype)
    if known is None:
        name = dtype.newbyteorder("=").name if dtype.kind == "f" else dtype.name
        known = _IS_FLOAT[dtype] = name in FLOAT_DTYPES
    return known


_IS_FLOAT = {}


def cast(a, dtype):
    """`a` in `dtype`, native byte order. A host broadcast view (zero strides) is cast in
    its compact form and broadcast again: the cast of an 8 GiB broadcast of one row is one
    row. Any other host view is materialised, refused first when this machine cannot hold it."""
    dtype = np.dtype(dtype).newbyteorder("=")
    if a.dtype == dtype or not isinstance(a, np.ndarray):
        return a if a.dtype == dtype else a.astype(dtype)
    if 0 in a.strides and a.size:
        compact = a[tuple(slice(0, 1) if s == 0 else slice(None) for s in a.strides)]
        return np.broadcast_to(compact.astype(dtype), a.shape)
    _geometry.check_host_memory(a.size * dtype.itemsize, f"Casting an array of shape {a.shape} to {dtype}")
    return a.astype(dtype)


def _native(a):
    """A host float array in native byte order (what every backend computes on)."""
    if isinstance(a, np.ndarray) and is_float_dtype(a.dtype) and not a.dtype.isnative:
        return cast(a, a.dtype)
    return a


def _check_float(a, name):
    dtype = getattr(a, "dtype", None)
    if not is_float_dtype(dtype):
        raise TypeError(
            f"`{name}` must be a floating-point array ({', '.join(FLOAT_DTYPES)}); "
            f"received dtype {dtype if dtype is not None else type(a).__name__}."
        )


def _as_backend_array(ops, a, name, optional=False):
    if a is None:
        if optional:
            return None
        raise TypeError(f"`{name}` must be an array; received None.")
    if not ops.owns(a):
        a = ops.take(_native(a))[0]
    _check_float(a, name)
    return _native(a)


def check_allow_tf32(allow_tf32):
    """`allow_tf32` as a bool; TypeError for anything else."""
    if not isinstance(allow_tf32, (bool, np.bool_)):
        raise TypeError(f"`allow_tf32` must be a bool; received {allow_tf32!r}.")
    return bool(allow_tf32)


def separable_conv(rank, x, depthwise_kernel, pointwise_kernel, bias=None, strides=1,
                   padding="valid", data_format="channels_last", dilation_rate=1,
                   activation=None, backend=None, allow_tf32=False, *, weights_cache=None):
    """Rank-generic separable convolution (rank 1 or 2); see the public wrappers.

    weights_cache: a dict the backend may keep forms derived from these weights in (a
    layer passes the one of its current weights snapshot); None caches nothing.
    """
    strides, padding, data_format, dilation_rate, act, allow_tf32 = _normalized_args(
        rank, strides, padding, data_format, dilation_rate, activation, allow_tf32)
    return separable_conv_normalized(rank, x, depthwise_kernel, pointwise_kernel, bias, strides,
                                     padding, data_format, dilation_rate, act, backend,
                                     allow_tf32, weights_cache=weights_cache)


def separable_conv_normalized(rank, x, depthwise_kernel, pointwise_kernel, bias, strides,
                              padding, data_format, dilation_rate, act, backend, allow_tf32,
                              *, weights_cache=None):
    """`separable_conv` with its arguments already normalized (`geometry.
    normalize_call_args`, an `Activation`, a bool): what a layer, which normalized them
    when it was made, calls."""
    if x is None or not hasattr(x, "shape"):
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"`x` must be an array; received {type(x).__name__}.")
    ops = _backends.ops_for_array(x, backend)
    with annotate(f"separable_conv{rank}d"), ops.stream_scope(x):
        xb, give_back, dk, pk, b, geom = _prepare(
            ops, rank, x, depthwise_kernel, pointwise_kernel, bias, strides, padding, data_format,
            dilation_rate, weights_checked=weights_cache is not None)
        out_shape = _output_shape(act, geom)  # glu: an odd last axis fails here
        if geom.output_positions == 0:
            return give_back(ops.xp.zeros(out_shape, dtype=xb.dtype))
        # Backends get only activations they may apply piecewise, on blocks of whole
        # last-axis rows (Keras's elementwise ones and softmax); any other callable may look
        # at the whole output (e.g. subtract its mean) or reshape it (glu), so it is
        # applied here, to all of it: to the float32 result of a float16/bfloat16 call,
        # before its one rounding (`unrounded`).
        if act.by_rows:
            return give_back(ops.separable_conv(xb, dk, pk, b, geom, act, allow_tf32=allow_tf32,
                                                weights_cache=weights_cache))
        y = ops.separable_conv(xb, dk, pk, b, geom, _NO_ACTIVATION, allow_tf32=allow_tf32,
                               weights_cache=weights_cache, unrounded=True)
        return give_back(_apply_to_whole_output(ops, act, y, xb.dtype))


def _apply_to_whole_output(ops, act, y, dtype):
    """An activation on the whole output, as Keras applies it, as `dtype`; a user's must
    keep the shape."""
    out = act(y)
    shape, expected = getattr(out, "shape", None), act.output_shape(y.shape)
    if shape is None or tuple(shape) != expected:
        got = f"shape {tuple(shape)}" if shape is not None else type(out).__name__
        raise ValueError(
            f"`activation` {act.name!r} must return an array of shape {expected} for the "
            f"output of shape {tuple(y.shape)}; it returned {got}.")
    return ops.xp.asarray(out, dtype=dtype)


def _prepare(ops, rank, x, depthwise_kernel, pointwise_kernel, bias, strides, padding,
             data_format, dilation_rate, weights_checked=False):
    """Arrays on `ops`' device, checked, and the call's geometry: the one validation step.
    `weights_checked`: the weights are a layer's snapshot (its backend's float arrays,
    checked when they were set), so only their shapes are checked here."""
    xb, give_back = ops.take(_native(x))
    _check_float(xb, "x")
    if weights_checked:
        dk, pk, b = depthwise_kernel, pointwise_kernel, bias
    else:
        dk = _as_backend_array(ops, depthwise_kernel, "depthwise_kernel")
        pk = _as_backend_array(ops, pointwise_kernel, "pointwise_kernel")
        b = _as_backend_array(ops, bias, "bias", optional=True)
    geom = _geometry_of(
        rank, tuple(xb.shape), tuple(dk.shape), tuple(pk.shape), None if b is None else tuple(b.shape),
        strides, padding, data_format, dilation_rate)
    return xb, give_back, dk, pk, b, geom


# --- the fast path: what a repeated call signature reuses ---------------------------------
# Only validated results are kept: lru_cache does not cache a call that raised, so a bad
# call runs the full validation, and raises the same error, every time.

_geometry_of = functools.lru_cache(maxsize=256)(_geometry.make_geometry)


@functools.lru_cache(maxsize=256)
def _output_shape_of(act, geom):
    return act.output_shape(geom.output_shape)


def _output_shape(act, geom):
    try:
        return _output_shape_of(act, geom)
    except TypeError:  # an unhashable activation object
        return act.output_shape(geom.output_shape)


def _typed_key(args):
    """`args` with the type of every value and element, so that a cached signature matches
    only an identical one (True == 1 and 1.0 == 1 in a plain key; `strides=True` must
    still fail). Raises TypeError for what is not kept (unhashable values such as a dict
    activation config, nested sequences)."""
    key = []
    for value in args:
        kind = type(value)
        if kind is tuple or kind is list:
            types = tuple(map(type, value))
            if tuple in types or list in types:
                raise TypeError("nested")
            key.append((kind, types, tuple(value)))
        else:
            key.append((kind, value))
    return tuple(key)


def _untyped(key):
    return tuple(entry[0](entry[2]) if len(entry) == 3 else entry[1] for entry in key)


def _normalized_args(rank, strides, padding, data_format, dilation_rate, activation, allow_tf32):
    """(strides, padding, data_format, dilation_rate, activation, allow_tf32) normalized and
    checked, from a small LRU for arguments seen before (by value and type)."""
    args = (rank, strides, padding, data_format, dilation_rate, activation, allow_tf32)
    try:
        return _normalize_typed(_typed_key(args))
    except TypeError:  # unhashable, or a bad argument's TypeError (raised again below)
        pass
    return _normalize(*args)


def _normalize(rank, strides, padding, data_format, dilation_rate, activation, allow_tf32):
    return _geometry.normalize_call_args(rank, strides, padding, data_format, dilation_rate) + (
        _activations.get(activation), check_allow_tf32(allow_tf32))


@functools.lru_cache(maxsize=256)
def _normalize_typed(key):
    return _normalize(*_untyped(key))


def separable_conv2d(x, depthwise_kernel, pointwise_kernel, bias=None, strides=1,
                     padding="valid", data_format="channels_last", dilation_rate=1,
                     activation=None, backend=None, allow_tf32=False):
    """2D depthwise separable convolution.

    x: (N, H, W, C) for channels_last, (N, C, H, W) for channels_first.
    depthwise_kernel: (KH, KW, C, M); pointwise_kernel: (1, 1, C·M, F); bias: (F,) or None.
    allow_tf32: float32 on the CUDA backend may use TF32 tensor cores (module docstring).
    """
    return separable_conv(2, x, depthwise_kernel, pointwise_kernel, bias, strides, padding,
                          data_format, dilation_rate, activation, backend, allow_tf32)


def separable_conv1d(x, depthwise_kernel, pointwise_kernel, bias=None, strides=1,
                     padding="valid", data_format="channels_last", dilation_rate=1,
                     activation=None, backend=None, allow_tf32=False):
    """1D depthwise separable convolution (`causal` padding allowed).

    x: (N, W, C) for channels_last, (N, C, W) for channels_first.
    depthwise_kernel: (K, C, M); pointwise_kernel: (1, C·M, F); bias: (F,) or None.
    allow_tf32: float32 on the CUDA backend may use TF32 tensor cores (module docstring).
    """
    return separable_conv(1, x, depthwise_kernel, pointwise_kernel, bias, strides, padding,
                          data_format, dilation_rate, activation, backend, allow_tf32)


def reference_separable_conv(rank, x, depthwise_kernel, pointwise_kernel, bias=None, strides=1,
                             padding="valid", data_format="channels_last", dilation_rate=1,
                             activation=None):
    """The float64 NumPy oracle with the same argument handling; returns float64 NumPy."""
    from .backends.cpu.numpy_backend import reference_separable_conv as oracle

    strides, padding, data_format, dilation_rate = _geometry.normalize_call_args(
        rank, strides, padding, data_format, dilation_rate)
    x, _, dk, pk, b, geom = _prepare(_backends.get_ops("numpy"), rank, x, depthwise_kernel,
                                     pointwise_kernel, bias, strides, padding, data_format,
                                     dilation_rate)
    return oracle(x, dk, pk, b, geom, _activations.get(activation))
