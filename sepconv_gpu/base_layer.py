"""The layer machinery, as Keras's `Layer` holds it: names, the dtype policy, weights as
`Variable`s on the layer's backend, weight snapshots and the lock every weight write
takes, losses, pickling, and the call sequence around a subclass's `build` and `call`.

`layers.BaseSeparableConv` is such a layer (and compat.v1's layers are those).

A layer may be shared by threads: it is built once, and each call computes with one
`WeightsSnapshot`, so a concurrent `set_weights` is seen whole or not at all.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading

import numpy as np

from . import _dtypes
from . import backends as _backends
from . import ops as _ops
from . import regularizers as _regularizers
from ._nvtx import annotate

_MIXED_POLICIES = {"mixed_float16": ("float32", "float16"), "mixed_bfloat16": ("float32", "bfloat16")}
_SUPPORTED_DTYPES = _ops.FLOAT_DTYPES + tuple(_MIXED_POLICIES)

_name_lock = threading.Lock()
_name_counters = {}


def _unique_name(base):
    with _name_lock:
        count = _name_counters.setdefault(base, itertools.count())
        n = next(count)
    return base if n == 0 else f"{base}_{n}"


def _dtype_policy(dtype):
    """(policy name, variable dtype, compute dtype) from a string or DTypePolicy config."""
    if dtype is None:
        dtype = "float32"
    if isinstance(dtype, dict):
        config = dtype.get("config")
        name = config.get("name") if isinstance(config, dict) else dtype.get("name")
        if not isinstance(name, str):  # e.g. Keras's QuantizedDTypePolicy: {mode, source_name}
            raise ValueError(
                f"`dtype` must be a dtype name or a DTypePolicy config naming one of "
                f"{_SUPPORTED_DTYPES}; received {dtype!r}, which names none.")
        dtype = name
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        dtype = np.dtype(dtype).name
    if not isinstance(dtype, str):
        raise TypeError(f"`dtype` must be a dtype name or a DTypePolicy config; received {dtype!r}.")
    if dtype in _MIXED_POLICIES:
        return (dtype,) + _MIXED_POLICIES[dtype]
    if dtype not in _ops.FLOAT_DTYPES:
        raise ValueError(f"`dtype` must be one of {_SUPPORTED_DTYPES}; received {dtype!r}.")
    return dtype, dtype, dtype


# Held by every weight write (build, set_weights, Variable.assign, apply_constraints) and
# while a call reads its weights. One lock for all layers, because compat.v1 layers share
# Variables: a write through one layer must reach every layer using them whole.
_WEIGHTS_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True, eq=False)
class WeightsSnapshot:
    """The weights one call computes with, in `layer.weights` order. Never changed: a
    weight write replaces the arrays (Variables are reassigned, never written in place),
    and the next call takes a new snapshot. `cache` holds what a backend derives from
    these arrays (e.g. device copies in the accumulation dtype); it lives and dies with
    the snapshot."""

    arrays: tuple
    cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def holds(self, arrays):
        """True when `arrays` are this snapshot's, by identity."""
        return len(arrays) == len(self.arrays) and all(a is b for a, b in zip(arrays, self.arrays))


class Variable:
    """A named layer weight living on the layer's backend (a NumPy or CuPy array).

    Its array is replaced, never written in place, by every write (`assign`, the layer's
    `set_weights`, constraints), and a layer computes with the weights so written, never
    with writes into `value` in place: on NumPy `value` is the array made read-only (such
    a write raises), on CUDA, whose arrays cannot be made read-only, a copy (such a write
    changes nothing). Whichever kernel runs, a call sees the same weights.
    """

    def __init__(self, layer, name, value, constraint=None, regularizer=None):
        self._layer = layer
        self.name = name
        self.value = value
        self.constraint = constraint
        self.regularizer = regularizer

    @property
    def path(self):
        return f"{self._layer.name}/{self.name}"

    @property
    def trainable(self):
        return self._layer.trainable

    @property
    def value(self):
        """The weight's array, read-only (see the class)."""
        if self._layer._ops.name == "numpy":
            return self._value
        return self._value.copy()  # a device copy on the current stream: no upload to wait for

    @value.setter
    def value(self, array):
        if self._layer._ops.name == "numpy":
            array = array.view()  # the caller's array keeps its flags
            array.flags.writeable = False
        self._value = array

    shape = property(lambda self: tuple(self._value.shape))
    dtype = property(lambda self: str(self._value.dtype))

    def numpy(self):
        """A host copy (never a view the caller could write into)."""
        return np.array(self._layer._ops.to_numpy(self._value), copy=True)

    def __array__(self, dtype=None, copy=None):
        return self.numpy() if dtype is None else self.numpy().astype(dtype)

    def assign(self, value):
        host = np.asarray(value)
        if host.shape != self.shape:
            raise ValueError(
                f"Cannot assign a value of shape {host.shape} to variable '{self.path}' of shape {self.shape}.")
        if host.dtype.kind not in "fiu" and not _dtypes.is_bfloat16(host.dtype):
            raise TypeError(f"Cannot assign a value of dtype {host.dtype} to variable '{self.path}'.")
        value = self._layer._ops.asarray(host, dtype=self.dtype)
        with _WEIGHTS_LOCK:
            self.value = value

    def __repr__(self):
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}>"


