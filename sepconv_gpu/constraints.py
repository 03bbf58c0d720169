"""Weight constraints with Keras 3 formulas: `c(w) -> new array`.

The result is an array of the same module as `w` (NumPy or CuPy), computed in its dtype
as Keras does; `w` itself is never modified. Layers apply constraints when weights are
updated, never in the forward pass.
"""
from __future__ import annotations

import numbers

from ._serialization import Configurable, Registry, array_module, as_array, check_number

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm",
           "get", "serialize", "deserialize"]

EPSILON = 1e-7  # keras.backend.epsilon()


class Constraint(Configurable):
    """Base class: `__call__(w)` returns the projected weights (identity here)."""

    def __call__(self, w):
        return w


def _check_axis(axis):
    """An int or a sequence of ints, kept as given so the config round-trips."""
    axes = [axis] if isinstance(axis, numbers.Integral) else axis
    if not isinstance(axes, (list, tuple)) or not all(
            isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
        raise ValueError(
            f"Invalid value for argument `axis`: expected an int or a list of ints. "
            f"Received: axis={axis!r}")
    return axis


def _float_array(w):
    w = as_array(w)
    return w if w.dtype.kind in "fc" else w.astype("float32")


def _norms(w, axis):
    xp = array_module(w)
    axis = axis if isinstance(axis, numbers.Integral) else tuple(axis)
    return xp.sqrt(xp.sum(xp.square(w), axis=axis, keepdims=True))


class _NormConstraint(Constraint):
    """Rescales `w` so each slice along `axis` gets the norm `_desired(norms)`."""

    def __call__(self, w):
        w = _float_array(w)
        norms = _norms(w, self.axis)
        return w * (self._desired(norms) / (EPSILON + norms))


class MaxNorm(_NormConstraint):
    """Norms along `axis` at most `max_value`."""

    def __init__(self, max_value=2, axis=0):
        check_number("max_value", max_value, minimum=0)
        self.max_value, self.axis = max_value, _check_axis(axis)

    def _desired(self, norms):
        return array_module(norms).clip(norms, 0, self.max_value)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class MinMaxNorm(_NormConstraint):
    """Norms along `axis` moved by `rate` of the way into [min_value, max_value]."""

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        check_number("min_value", min_value, minimum=0)
        check_number("max_value", max_value, minimum=min_value)
        check_number("rate", rate)
        self.min_value, self.max_value, self.rate = min_value, max_value, rate
        self.axis = _check_axis(axis)

    def _desired(self, norms):
        clipped = array_module(norms).clip(norms, self.min_value, self.max_value)
        return self.rate * clipped + (1 - self.rate) * norms

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


class UnitNorm(Constraint):
    """Norms along `axis` equal to 1."""

    def __init__(self, axis=0):
        self.axis = _check_axis(axis)

    def __call__(self, w):
        w = _float_array(w)
        return w / (EPSILON + _norms(w, self.axis))

    def get_config(self):
        return {"axis": self.axis}


class NonNeg(Constraint):
    """Negative weights set to 0."""

    def __call__(self, w):
        w = as_array(w)
        return array_module(w).maximum(w, 0)


_registry = Registry("constraint", "keras.constraints", [MaxNorm, MinMaxNorm, NonNeg, UnitNorm])

get = _registry.get
serialize = _registry.serialize
deserialize = _registry.deserialize
