"""Keras-like layers: `BaseSeparableConv(rank)` holds everything; 1D / 2D are thin.

A layer keeps its weights on its backend (chosen by the backend rule when the layer is
made) and returns the same kind of array it was given. Every call goes through
`ops.separable_conv`, which validates and computes the geometry once.

A layer may be shared by threads: it is built once, and each call computes with one
`WeightsSnapshot`, so a concurrent `set_weights` is seen whole or not at all.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import threading

import numpy as np

from . import activations as _activations
from . import backends as _backends
from . import _dtypes
from . import constraints as _constraints
from . import geometry as _geometry
from . import initializers as _initializers
from . import ops as _ops
from . import regularizers as _regularizers
from ._nvtx import annotate

# Keras 2.x configs carry the keys of the Conv base class; they mean nothing here.
# Keys only tf.keras 2.x writes into a SeparableConv config (its Conv base's): they mark
# a config as tf.keras's, whose names mean tf.keras's functions (hard_sigmoid).
_KERAS2_CONFIG_KEYS = frozenset({"groups", "kernel_initializer", "kernel_regularizer",
                                 "kernel_constraint"})
_KERAS2_IGNORED_KEYS = _KERAS2_CONFIG_KEYS | {"batch_input_shape", "input_shape", "input_dim"}
_MIXED_POLICIES = {"mixed_float16": ("float32", "float16"), "mixed_bfloat16": ("float32", "bfloat16")}
_FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")

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
        dtype = dtype.get("config", {}).get("name", dtype.get("name"))
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        dtype = np.dtype(dtype).name
    if not isinstance(dtype, str):
        raise TypeError(f"`dtype` must be a dtype name or a DTypePolicy config; received {dtype!r}.")
    if dtype in _MIXED_POLICIES:
        return (dtype,) + _MIXED_POLICIES[dtype]
    if dtype not in _FLOAT_NAMES:
        raise ValueError(
            f"`dtype` must be one of {_FLOAT_NAMES + tuple(_MIXED_POLICIES)}; received {dtype!r}.")
    return dtype, dtype, dtype


# Held by every weight write (build, set_weights, Variable.assign, apply_constraints) and
# while a call reads its weights. One lock for all layers, because compat.v1 layers share
# Variables: a write through one layer must reach every layer using them whole.
_WEIGHTS_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True, eq=False)
class WeightsSnapshot:
    """The weights one call computes with. Never changed: a weight write replaces the
    arrays (Variables are reassigned, never written in place), and the next call takes a
    new snapshot. `cache` holds what a backend derives from these arrays (e.g. device
    copies in the accumulation dtype); it lives and dies with the snapshot."""

    depthwise: object
    pointwise: object
    bias: object = None
    cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def holds(self, arrays):
        """True when `arrays` (depthwise, pointwise[, bias]) are this snapshot's, by identity."""
        mine = (self.depthwise, self.pointwise, self.bias)
        return all(a is b for a, b in zip(arrays, mine))