class Layer:
    """A layer computing on one backend (chosen by the backend rule when it is made), with
    Keras's machinery. A subclass says what it is through:

        _build(input_shape)  checks the shape and makes the weights (`add_weight`, set as
                             attributes named by `_weight_names()`); `build` runs it once
        _check_input(shape)  refuses an input the layer cannot take: on every call, and
                             before the first call builds (a refused input builds nothing)
        call(x)              the computation, on the backend's array in the compute dtype
    """

    _auto_name = "layer"  # unnamed layers get this, then _1, _2, ...

    def __init__(self, activity_regularizer=None, trainable=True, name=None, dtype=None,
                 backend=None):
        self.activity_regularizer = _regularizers.get(activity_regularizer)
        if not isinstance(trainable, bool):  # Keras 3's check, and its exception type
            raise ValueError(
                f"Expected `trainable` to be a boolean. Received: trainable={trainable!r} "
                f"(of type {type(trainable).__name__})")
        self.trainable = trainable
        self.name = _unique_name(self._auto_name) if name is None else self._check_name(name)
        self.dtype_policy, self.dtype, self.compute_dtype = _dtype_policy(dtype)
        # bfloat16 needs ml_dtypes: a layer of that policy fails here, clearly, if it is missing
        self._compute_np_dtype = _dtypes.numpy_dtype(self.compute_dtype)
        self._variable_np_dtype = _dtypes.numpy_dtype(self.dtype)
        self._ops = _backends.resolve(backend)
        self.built = False
        self._build_lock = threading.Lock()
        self._snapshot = None
        self._activity_losses = []

    @staticmethod
    def _check_name(name):
        """Keras 3's rule (and exception type): a string without '/'."""
        if not isinstance(name, str) or "/" in name:
            raise ValueError(
                "Argument `name` must be a string and cannot contain character `/`. "
                f"Received: name={name!r} (of type {type(name).__name__})")
        return name

    @property
    def backend(self):
        return self._ops.name

    # -- weights -------------------------------------------------------------------------

    def build(self, input_shape):
        """Create the weights, once: concurrent first calls wait for one build."""
        if self.built:
            return
        with self._build_lock:
            if self.built:
                return
            self._build(input_shape)
            self.built = True  # last: a call that sees it sees every weight

    def _build(self, input_shape):
        raise NotImplementedError

    def _weight_names(self):
        """The attributes holding the weights' Variables, in `weights` order."""
        return ()

    def add_weight(self, name, shape, initializer, constraint=None, regularizer=None):
        """A new Variable `name`: `initializer`'s values in the variable dtype, on the backend."""
        # bfloat16 weights are drawn in float32 and rounded (initializers speak NumPy)
        drawn = "float32" if self.dtype == _dtypes.BFLOAT16 else self.dtype
        value = np.asarray(initializer(shape, dtype=drawn), dtype=self._variable_np_dtype)
        return Variable(self, name, self._ops.asarray(value, dtype=self._variable_np_dtype),
                        constraint=constraint, regularizer=regularizer)

    @property
    def weights(self):
        return [getattr(self, n) for n in self._weight_names()] if self.built else []

    @property
    def trainable_weights(self):
        return self.weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        return [] if self.trainable else self.weights

    def get_weights(self):
        with _WEIGHTS_LOCK:
            values = [w._value for w in self.weights]
        return [np.array(self._ops.to_numpy(v), copy=True) for v in values]

    def _weights_snapshot(self):
        """The current weights as one snapshot: the last one while no weight was replaced."""
        with _WEIGHTS_LOCK:
            arrays = tuple(w._value for w in self.weights)
        snapshot = self._snapshot
        if snapshot is None or not snapshot.holds(arrays):
            snapshot = self._snapshot = WeightsSnapshot(arrays)
        return snapshot

    def set_weights(self, weights):
        """Replace every weight at once; checks count and each shape before touching any."""
        current = self.weights
        try:
            weights = list(weights)
        except TypeError:
            raise TypeError(
                f"Layer '{self.name}' `set_weights` expects a list of {len(current)} arrays; "
                f"received {weights!r}.") from None
        if len(weights) != len(current):
            raise ValueError(
                f"Layer '{self.name}' expects {len(current)} weights "
                f"({', '.join(w.name for w in current) or 'none: the layer is not built'}), "
                f"but received {len(weights)}.")
        values = []
        for var, value in zip(current, weights):
            host = np.asarray(self._ops.to_numpy(value) if self._ops.owns(value) else value)
            if host.shape != var.shape:
                raise ValueError(
                    f"Layer '{self.name}' weight '{var.name}' has shape {var.shape}, "
                    f"but the value given has shape {host.shape}.")
            if host.dtype.kind not in "fiu" and not _dtypes.is_bfloat16(host.dtype):
                raise TypeError(
                    f"Layer '{self.name}' weight '{var.name}' must be numeric; received dtype {host.dtype}.")
            values.append(self._ops.asarray(host, dtype=var.dtype))
        with _WEIGHTS_LOCK:
            for var, value in zip(current, values):
                var.value = value

    def count_params(self):
        if not self.built:
            raise ValueError(
                f"You tried to call `count_params` on layer '{self.name}', but the layer isn't built. "
                "You can build it manually via: `layer.build(input_shape)`.")
        return int(sum(np.prod(w.shape) for w in self.weights))

    def apply_constraints(self):
        """Project each weight with its constraint (what an optimizer step does in Keras)."""
        with _WEIGHTS_LOCK:
            for var in self.weights:
                if var.constraint is not None:
                    var.value = self._ops.asarray(var.constraint(var._value), dtype=var.dtype)

    @property
    def losses(self):
        """Activity loss of the last call, then the weights' penalties in `weights` order."""
        weight_losses = [float(v.regularizer(v._value)) for v in self.weights if v.regularizer is not None]
        return list(self._activity_losses) + weight_losses

    # -- calling -------------------------------------------------------------------------

    def __call__(self, inputs):
        """Keras's call sequence: `inputs` onto the layer's backend (on the caller's stream,
        input to output), checked, the layer built by its first call, a floating input
        cast to the compute dtype, `call`, the activity loss recorded, and the result
        given back as the kind of array `inputs` is."""
        with annotate(f"{type(self).__name__}:{self.name}"), self._ops.stream_scope(inputs):
            x, give_back = self._ops.take(inputs)
            if not _ops.is_float_dtype(getattr(x, "dtype", None)):  # float128 too, as Keras
                raise TypeError(
                    f"Layer '{self.name}' expects a floating-point input ({', '.join(_ops.FLOAT_DTYPES)}); "
                    f"received dtype {getattr(x, 'dtype', type(inputs).__name__)}.")
            if not self.built:
                self._check_input(x.shape)  # a refused input builds nothing
                self.build(x.shape)
            # (again after building: a concurrent first call may have built the layer for
            # another input)
            self._check_input(x.shape)
            if x.dtype != self._compute_np_dtype:  # Keras autocasts floating inputs
                x = _ops.cast(x, self._compute_np_dtype)
            y = self.call(x)
            self._activity_losses = [] if self.activity_regularizer is None else [
                float(self.activity_regularizer(y)) / max(int(y.shape[0]), 1)]
            return give_back(y)

    def _check_input(self, shape):
        """Refuse an input of `shape` this layer cannot take (nothing refused here)."""

    def call(self, x):
        raise NotImplementedError

    # -- pickling (dask and multiprocessing workers get a copy of the layer) ----------------

    def __getstate__(self):
        """Weights travel by value, one whole set (read under the weights lock, as a call
        reads them); the backend by name, resolved again where unpickled; the build lock
        and the snapshot cache (derived arrays) are made anew there."""
        with _WEIGHTS_LOCK:
            values = tuple(w._value for w in self.weights)
        return {**self.__dict__, "_build_lock": None, "_snapshot": None, "_ops": self._ops.name,
                "_weight_values": values}

    def __setstate__(self, state):
        state = dict(state)
        values = state.pop("_weight_values", ())
        self.__dict__.update(state, _build_lock=threading.Lock(), _ops=_backends.resolve(state["_ops"]))
        for var, value in zip(self.weights, values):  # the set read together, not each Variable's own
            var.value = value
