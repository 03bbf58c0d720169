"""Weight initializers with Keras 3 semantics, drawing NumPy arrays.

`init(shape, dtype="float32")` returns a new `numpy.ndarray`. An integer `seed` makes
every call draw the same values; `seed=None` draws fresh values on every call.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._serialization import Configurable, Registry, check_number

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "Identity", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal", "HeUniform",
    "HeNormal", "LecunUniform", "LecunNormal", "Orthogonal", "compute_fans",
    "get", "serialize", "deserialize",
]

# stddev of a standard normal truncated to [-2, 2]: VarianceScaling divides by it so the
# truncated draw keeps the variance it asks for
_TRUNCATED_STDDEV = 0.87962566103423978


def _shape(shape):
    return (int(shape),) if isinstance(shape, numbers.Integral) else tuple(int(d) for d in shape)


def compute_fans(shape, input_axes=None, output_axes=None):
    """Keras's `(fan_in, fan_out)`: convolution kernels are `spatial + (in, out)`.

    With explicit axes (Keras 3.15's EinsumDense use), each fan is the product of the
    sizes along its axes.
    """
    shape = _shape(shape)
    if input_axes is not None or output_axes is not None:
        def size(axes, default):
            axes = default if axes is None else axes
            axes = [axes] if isinstance(axes, numbers.Integral) else axes
            return math.prod(shape[a] for a in axes)
        return size(input_axes, -2), size(output_axes, -1)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer(Configurable):
    """Base class: subclasses implement `__call__(shape, dtype="float32")`."""

    # TF 1.x-era configs carry the dtype; the caller chooses it here
    _ignored_config_keys = frozenset({"dtype"})

    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError


class Zeros(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.zeros(_shape(shape), dtype=dtype or "float32")


class Ones(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.ones(_shape(shape), dtype=dtype or "float32")


class Constant(Initializer):
    """Fills with `value` (a scalar, or anything that broadcasts to the shape)."""

    def __init__(self, value=0.0):
        try:
            np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"Invalid value for argument `value`: expected a number or an array of numbers. "
                f"Received: value={value!r}") from None
        # plain Python values keep the config JSON-serializable
        self.value = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value

    def __call__(self, shape, dtype="float32"):
        dtype = np.dtype(dtype or "float32")
        return np.array(np.broadcast_to(np.asarray(self.value, dtype=dtype), _shape(shape)))

    def get_config(self):
        return {"value": self.value}


class Identity(Initializer):
    """`gain` times the identity matrix; 2D shapes only."""

    def __init__(self, gain=1.0):
        check_number("gain", gain)
        self.gain = gain

    def __call__(self, shape, dtype="float32"):
        shape = _shape(shape)
        if len(shape) != 2:
            raise ValueError(
                "Identity matrix initializer can only be used for 2D matrices. "
                f"Received: shape={shape} of rank {len(shape)}.")
        return (self.gain * np.eye(*shape)).astype(dtype or "float32")


class RandomInitializer(Initializer):
    """Holds the seed; `_draw` gets a generator and returns float64 values."""

    def __init__(self, seed=None):
        if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
            raise ValueError(
                f"`seed` argument should be an integer or None. Received: seed={seed!r}")
        self.seed = None if seed is None else int(seed)

    def __call__(self, shape, dtype="float32"):
        # a fresh generator per call: seeded calls repeat, unseeded ones never do
        # (NumPy wants a non-negative seed; Keras takes any int)
        seed = None if self.seed is None else self.seed % 2**64
        values = self._draw(np.random.default_rng(seed), _shape(shape))
        return values.astype(dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


def _truncated_normal(rng, shape, mean, stddev):
    """Normal draws, those beyond 2 stddev redrawn (Keras 3's truncation)."""
    z = rng.standard_normal(shape)
    outside = np.abs(z) > 2.0
    while outside.any():
        z[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(z) > 2.0
    return mean + stddev * z


class RandomNormal(RandomInitializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        check_number("mean", mean)
        check_number("stddev", stddev, minimum=0)
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def _draw(self, rng, shape):
        return rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(RandomNormal):
    """Normal values within 2 stddev of the mean; those outside are redrawn."""

    def _draw(self, rng, shape):
        return _truncated_normal(rng, shape, self.mean, self.stddev)


class RandomUniform(RandomInitializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        check_number("minval", minval)
        check_number("maxval", maxval)
        if maxval < minval:
            raise ValueError(
                f"Invalid values for arguments `minval` and `maxval`: expected minval <= maxval. "
                f"Received: minval={minval!r}, maxval={maxval!r}")
        self.minval, self.maxval = minval, maxval
        super().__init__(seed)

    def _draw(self, rng, shape):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


class VarianceScaling(RandomInitializer):
    """Values with variance `scale / n`, `n` the fan chosen by `mode`.

    `distribution`: "truncated_normal" (alias "normal"), "untruncated_normal" or "uniform"
    (within ±sqrt(3·scale/n)).
    """

    _modes = ("fan_in", "fan_out", "fan_avg")
    _distributions = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        check_number("scale", scale, minimum=0, strict=True)
        if mode not in self._modes:
            raise ValueError(
                f"Invalid `mode` argument: {mode!r}. Please use one of {list(self._modes)}")
        if not isinstance(distribution, str) or distribution.lower() not in \
                self._distributions + ("normal",):
            raise ValueError(
                f"Invalid `distribution` argument: {distribution!r}. "
                f"Please use one of {list(self._distributions)}")
        distribution = distribution.lower()
        self.scale, self.mode = scale, mode
        self.distribution = "truncated_normal" if distribution == "normal" else distribution
        self.input_axes, self.output_axes = input_axes, output_axes
        super().__init__(seed)

    def _variance(self, shape):
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        return self.scale / max(1.0, n)

    def _draw(self, rng, shape):
        variance = self._variance(shape)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(variance), shape)
        return _truncated_normal(rng, shape, 0.0, math.sqrt(variance) / _TRUNCATED_STDDEV)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mode": self.mode,
                "distribution": self.distribution, "input_axes": self.input_axes,
                "output_axes": self.output_axes}


class _FixedVarianceScaling(VarianceScaling):
    """The named presets: only the seed (and fan axes) are configurable."""

    _preset = None  # (scale, mode, distribution)

    def __init__(self, seed=None, input_axes=None, output_axes=None):
        super().__init__(*self._preset, seed=seed, input_axes=input_axes, output_axes=output_axes)

    def get_config(self):
        return {"seed": self.seed, "input_axes": self.input_axes, "output_axes": self.output_axes}


class GlorotUniform(_FixedVarianceScaling):
    """Uniform within ±sqrt(6 / (fan_in + fan_out))."""
    _preset = (1.0, "fan_avg", "uniform")


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal, stddev sqrt(2 / (fan_in + fan_out))."""
    _preset = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_FixedVarianceScaling):
    """Uniform within ±sqrt(6 / fan_in)."""
    _preset = (2.0, "fan_in", "uniform")


class HeNormal(_FixedVarianceScaling):
    """Truncated normal, stddev sqrt(2 / fan_in)."""
    _preset = (2.0, "fan_in", "truncated_normal")


class LecunUniform(_FixedVarianceScaling):
    """Uniform within ±sqrt(3 / fan_in)."""
    _preset = (1.0, "fan_in", "uniform")


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal, stddev sqrt(1 / fan_in)."""
    _preset = (1.0, "fan_in", "truncated_normal")


class Orthogonal(RandomInitializer):
    """`gain` times a random orthogonal matrix (QR of a normal draw), reshaped.

    The matrix is `prod(shape[:-1]) x shape[-1]`; its rows or its columns, whichever
    are fewer, are orthonormal.
    """

    def __init__(self, gain=1.0, seed=None):
        check_number("gain", gain)
        self.gain = gain
        super().__init__(seed)

    def _draw(self, rng, shape):
        if len(shape) < 2:
            raise ValueError(
                "The tensor to initialize must be at least two-dimensional. "
                f"Received: shape={shape} of rank {len(shape)}.")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
        q *= np.sign(np.diag(r))  # makes the distribution uniform over orthogonal matrices
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


_registry = Registry(
    "initializer", "keras.initializers",
    [Zeros, Ones, Constant, Identity, RandomNormal, RandomUniform, TruncatedNormal,
     VarianceScaling, GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform,
     LecunNormal, Orthogonal],
    # Keras's aliases, and the names Orthogonal has had
    aliases={"uniform": RandomUniform, "normal": RandomNormal, "one": Ones, "zero": Zeros,
             "OrthogonalInitializer": Orthogonal, "orthogonal_initializer": Orthogonal,
             "IdentityInitializer": Identity})

get = _registry.get
serialize = _registry.serialize
deserialize = _registry.deserialize