class Variable:
    """A named layer weight living on the layer's backend (a NumPy or CuPy array).

    Its `value` is replaced, never written in place, by every write here; code writing
    into `value` in place must not expect layers to notice (their snapshot cache).
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

    shape = property(lambda self: tuple(self.value.shape))
    dtype = property(lambda self: str(self.value.dtype))

    def numpy(self):
        """A host copy (never a view the caller could write into)."""
        return np.array(self._layer._ops.to_numpy(self.value), copy=True)

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


class BaseSeparableConv:
    """Depthwise separable convolution of spatial rank 1 or 2 (Keras 3's design).

    Takes Keras's arguments, plus `backend` ("numpy", "cuda", "auto"; default: the
    selection rule) and `allow_tf32` (default False: exact float32; True lets float32 on
    the CUDA backend use TF32 tensor cores, 10-bit mantissa products with fp32
    accumulation, as PyTorch / TensorFlow allow by default; the NumPy backend is always
    exact).
    """

    _auto_name = "separable_conv"  # unnamed layers get this, then _1, _2, ...

    # Activation names mean Keras 3's functions; the TF1 layers (compat.v1) set this so
    # that "hard_sigmoid" keeps tf.keras 2.x's meaning there, as in TensorFlow.
    _tf_keras_names = False

    def __init__(self, rank, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, trainable=True, name=None,
                 dtype=None, backend=None, allow_tf32=False, **kwargs):
        unknown = set(kwargs) - _KERAS2_IGNORED_KEYS
        if unknown:
            raise TypeError(f"Unrecognized keyword arguments passed to {type(self).__name__}: {sorted(unknown)}")
        self.rank = rank
        self.filters = _geometry.normalize_positive_int(filters, "filters")
        self.kernel_size = _geometry.normalize_tuple(kernel_size, rank, "kernel_size")
        self.strides, self.padding, self.data_format, self.dilation_rate = \
            _geometry.normalize_call_args(rank, strides, padding, data_format, dilation_rate)
        self.depth_multiplier = _geometry.normalize_positive_int(depth_multiplier, "depth_multiplier")
        self.activation = _activations.get(activation, tf_keras=self._tf_keras_names)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"`use_bias` must be a bool; received {use_bias!r}.")
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = _initializers.get(depthwise_initializer)
        self.pointwise_initializer = _initializers.get(pointwise_initializer)
        self.bias_initializer = _initializers.get(bias_initializer)
        self.depthwise_regularizer = _regularizers.get(depthwise_regularizer)
        self.pointwise_regularizer = _regularizers.get(pointwise_regularizer)
        self.bias_regularizer = _regularizers.get(bias_regularizer)
        self.activity_regularizer = _regularizers.get(activity_regularizer)
        self.depthwise_constraint = _constraints.get(depthwise_constraint)
        self.pointwise_constraint = _constraints.get(pointwise_constraint)
        self.bias_constraint = _constraints.get(bias_constraint)
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
        self.allow_tf32 = _ops.check_allow_tf32(allow_tf32)
        self.built = False
        self._build_lock = threading.Lock()
        self._snapshot = None
        self._input_channels = None
        self._activity_losses = []
        self.depthwise_kernel = self.pointwise_kernel = self.bias = None

    @staticmethod
    def _check_name(name):
        """Keras 3's rule (and exception type): a string without '/'."""
        if not isinstance(name, str) or "/" in name:
            raise ValueError(
                "Argument `name` must be a string and cannot contain character `/`. "
                f"Received: name={name!r} (of type {type(name).__name__})")
        return name

    # -- weights -------------------------------------------------------------------------

    @property
    def backend(self):
        return self._ops.name

    @property
    def _channel_axis(self):
        return 1 if self.data_format == "channels_first" else -1

    def build(self, input_shape):
        """Create the weights, once: concurrent first calls wait for one build."""
        if self.built:
            return
        with self._build_lock:
            if self.built:
                return
            try:
                input_shape = tuple(input_shape)
            except TypeError:
                raise TypeError(
                    f"Layer '{self.name}' `build` expects `input_shape`, a tuple of {self.rank + 2} "
                    f"dimensions; received {input_shape!r}.") from None
            self._check_rank(input_shape)
            channels = input_shape[self._channel_axis]
            if channels is None:
                raise ValueError(
                    f"The channel dimension of the inputs to layer '{self.name}' should be defined. "
                    f"Received input_shape={input_shape}.")
            channels = self._check_channels(channels, input_shape)
            self._check_weight_sizes(channels)
            with _WEIGHTS_LOCK:
                self._create_weights(channels)
            self._input_channels = channels
            self.built = True  # last: a call that sees it sees every weight

    def _check_channels(self, channels, input_shape):
        try:
            channels = None if isinstance(channels, bool) else operator.index(channels)
        except TypeError:
            channels = None
        if channels is None or channels <= 0:
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: its channel axis "
                f"{self._channel_axis} must be a positive size; received input with shape {tuple(input_shape)}")
        return channels

    def _weight_shapes(self, channels):
        return {
            "depthwise_kernel": self.kernel_size + (channels, self.depth_multiplier),
            "pointwise_kernel": (1,) * self.rank + (channels * self.depth_multiplier, self.filters),
            "bias": (self.filters,),
        }

    def _check_weight_sizes(self, channels):
        """Refuse weights this machine cannot hold before an initializer tries (initializers
        draw float64, then cast)."""
        arguments = {"depthwise_kernel": f"`kernel_size`={self.kernel_size}, "
                                         f"`depth_multiplier`={self.depth_multiplier}",
                     "pointwise_kernel": f"`depth_multiplier`={self.depth_multiplier}, `filters`={self.filters}",
                     "bias": f"`filters`={self.filters}"}
        shapes = self._weight_shapes(channels)
        for weight_name in self._weight_names():
            nbytes = math.prod(shapes[weight_name]) * (8 + np.dtype(self.dtype).itemsize)
            _geometry.check_host_memory(
                nbytes, f"Layer '{self.name}' weight '{weight_name}' of shape {shapes[weight_name]} "
                        f"({arguments[weight_name]}, {channels} input channels)")

    def _create_weights(self, channels):
        """The weights' Variables as attributes (compat.v1 layers look them up by scope)."""
        shapes = self._weight_shapes(channels)
        for weight_name in self._weight_names():
            init = getattr(self, f"{_role(weight_name)}_initializer")
            # bfloat16 weights are drawn in float32 and rounded (initializers speak NumPy)
            drawn = "float32" if self.dtype == _dtypes.BFLOAT16 else self.dtype
            value = np.asarray(init(shapes[weight_name], dtype=drawn), dtype=self._variable_np_dtype)
            setattr(self, weight_name, Variable(
                self, weight_name, self._ops.asarray(value, dtype=self._variable_np_dtype),
                constraint=getattr(self, f"{_role(weight_name)}_constraint"),
                regularizer=getattr(self, f"{_role(weight_name)}_regularizer")))

    def _weight_names(self):
        return ("depthwise_kernel", "pointwise_kernel") + (("bias",) if self.use_bias else ())

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
            values = [w.value for w in self.weights]
        return [np.array(self._ops.to_numpy(v), copy=True) for v in values]

    def _weights_snapshot(self):
        """The current weights as one snapshot: the last one while no weight was replaced."""
        with _WEIGHTS_LOCK:
            arrays = tuple(w.value for w in self.weights)
        snapshot = self._snapshot
        if snapshot is None or not snapshot.holds(arrays):
            snapshot = self._snapshot = WeightsSnapshot(*arrays)
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
                    var.value = self._ops.asarray(var.constraint(var.value), dtype=var.dtype)

    @property
    def losses(self):
        """Activity loss of the last call, then depthwise, pointwise and bias penalties."""
        weight_losses = [float(v.regularizer(v.value)) for v in self.weights if v.regularizer is not None]
        return list(self._activity_losses) + weight_losses

    # -- calling -------------------------------------------------------------------------

    def _check_rank(self, shape):
        if len(shape) != self.rank + 2:
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: expected "
                f"ndim={self.rank + 2}, found ndim={len(shape)}. Full shape received: {tuple(shape)}")

    def _check_call_shape(self, shape):
        """Every check of a call on `shape` against the weights it would build: a refused
        input (no channels, a kernel larger than the input, ...) builds nothing."""
        channels = self._check_channels(shape[self._channel_axis], shape)
        shapes = self._weight_shapes(channels)
        _geometry.make_geometry(
            self.rank, shape, shapes["depthwise_kernel"], shapes["pointwise_kernel"],
            shapes["bias"] if self.use_bias else None, self.strides, self.padding, self.data_format,
            self.dilation_rate)

    def compute_output_shape(self, input_shape):
        """The shape a call returns (glu's halved last axis included, where Keras 3.15
        reports the convolution's shape)."""
        shape = _geometry.compute_output_shape(
            self.rank, input_shape, self.filters, self.kernel_size, self.strides, self.padding,
            self.data_format, self.dilation_rate)
        if None in shape:  # unknown batch: only the last axis can change
            known = self.activation.output_shape(tuple(1 if n is None else n for n in shape))
            return tuple(None if n is None else m for n, m in zip(shape, known))
        return self.activation.output_shape(shape)

    def __call__(self, inputs):
        with annotate(f"{type(self).__name__}:{self.name}"):
            return self.call(inputs)

    def call(self, inputs):
        with self._ops.stream_scope(inputs):  # the caller's stream, input to output
            return self._call(inputs)

    def _call(self, inputs):
        x, give_back = self._ops.take(inputs)
        if not _ops.is_float_dtype(getattr(x, "dtype", None)):  # float128 too, as Keras
            raise TypeError(
                f"Layer '{self.name}' expects a floating-point input ({', '.join(_ops.FLOAT_DTYPES)}); "
                f"received dtype {getattr(x, 'dtype', type(inputs).__name__)}.")
        self._check_rank(x.shape)
        if not self.built:
            self._check_call_shape(x.shape)
            self.build(x.shape)
        channels = x.shape[self._channel_axis]
        if channels != self._input_channels:
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: expected axis "
                f"{self._channel_axis} of input shape to have value {self._input_channels}, but received "
                f"input with shape {tuple(x.shape)}")
        if x.dtype != self._compute_np_dtype:  # Keras autocasts floating inputs
            x = _ops.cast(x, self._compute_np_dtype)
        weights = self._weights_snapshot()
        y = _ops.separable_conv(
            self.rank, x, weights.depthwise, weights.pointwise, weights.bias, self.strides,
            self.padding, self.data_format, self.dilation_rate, self.activation,
            backend=self._ops, allow_tf32=self.allow_tf32, weights_cache=weights.cache)
        self._activity_losses = [] if self.activity_regularizer is None else [
            float(self.activity_regularizer(y)) / max(int(y.shape[0]), 1)]
        return give_back(y)

    # -- config --------------------------------------------------------------------------

    def get_config(self):
        """Keras 3 form: a real `keras.layers.SeparableConv{1,2}D.from_config` accepts it
        (`allow_tf32`, ours alone, appears only when True)."""
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": {"module": "keras", "class_name": "DTypePolicy",
                      "config": {"name": self.dtype_policy}, "registered_name": None},
            "depth_multiplier": self.depth_multiplier,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "activation": _activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "depthwise_initializer": _initializers.serialize(self.depthwise_initializer),
            "pointwise_initializer": _initializers.serialize(self.pointwise_initializer),
            "bias_initializer": _initializers.serialize(self.bias_initializer),
            "depthwise_regularizer": _regularizers.serialize(self.depthwise_regularizer),
            "pointwise_regularizer": _regularizers.serialize(self.pointwise_regularizer),
            "bias_regularizer": _regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": _regularizers.serialize(self.activity_regularizer),
            "depthwise_constraint": _constraints.serialize(self.depthwise_constraint),
            "pointwise_constraint": _constraints.serialize(self.pointwise_constraint),
            "bias_constraint": _constraints.serialize(self.bias_constraint),
        }
        if self.allow_tf32:
            config["allow_tf32"] = True
        return config

    @classmethod
    def from_config(cls, config, backend=None):
        """Accepts Keras 3 and tf.keras 2.x configs (Keras-2-only keys are ignored; in a
        tf.keras config the activation means tf.keras's function of that name)."""
        if not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict; received {type(config).__name__}.")
        kwargs = {k: v for k, v in config.items() if k not in _KERAS2_IGNORED_KEYS}
        if _KERAS2_CONFIG_KEYS & config.keys():
            kwargs["activation"] = _activations.get(config.get("activation"), tf_keras=True)
        return cls(**kwargs, backend=backend)

    @classmethod
    def from_keras(cls, keras_layer, backend=None, allow_tf32=False):
        """This layer for a Keras 3 or tf.keras `SeparableConv{1,2}D`: its config and, when
        it is built, its weights. Keras itself is never imported: any object with
        `get_config()` and `get_weights()` will do. An unbuilt Keras layer (no weights)
        gives an unbuilt layer, which makes its own weights at its first call, as Keras's
        would. The input channel count is read off the depthwise kernel's shape."""
        if not (callable(getattr(keras_layer, "get_config", None))
                and callable(getattr(keras_layer, "get_weights", None))):
            raise TypeError(
                "`keras_layer` must be a Keras layer (with get_config() and get_weights()); "
                f"received {type(keras_layer).__name__}.")
        config = keras_layer.get_config()
        if not isinstance(config, dict) or "depth_multiplier" not in config:
            raise ValueError(
                "`keras_layer` must be a separable convolution layer; its config has no "
                f"`depth_multiplier` (layer {type(keras_layer).__name__}).")
        layer = cls.from_config({**config, "allow_tf32": allow_tf32}, backend=backend)
        weights = list(keras_layer.get_weights())
        if weights:
            layer._build_with_weights(weights)
        return layer

    def _build_with_weights(self, weights):
        """Build for the input channel count the depthwise kernel (*kernel, C, M) implies,
        then take `weights` (Keras order) as set_weights does."""
        input_shape = [None] * (self.rank + 2)
        input_shape[self._channel_axis] = np.shape(weights[0])[-2]
        self.build(tuple(input_shape))
        self.set_weights(weights)

    def __repr__(self):
        built = f", built on {self.backend}" if self.built else ""
        return (f"<{type(self).__name__} name={self.name}, filters={self.filters}, "
                f"kernel_size={self.kernel_size}{built}>")

    # -- pickling (dask and multiprocessing workers get a copy of the layer) ----------------

    def __getstate__(self):
        """Weights travel by value, one whole set (read under the weights lock, as a call
        reads them); the backend by name, resolved again where unpickled; the build lock
        and the snapshot cache (derived arrays) are made anew there."""
        with _WEIGHTS_LOCK:
            values = tuple(w.value for w in self.weights)
        return {**self.__dict__, "_build_lock": None, "_snapshot": None, "_ops": self._ops.name,
                "_weight_values": values}

    def __setstate__(self, state):
        state = dict(state)
        values = state.pop("_weight_values", ())
        self.__dict__.update(state, _build_lock=threading.Lock(), _ops=_backends.resolve(state["_ops"]))
        for var, value in zip(self.weights, values):  # the set read together, not each Variable's own
            var.value = value


def _role(weight_name):
    return weight_name.split("_")[0]


class SeparableConv1D(BaseSeparableConv):
    _auto_name = "separable_conv1d"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True, **kwargs):
        super().__init__(1, filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, **kwargs)


class SeparableConv2D(BaseSeparableConv):
    _auto_name = "separable_conv2d"

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True, **kwargs):
        super().__init__(2, filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, **kwargs)


SeparableConvolution1D = SeparableConv1D
SeparableConvolution2D = SeparableConv2D
