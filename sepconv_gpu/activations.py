"""Activations with Keras 3 definitions (keras.activations, 3.15), for NumPy and CuPy alike.

`get(identifier)` turns a name, a Keras-serialized dict, one of the functions below (or a
`functools.partial` of one with keyword arguments), a Keras / tf.keras activation function
or any other callable into an `Activation`: what the backends use.

Every Keras 3 activation is here with Keras's formula. The CUDA backend computes them in
three ways (`sepconv_gpu/backends/cuda/kernel_common.py` holds the lists):

- fused into the kernel's epilogue: the elementwise ones with at most one parameter,
  i.e. everything below except what the next two items name;
- softmax and log_softmax: a second kernel over the last axis of the output;
- applied to the whole output after the kernel (one more pass over it): `threshold` (two
  parameters), `glu` (halves the last axis), `sparsemax` (sorts along the last axis),
  `tf_keras_hard_sigmoid` (old configs only), any parameter other than the fused
  variant's one (`relu(max_value=...)`, `softmax(axis=1)`, ...) and any other callable.
  Each fused variant adds its code to every kernel's epilogue (a runtime switch: no more
  instantiations, but compile time and binary size); the multi-parameter and reshaping
  ones are not worth that.

Where Keras 3.15 is surprising:

- `glu` halves the last axis of the output as laid out. Keras 3.15's layers then report
  the unhalved shape from `compute_output_shape`; ours report the shape a call returns
  (a Keras bug is not copied, as with its channels_first padding).
- `sparsemax` is the paper's (Martins & Astudillo 2016): tau = (sum of the k largest - 1)
  / k over the support size k, so every row sums to 1. Keras 3.15 (every backend) sums the
  running sums over the support instead, which agrees only when k = 1 and otherwise gives
  rows that do not sum to 1; that bug is not copied either (tests/test_activations.py
  shows where the two differ).
- `threshold` has no defaults in Keras: the bare name is refused here with a message
  saying what to pass (Keras fails later, on the first call).

tf.keras 2.x defined `hard_sigmoid` differently: clip(0.2·x + 0.5, 0, 1), against Keras 3's
relu6(x + 3) / 6. A configuration is read with tf.keras's meaning when it is recognisably
tf.keras 2.x (`get(..., tf_keras=True)`, which `BaseSeparableConv.from_config` does for
configs with Keras-2-only keys) and so is a tf.keras / TF function object; the result is
`tf_keras_hard_sigmoid`, which serializes under that name: Keras 3 refuses it rather than
silently computing its own `hard_sigmoid`.
"""
from __future__ import annotations

import functools
import inspect
import math
import sys

import numpy as np

from ._serialization import array_module

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_np_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _erfc(x):
    if array_module(x) is np:
        return _np_erfc(x).astype(x.dtype, copy=False)
    from cupyx.scipy.special import erfc

    return erfc(x)


def linear(x):
    return x


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    xp, t = array_module(x), x.dtype.type
    if negative_slope == 0 and max_value is None and threshold == 0:
        return xp.maximum(x, t(0))
    if negative_slope != 0 and max_value is None and threshold == 0:
        return leaky_relu(x, negative_slope)
    # Keras's ReLU.static_call, step by step
    y = xp.where(x > t(threshold), x, t(0)) if threshold != 0 else xp.maximum(x, t(0))
    if max_value is not None:
        y = xp.clip(y, t(0), t(max_value))
    if negative_slope != 0:
        y = y - t(negative_slope) * xp.maximum(t(threshold) - x, t(0))
    return y


def relu6(x):
    return array_module(x).clip(x, 0, 6)


def leaky_relu(x, negative_slope=0.2):
    return array_module(x).where(x >= 0, x, x * x.dtype.type(negative_slope))


def elu(x, alpha=1.0):
    xp = array_module(x)
    return xp.where(x > 0, x, x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0)))


def selu(x):
    xp, t = array_module(x), x.dtype.type
    return t(SELU_SCALE) * xp.where(x > 0, x, t(SELU_ALPHA) * xp.expm1(xp.minimum(x, 0)))


def celu(x, alpha=1.0):
    xp = array_module(x)
    a = x.dtype.type(alpha)
    return xp.maximum(x, 0) + xp.minimum(a * xp.expm1(xp.minimum(x, 0) / a), 0)


