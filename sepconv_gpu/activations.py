"""Activations with Keras 3 definitions, for NumPy and CuPy arrays alike.

`get(identifier)` turns a name, a Keras-serialized dict, one of the functions below (or a
`functools.partial` of one), or any callable into an `Activation`: what the backends use.
Known activations carry a `kernel_id` so the CUDA backend can fuse them into its epilogue;
an arbitrary callable is applied to the output array afterwards.
"""
from __future__ import annotations

import functools
import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _xp(x):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import cupy  # only reached for device arrays

    return cupy.get_array_module(x)


_np_erf = np.vectorize(math.erf, otypes=[np.float64])


def _erf(x):
    xp = _xp(x)
    if xp is np:
        return _np_erf(x).astype(x.dtype, copy=False)
    from cupyx.scipy.special import erf

    return erf(x)


def linear(x):
    return x


def relu(x):
    return _xp(x).maximum(x, 0)


def relu6(x):
    return _xp(x).clip(x, 0, 6)


def leaky_relu(x, negative_slope=0.2):
    return _xp(x).where(x >= 0, x, x * x.dtype.type(negative_slope))


def elu(x, alpha=1.0):
    xp = _xp(x)
    return xp.where(x > 0, x, x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0)))


def selu(x):
    xp = _xp(x)
    t = x.dtype.type
    return t(SELU_SCALE) * xp.where(x > 0, x, t(SELU_ALPHA) * xp.expm1(xp.minimum(x, 0)))


def celu(x, alpha=1.0):
    xp = _xp(x)
    a = x.dtype.type(alpha)
    return xp.maximum(x, 0) + xp.minimum(a * xp.expm1(xp.minimum(x, 0) / a), 0)


def gelu(x, approximate=False):
    xp = _xp(x)
    t = x.dtype.type
    if approximate:
        inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x * x * x)
        return t(0.5) * x * (t(1) + xp.tanh(inner))
    return t(0.5) * x * (t(1) + _erf(x / t(math.sqrt(2))))


def sigmoid(x):
    xp = _xp(x)
    # exp of a non-positive number only: no overflow warnings for large |x|
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def hard_sigmoid(x):
    return relu6(x + x.dtype.type(3)) / x.dtype.type(6)


def hard_silu(x):
    return x * hard_sigmoid(x)


def silu(x):
    return x * sigmoid(x)


def softplus(x):
    return _xp(x).logaddexp(x.dtype.type(0), x)


def mish(x):
    return x * _xp(x).tanh(softplus(x))


def softsign(x):
    return x / (1 + _xp(x).abs(x))


def tanh(x):
    return _xp(x).tanh(x)


def exponential(x):
    return _xp(x).exp(x)


def softmax(x, axis=-1):
    xp = _xp(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    xp = _xp(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


hard_swish = hard_silu
swish = silu

# Canonical name -> (function, default parameters). Aliases map to canonical names.
_REGISTRY = {
    "linear": (linear, {}),
    "relu": (relu, {}),
    "relu6": (relu6, {}),
    "leaky_relu": (leaky_relu, {"negative_slope": 0.2}),
    "elu": (elu, {"alpha": 1.0}),
    "selu": (selu, {}),
    "celu": (celu, {"alpha": 1.0}),
    "gelu": (gelu, {"approximate": False}),
    "sigmoid": (sigmoid, {}),
    "hard_sigmoid": (hard_sigmoid, {}),
    "hard_silu": (hard_silu, {}),
    "silu": (silu, {}),
    "mish": (mish, {}),
    "softplus": (softplus, {}),
    "softsign": (softsign, {}),
    "tanh": (tanh, {}),
    "exponential": (exponential, {}),
    "softmax": (softmax, {}),
    "log_softmax": (log_softmax, {}),
}
ALIASES = {"swish": "silu", "hard_swish": "hard_silu", None: "linear"}
# Activations that normalize over the last axis of the output as laid out (Keras semantics).
LAST_AXIS_ACTIVATIONS = ("softmax", "log_softmax")
NAMES = tuple(_REGISTRY) + tuple(k for k in ALIASES if k)


class Activation:
    """A resolved activation: what to compute, and how the CUDA epilogue can compute it.

    `kernel_id` names the fused epilogue variant (None: not fusable, applied afterwards);
    `kernel_param` is its one float parameter (slope / alpha), 0 when unused.
    """

    def __init__(self, name, params=None, fn=None, serialized=None):
        self.name = name
        self.params = dict(params or {})
        known = name in _REGISTRY and fn is None
        self._fn = functools.partial(_REGISTRY[name][0], **self.params) if known else fn
        self.kernel_id = _kernel_id(name, self.params) if known else None
        self.kernel_param = float(next(iter(self.params.values()), 0.0)) if known else 0.0
        self.last_axis = known and name in LAST_AXIS_ACTIVATIONS
        self.serialized = name if serialized is None else serialized

    @property
    def is_linear(self):
        return self.kernel_id == "linear"

    def __call__(self, x):
        return self._fn(x)

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Activation({self.name!r}{extra})"


def _kernel_id(name, params):
    if name == "gelu":
        return "gelu_tanh" if params.get("approximate") else "gelu"
    return name


def _canonical(name):
    return ALIASES.get(name, name)


def get(identifier):
    """Resolve an activation identifier the way `keras.activations.get` does."""
    if isinstance(identifier, Activation):
        return identifier
    if identifier is None or isinstance(identifier, str):
        name = _canonical(identifier)
        if name not in _REGISTRY:
            raise ValueError(f"Could not interpret activation function identifier: {identifier}")
        return Activation(name, _REGISTRY[name][1])
    if isinstance(identifier, dict):
        config = identifier.get("config", identifier.get("class_name"))
        if identifier.get("class_name") in ("function", None) or isinstance(config, str):
            return get(config if isinstance(config, str) else identifier.get("class_name"))
        raise ValueError(f"Could not interpret activation function identifier: {identifier}")
    if isinstance(identifier, functools.partial):
        base = _known_function_name(identifier.func)
        if base and not identifier.args and set(identifier.keywords) <= set(_REGISTRY[base][1]):
            return Activation(base, {**_REGISTRY[base][1], **identifier.keywords})
    if callable(identifier):
        base = _known_function_name(identifier)
        if base:
            return Activation(base, _REGISTRY[base][1])
        name = getattr(identifier, "__name__", type(identifier).__name__)
        return Activation(name, fn=identifier, serialized=identifier)
    raise ValueError(f"Could not interpret activation function identifier: {identifier!r}")


def _known_function_name(fn):
    """Our own functions, and Keras / TF activation functions, by their name."""
    name = getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", "") or ""
    if fn in {f for f, _ in _REGISTRY.values()} or fn in (swish, hard_swish):
        return _canonical(name)
    if module.startswith(("keras", "tf_keras", "tensorflow")) and _canonical(name) in _REGISTRY:
        return _canonical(name)
    return None


def serialize(activation):
    """Keras 3 `get_config()` form: the activation's name (a callable stays as it is)."""
    return get(activation).serialized
