"""TF1 separable convolution layers: `tf.compat.v1.layers.SeparableConv{1,2}D` and the
functional `separable_conv{1,2}d` (`tf.layers.separable_conv2d`).

They compute exactly what the Keras-like layers compute (they are those classes, with the
TF1 surface mixed in): `apply(inputs)`, `scope_name`, `variables`, `get_losses_for`, ...
They also take `backend=` and `allow_tf32=` as those classes do.
What TF1 adds is naming and sharing weights by variable scope:

- a layer's weights are created in its variable scope at its first call and are called
  `<scope>/depthwise_kernel:0`, `<scope>/pointwise_kernel:0`, `<scope>/bias:0`;
- the scope is the layer's name made unique in the enclosing scope (`separable_conv2d`,
  `separable_conv2d_1`, ...; an unnamed layer takes that as its `name` too), unless the
  functional form is given a `name`: then it is exactly that name, and a second call with
  it must say `reuse=True` (or `AUTO_REUSE`) to share the weights;
- `variable_scope(name, reuse=...)` nests the names and sets reuse for everything inside.

A layer that reuses weights does not count their regularization again: TF1 adds a
variable's penalty once, in the layer that created it.
"""
from __future__ import annotations

import warnings
import weakref

from ... import initializers as _initializers
from ... import layers as _keras_layers
from ... import ops as _ops
from ...base_layer import Variable
from ._scope import V1Variable, VariableScope, get_default_graph, variable_scope

__all__ = ["SeparableConv1D", "SeparableConv2D", "separable_conv1d", "separable_conv2d"]


def _weak(obj):
    try:
        return weakref.ref(obj)
    except TypeError:  # e.g. a list: keep it (only the last call's inputs are kept)
        return lambda: obj


class _TF1Layer:
    """The TF1 layer surface, mixed in front of a Keras-like separable convolution class."""

    _tf_keras_names = True  # TF1 layers resolve activation names as tf.keras 2.x did

    # False: the weights are made outside the default graph, under the layer's name (a
    # folded copy of a TF1 layer, `sg.fold_batch_norm`, is no new graph layer).
    _graph_layer = True

    def __init__(self, filters, kernel_size, *args, depthwise_initializer=None,
                 pointwise_initializer=None, name=None, _scope=None, _reuse=None, **kwargs):
        if name == "":  # TF: an empty name is no name (default scope `separable_conv2d`, ...)
            name = _scope = None
        # TF1's kernel default: the variable scope's initializer, else glorot_uniform.
        self._initializers_from_scope = [
            role for role, init in (("depthwise", depthwise_initializer),
                                    ("pointwise", pointwise_initializer)) if init is None]
        default = "glorot_uniform"
        super().__init__(
            filters, kernel_size, *args,
            depthwise_initializer=default if depthwise_initializer is None else depthwise_initializer,
            pointwise_initializer=default if pointwise_initializer is None else pointwise_initializer,
            name=self._auto_name if name is None else name, **kwargs)
        self._named = name is not None
        self._base_name = self.name
        self._scope_arg = _scope  # the functional form's name: the scope, exactly
        self._reuse = _reuse
        self._scope = None
        self._last_inputs = None

    @staticmethod
    def _check_name(name):
        """A TF1 layer name may be a scope path ("block1/conv"); it must be a string."""
        if not isinstance(name, str):
            raise ValueError(f"Argument `name` must be a string. Received: name={name!r} "
                             f"(of type {type(name).__name__})")
        return name

    # -- scope and weights ---------------------------------------------------------------

    def _open_scope(self):
        if self._scope_arg is not None or self._reuse:
            return variable_scope(self._scope_arg or self._base_name, reuse=self._reuse)
        return variable_scope(None, default_name=self._base_name)

    def _create_weights(self, channels):
        """Create (or, when the scope reuses, look up) the weights in the layer's scope.

        Runs inside the base class's `build`, which marks the layer built only after this
        returns: a refusal (ValueError) leaves it unbuilt, so a later call may try again.
        """
        if not self._graph_layer:
            super()._create_weights(channels)
            for weight_name in self._weight_names():
                setattr(self, weight_name, V1Variable(getattr(self, weight_name), f"{self.name}/{weight_name}"))
            self._scope = VariableScope(self.name)
            return
        with self._open_scope() as scope:
            if not self._named:
                self.name = scope.name.rsplit("/", 1)[-1]
            if scope.initializer is not None:
                for role in self._initializers_from_scope:
                    setattr(self, f"{role}_initializer", _initializers.get(scope.initializer))
            super()._create_weights(channels)
            names = self._weight_names()
            shared = get_default_graph().get_variables(scope, [getattr(self, n) for n in names])
            for weight_name, variable in zip(names, shared):
                setattr(self, weight_name, variable)
            self._scope = scope

    @property
    def scope_name(self):
        if self._scope is None:
            raise ValueError(
                f'No name available for layer scope because the layer "{self.name}" has not been '
                "used yet. The scope name is determined the first time the layer instance is "
                "called. You must therefore call the layer before querying `scope_name`.")
        return self._scope.name

    variables = property(lambda self: self.weights)
    trainable_variables = property(lambda self: self.trainable_weights)
    non_trainable_variables = property(lambda self: self.non_trainable_weights)

    # -- calling -------------------------------------------------------------------------

    def __call__(self, inputs):
        outputs = super().__call__(inputs)
        self._last_inputs = _weak(inputs)
        return outputs

    def __getstate__(self):
        """As the base class's; the last call's inputs (a weak reference) stay behind."""
        return {**super().__getstate__(), "_last_inputs": None}

    def apply(self, inputs):
        """TF1's name for calling the layer."""
        return self(inputs)

    def convolution_op(self, inputs, kernel):
        """The layer's convolution alone (no bias, no activation) with a given kernel.

        TF's `Conv.convolution_op(inputs, kernel)` convolves with the layer's strides,
        padding, data format and dilation; a separable convolution has two kernels, so
        `kernel` is the pair `(depthwise_kernel, pointwise_kernel)`: arrays or variables,
        e.g. `(layer.depthwise_kernel, layer.pointwise_kernel)`.
        """
        if not isinstance(kernel, (tuple, list)) or len(kernel) != 2:  # one array is no pair
            shown = (f"an array of shape {tuple(kernel.shape)}" if hasattr(kernel, "shape") else
                     f"a {type(kernel).__name__} of {len(kernel)} items" if isinstance(kernel, (tuple, list))
                     else type(kernel).__name__)
            raise ValueError("`kernel` must be the pair (depthwise_kernel, pointwise_kernel); "
                             f"received {shown}.")
        depthwise, pointwise = kernel
        depthwise, pointwise = (k._value if isinstance(k, Variable) else k
                                for k in (depthwise, pointwise))
        return _ops.separable_conv(
            self.rank, inputs, depthwise, pointwise, None, self.strides, self.padding,
            self.data_format, self.dilation_rate, None, backend=self._ops,
            allow_tf32=self.allow_tf32)

    # -- losses and updates --------------------------------------------------------------

    @property
    def losses(self):
        """The last call's activity loss, then the penalties of the weights this layer created."""
        return list(self._activity_losses) + self.get_losses_for(None)

    def get_losses_for(self, inputs):
        """None: the weight penalties (TF's unconditional losses); the inputs of the last
        call: that call's activity loss; anything else: none."""
        if inputs is None:
            return [float(v.regularizer(v._value)) for v in self.weights
                    if v.regularizer is not None and v.creator is self]
        last = self._last_inputs() if self._last_inputs is not None else None
        called = last is not None and (inputs is last or (
            isinstance(inputs, (list, tuple)) and any(x is last for x in inputs)))
        return list(self._activity_losses) if called else []

    updates = property(lambda self: [])  # a convolution keeps no state to update

    def get_updates_for(self, inputs):
        return []