def gelu(x, approximate=False):
    xp, t = array_module(x), x.dtype.type
    if approximate:
        inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x * x * x)
        return t(0.5) * x * (t(1) + xp.tanh(inner))
    # 1 + erf(x/√2) written as erfc(-x/√2), as TF and JAX do: the sum cancels to 0 below
    # x ≈ -6 (and loses digits from -3 on), erfc keeps the tail (gelu(-6) = -5.92e-9)
    return t(0.5) * x * _erfc(-x / t(math.sqrt(2)))


def sigmoid(x):
    xp = array_module(x)
    # exp of a non-positive number only: no overflow warnings for large |x|
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def log_sigmoid(x):
    return -softplus(-x)


def sparse_sigmoid(x):
    xp, t = array_module(x), x.dtype.type
    return xp.where(x <= -1, t(0), xp.where(x >= 1, t(1), t(0.5) * (x + t(1))))


def hard_sigmoid(x):
    return relu6(x + x.dtype.type(3)) / x.dtype.type(6)


def tf_keras_hard_sigmoid(x):
    """tf.keras 2.x's `hard_sigmoid`: clip(0.2·x + 0.5, 0, 1)."""
    t = x.dtype.type
    return array_module(x).clip(x * t(0.2) + t(0.5), t(0), t(1))


def hard_silu(x):
    return x * hard_sigmoid(x)


def silu(x):
    return x * sigmoid(x)


def softplus(x):
    return array_module(x).logaddexp(x.dtype.type(0), x)


def sparse_plus(x):
    xp, t = array_module(x), x.dtype.type
    return xp.where(x <= -1, t(0), xp.where(x < 1, t(0.25) * (x + t(1)) ** 2, x))


def squareplus(x, b=4):
    return (x + array_module(x).sqrt(x * x + x.dtype.type(b))) / x.dtype.type(2)


def mish(x):
    return x * array_module(x).tanh(softplus(x))


def softsign(x):
    return x / (1 + array_module(x).abs(x))


def tanh(x):
    return array_module(x).tanh(x)


def tanh_shrink(x):
    return x - array_module(x).tanh(x)


def hard_tanh(x):
    return array_module(x).clip(x, -1, 1)


def hard_shrink(x, threshold=0.5):
    xp = array_module(x)
    return xp.where(xp.abs(x) > x.dtype.type(threshold), x, x.dtype.type(0))


def soft_shrink(x, threshold=0.5):
    xp, t = array_module(x), x.dtype.type(threshold)
    zero = x.dtype.type(0)
    return xp.where(x > t, x - t, xp.where(x < -t, x + t, zero))


def threshold(x, threshold, default_value):
    """`x` where `x > threshold`, else `default_value` (Keras gives neither a default)."""
    return array_module(x).where(x > x.dtype.type(threshold), x, x.dtype.type(default_value))


def exponential(x):
    return array_module(x).exp(x)


