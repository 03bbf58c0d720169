"""Keras-like layers: `BaseSeparableConv(rank)` is what is separable convolution, on the
layer machinery of base_layer.py (Keras's `Layer`); 1D / 2D are thin.

A layer keeps its weights on its backend (chosen by the backend rule when the layer is
made) and returns the same kind of array it was given. Every call goes through
`ops.separable_conv`, which validates and computes the geometry once.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import activations as _activations
from . import constraints as _constraints
from . import geometry as _geometry
from . import initializers as _initializers
from . import ops as _ops
from . import regularizers as _regularizers
from .base_layer import _WEIGHTS_LOCK, Layer
from .base_layer import Variable  # noqa: F401  (sepconv_gpu.layers.Variable, as before)

# Keys only tf.keras 2.x writes into a SeparableConv config (its Conv base's): they mark
# a config as tf.keras's, whose names mean tf.keras's functions (hard_sigmoid). They and
# Keras 2's input-shape keys are ignored otherwise.
_KERAS2_CONFIG_KEYS = frozenset({"groups", "kernel_initializer", "kernel_regularizer",
                                 "kernel_constraint"})
_KERAS2_IGNORED_KEYS = _KERAS2_CONFIG_KEYS | {"batch_input_shape", "input_shape", "input_dim"}


class BaseSeparableConv(Layer):
    """Depthwise separable convolution of spatial rank 1 or 2 (Keras 3's design).

    Takes Keras's arguments, plus `backend` ("numpy", "cuda", "auto"; default: the
    selection rule) and `allow_tf32` (default False: exact float32; True lets float32 on
    the CUDA backend use TF32 tensor cores, 10-bit mantissa products with fp32
    accumulation, as PyTorch / TensorFlow allow by default; the NumPy backend is always
    exact).
    """

    _auto_name = "separable_conv"

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
        self.depthwise_constraint = _constraints.get(depthwise_constraint)
        self.pointwise_constraint = _constraints.get(pointwise_constraint)
        self.bias_constraint = _constraints.get(bias_constraint)
        super().__init__(activity_regularizer=activity_regularizer, trainable=trainable,
                         name=name, dtype=dtype, backend=backend)
        self.allow_tf32 = _ops.check_allow_tf32(allow_tf32)
        self._input_channels = None
        self.depthwise_kernel = self.pointwise_kernel = self.bias = None

    # -- weights -------------------------------------------------------------------------

    @property
    def _channel_axis(self):
        return 1 if self.data_format == "channels_first" else -1

    def _build(self, input_shape):
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
            role = _role(weight_name)
            setattr(self, weight_name, self.add_weight(
                weight_name, shapes[weight_name], getattr(self, f"{role}_initializer"),
                constraint=getattr(self, f"{role}_constraint"),
                regularizer=getattr(self, f"{role}_regularizer")))

    def _weight_names(self):
        return ("depthwise_kernel", "pointwise_kernel") + (("bias",) if self.use_bias else ())

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

    def _check_input(self, shape):
        """The input's rank; then, before the layer is built, every check against the
        weights it would build, and after, its channel count."""
        self._check_rank(shape)
        if not self.built:
            self._check_call_shape(shape)
        elif shape[self._channel_axis] != self._input_channels:
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: expected axis "
                f"{self._channel_axis} of input shape to have value {self._input_channels}, but received "
                f"input with shape {tuple(shape)}")

    def call(self, x):
        """The convolution of x (the backend's array in the compute dtype) with one
        snapshot of the weights."""
        weights = self._weights_snapshot()
        depthwise, pointwise, bias = weights.arrays if self.use_bias else weights.arrays + (None,)
        return _ops.separable_conv_normalized(  # arguments normalized in __init__
            self.rank, x, depthwise, pointwise, bias, self.strides, self.padding,
            self.data_format, self.dilation_rate, self.activation, self._ops, self.allow_tf32,
            weights_cache=weights.cache)

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