class SeparableConv1D(_TF1Layer, _keras_layers.SeparableConv1D):
    """`tf.compat.v1.layers.SeparableConv1D(filters, kernel_size, strides=1, padding='valid',
    data_format='channels_last', dilation_rate=1, depth_multiplier=1, activation=None,
    use_bias=True, depthwise_initializer=None, pointwise_initializer=None,
    bias_initializer='zeros', ..., trainable=True, name=None)`; padding 'valid', 'same' or
    'causal'. Arguments after `use_bias` are keyword-only here."""


class SeparableConv2D(_TF1Layer, _keras_layers.SeparableConv2D):
    """`tf.compat.v1.layers.SeparableConv2D(filters, kernel_size, strides=(1, 1),
    padding='valid', data_format='channels_last', dilation_rate=(1, 1), depth_multiplier=1,
    activation=None, use_bias=True, depthwise_initializer=None, pointwise_initializer=None,
    bias_initializer='zeros', ..., trainable=True, name=None)`. Arguments after `use_bias`
    are keyword-only here."""


def _apply_new_layer(layer_class, inputs, filters, kernel_size, args, name, reuse, kwargs):
    warnings.warn(
        f"`sepconv_gpu.compat.v1.layers.{layer_class._auto_name}` is deprecated and will be removed "
        f"in a future version. Please use `sepconv_gpu.{layer_class.__name__}` instead.",
        DeprecationWarning, stacklevel=3)
    layer = layer_class(filters, kernel_size, *args, name=name, _scope=name, _reuse=reuse, **kwargs)
    return layer.apply(inputs)


def separable_conv1d(inputs, filters, kernel_size, *args, name=None, reuse=None, **kwargs):
    """Functional `SeparableConv1D` (TF1 `tf.layers.separable_conv1d`), deprecated as in TF.

    Takes the layer's arguments; `name` is the variable scope of the weights and
    `reuse=True` / `AUTO_REUSE` shares those of an earlier call with the same name.
    """
    return _apply_new_layer(SeparableConv1D, inputs, filters, kernel_size, args, name, reuse, kwargs)


def separable_conv2d(inputs, filters, kernel_size, *args, name=None, reuse=None, **kwargs):
    """Functional `SeparableConv2D` (TF1 `tf.layers.separable_conv2d`), deprecated as in TF.

    Takes the layer's arguments; `name` is the variable scope of the weights and
    `reuse=True` / `AUTO_REUSE` shares those of an earlier call with the same name.
    """
    return _apply_new_layer(SeparableConv2D, inputs, filters, kernel_size, args, name, reuse, kwargs)