def softmax(x, axis=-1):
    """exp(x - m) / sum, m the row's maximum. A row holding NaN or +inf is computed as
    Keras (TensorFlow) computes it: m is the row's largest finite value and NaN terms
    are left out of the sum, so NaN and +inf entries give NaN (inf / inf) and every other
    entry exp(x - m) / inf = 0: [nan, inf, -inf, 0, 1e30, -1e30] -> [nan, nan, 0, 0, 0, 0]."""
    xp = array_module(x)
    m = x.max(axis=axis, keepdims=True)
    if bool(xp.isnan(m).any() | xp.isposinf(m).any()):  # only rows with NaN / +inf pay for this
        t = x.dtype.type
        m = xp.where(xp.isfinite(x), x, t(-np.inf)).max(axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, t(0))  # no finite entry: nothing to shift by
        e = xp.exp(x - m)
        return e / xp.where(xp.isnan(e), t(0), e).sum(axis=axis, keepdims=True)
    e = xp.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def sparsemax(x, axis=-1):
    """Sparsemax over `axis`: max(x - tau, 0), rows summing to 1 (see the module docstring)."""
    xp, t = array_module(x), x.dtype.type
    ranked = -xp.sort(-x, axis=axis)
    running = xp.cumsum(ranked, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    rank = xp.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape(shape)
    support = ranked - (running - t(1)) / rank > 0
    size = support.sum(axis=axis, keepdims=True).astype(x.dtype)
    # the running sum at the last element of the support (the support is a prefix)
    top = xp.take_along_axis(running, size.astype(xp.int64) - 1, axis=axis)
    tau = (top - t(1)) / size
    return xp.maximum(x - tau, t(0))


def glu(x, axis=-1):
    """First half of `axis` times the sigmoid of the second half: the axis halves."""
    _glu_shape(x.shape, axis)
    a, b = array_module(x).split(x, 2, axis=axis)
    return a * sigmoid(b)


def _glu_shape(shape, axis):
    shape = tuple(shape)
    if shape[axis] % 2:
        raise ValueError(
            f"glu: axis size must be divisible by 2. Received: x.shape={shape} with axis={axis}")
    axis %= len(shape)
    return shape[:axis] + (shape[axis] // 2,) + shape[axis + 1:]


hard_swish = hard_silu
swish = silu

_FUNCTIONS = (
    linear, relu, relu6, leaky_relu, elu, selu, celu, gelu, sigmoid, hard_sigmoid, hard_silu,
    silu, mish, softplus, softsign, tanh, exponential, softmax, log_softmax,
    hard_tanh, hard_shrink, soft_shrink, log_sigmoid, sparse_plus, sparse_sigmoid, squareplus,
    tanh_shrink, threshold, glu, sparsemax, tf_keras_hard_sigmoid,
)
# Canonical name -> function; a function's keyword arguments (after x) are its parameters
# and their defaults are Keras's.
_REGISTRY = {f.__name__: f for f in _FUNCTIONS}
ALIASES = {"swish": "silu", "hard_swish": "hard_silu", None: "linear"}
# Meaning of a name in a tf.keras 2.x configuration, where it differs from Keras 3's.
TF_KERAS_NAMES = {"hard_sigmoid": "tf_keras_hard_sigmoid"}
# The one parameter a fused CUDA variant takes at run time (others must keep their default).
_KERNEL_PARAMETER = {"leaky_relu": "negative_slope", "elu": "alpha", "celu": "alpha",
                     "hard_shrink": "threshold", "soft_shrink": "threshold", "squareplus": "b"}
# Functions whose result changes the output's shape: applied to the whole output only.
_RESHAPING = frozenset({"glu"})


def _defaults(fn):
    """{parameter: default} after `x`; inspect.Parameter.empty marks a required one."""
    return {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}


_REQUIRED = {name: [k for k, v in _defaults(fn).items() if v is inspect.Parameter.empty]
             for name, fn in _REGISTRY.items()}
# Every name `get` resolves on its own (threshold needs its arguments: see `get`).
NAMES = tuple(n for n in _REGISTRY if not _REQUIRED[n]) + tuple(k for k in ALIASES if k)


class Activation:
    """A resolved activation: what to compute and what the backends may do with it.

    `kernel_id` identifies a known function with its fixed parameters ("gelu_tanh" for
    gelu(approximate=True)); the CUDA backend fuses it when it has a variant of that name
    (`kernel_param` is then the variant's one parameter, 0 when it has none). None: an
    opaque callable, applied to the whole output. `by_rows`: it may be applied in place to
    any block of whole last-axis rows of the output (elementwise or last-axis functions that
    keep the shape), which is how the NumPy backend applies it, tile by tile.
    """

    def __init__(self, name, params=None, fn=None, serialized=None):
        self.name = name
        self.params = dict(params or {})
        known = name in _REGISTRY and fn is None
        self._reshapes = known and name in _RESHAPING
        self._fn = functools.partial(_REGISTRY[name], **self.params) if known else fn
        self.kernel_id, self.kernel_param = _kernel(name, self.params) if known else (None, 0.0)
        self.by_rows = known and not self._reshapes and self.params.get("axis", -1) == -1
        if serialized is None and known:  # Keras 3 writes a name; other parameters need the object
            serialized = name if self.params == _defaults(_REGISTRY[name]) else self._fn
        self.serialized = name if serialized is None else serialized

    @property
    def is_linear(self):
        return self.kernel_id == "linear"

    def output_shape(self, shape):
        """The shape of the result on an array of `shape`: `shape` itself, except for glu,
        which halves its axis (ValueError when that axis is odd, as Keras raises)."""
        shape = tuple(int(n) for n in shape)
        return _glu_shape(shape, self.params["axis"]) if self._reshapes else shape

    def __call__(self, x):
        return self._fn(x)

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Activation({self.name!r}{extra})"


def _kernel(name, params):
    """(kernel_id, kernel_param), or (None, 0.0) when a parameter the kernels take as
    fixed (an axis, relu's max_value, ...) is not Keras's default."""
    if name == "gelu":
        return ("gelu_tanh" if params["approximate"] else "gelu"), 0.0
    runtime = _KERNEL_PARAMETER.get(name)
    defaults = _defaults(_REGISTRY[name])
    if any(params[k] != v for k, v in defaults.items() if k != runtime):
        return None, 0.0
    return name, float(params[runtime]) if runtime else 0.0


def _resolve_name(name, identifier, tf_keras):
    name = ALIASES.get(name, name)
    if tf_keras:
        name = TF_KERAS_NAMES.get(name, name)
    if name not in _REGISTRY:
        raise ValueError(f"Could not interpret activation function identifier: {identifier}")
    if _REQUIRED[name]:
        needed = ", ".join(f"{k}=..." for k in _REQUIRED[name])
        raise ValueError(
            f"The `{name}` activation needs arguments ({', '.join(_REQUIRED[name])}; Keras "
            f"gives them no default): pass functools.partial(sepconv_gpu.activations.{name}, "
            f"{needed}). Received: {identifier!r}")
    return Activation(name, _defaults(_REGISTRY[name]))


def get(identifier, tf_keras=False):
    """Resolve an activation identifier the way `keras.activations.get` does.

    `tf_keras=True`: names mean what they meant in tf.keras 2.x (`hard_sigmoid`).
    """
    if isinstance(identifier, Activation):
        return identifier
    if identifier is None or isinstance(identifier, str):
        return _resolve_name(identifier, identifier, tf_keras)
    if isinstance(identifier, dict):
        config = identifier.get("config", identifier.get("class_name"))
        if identifier.get("class_name") in ("function", None) or isinstance(config, str):
            name = config if isinstance(config, str) else identifier.get("class_name")
            return _resolve_name(name, identifier, tf_keras)
        raise ValueError(f"Could not interpret activation function identifier: {identifier}")
    if isinstance(identifier, functools.partial):
        base = _known_function_name(identifier.func)
        if base and not identifier.args:
            defaults = _defaults(_REGISTRY[base])
            if set(identifier.keywords) <= set(defaults):
                return Activation(base, {**defaults, **identifier.keywords})
    if callable(identifier):
        base = _known_function_name(identifier)
        if base and not _REQUIRED[base]:
            return Activation(base, _defaults(_REGISTRY[base]))
        name = getattr(identifier, "__name__", type(identifier).__name__)
        return Activation(name, fn=identifier, serialized=identifier)
    raise ValueError(f"Could not interpret activation function identifier: {identifier!r}")


def _known_function_name(fn):
    """Our own functions, and Keras / tf.keras / TF activation functions, by their name."""
    name = getattr(fn, "__name__", None)
    if fn in _FUNCTIONS or fn in (swish, hard_swish):
        return ALIASES.get(name, name)
    module = getattr(fn, "__module__", "") or ""
    library = module.split(".")[0]
    if library not in ("keras", "tf_keras", "tensorflow") or not isinstance(name, str):
        return None
    name = ALIASES.get(name, name)
    if _is_tf_keras(library):
        name = TF_KERAS_NAMES.get(name, name)
    return name if name in _REGISTRY else None


def _is_tf_keras(library):
    """tf_keras and TensorFlow's own Keras are 2.x; `keras` is whichever version is loaded."""
    if library != "keras":
        return True
    return str(getattr(sys.modules.get("keras"), "__version__", "3")).startswith("2.")


def serialize(activation):
    """Keras 3 `get_config()` form: the activation's name (a callable, or a known function
    with non-default parameters, stays as the object it is)."""
    return get(activation).serialized
