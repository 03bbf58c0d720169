"""Fold an inference-mode BatchNormalization into the separable layer before it.

    folded = sg.fold_batch_norm(layer, bn, activation="relu")
    folded(x)  ~=  relu(bn(layer(x), training=False))      # one fused call instead of three

At inference BatchNormalization is a per-channel affine map,
    z -> (z - moving_mean) * s + beta,   s = gamma / sqrt(moving_variance + epsilon),
and the pointwise convolution is linear in each output channel, so `s` scales the
pointwise kernel's columns and the shift becomes the bias:
    pointwise' = pointwise * s,   bias' = (bias - moving_mean) * s + beta.
The layer is read through its public API (get_config / get_weights) and the new one
made with from_config and built from the folded weights.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import activations as _activations
from .layers import BaseSeparableConv

_MAPPING_KEYS = ("gamma", "beta", "moving_mean", "moving_variance", "epsilon")


def fold_batch_norm(layer, batch_norm, activation=None):
    """A new layer (same class, same backend) computing `activation(batch_norm(layer(x)))`.

    `layer`: a built separable layer whose own activation is linear (BN comes before the
    activation). `batch_norm`: a Keras 3 or tf.keras `BatchNormalization` layer (anything
    with `get_config()` and `get_weights()`; its `axis` must be the layer's channel axis),
    or a mapping with `moving_mean`, `moving_variance`, `epsilon` and optionally `gamma`
    (default 1) and `beta` (default 0). `activation`: what follows BN (any activation
    identifier the layers accept; None is linear).

    The fold is computed in float64 and stored in the layer's variable dtype. The new
    layer always has a bias (`use_bias=True`) and is named `<name>_folded`. For float16
    layers the folded kernel and bias are rounded to float16 once (relative error up to
    2**-11 each), where the unfolded chain rounds the intermediate instead: the two agree to
    float16 accuracy, not bit for bit.
    """
    if not isinstance(layer, BaseSeparableConv):
        raise TypeError(f"`layer` must be a sepconv_gpu separable layer; received {type(layer).__name__}.")
    if not layer.built:
        raise ValueError(f"`layer` '{layer.name}' is not built, so it has no weights to fold. "
                         "Build it first: `layer.build(input_shape)` (or call it once).")
    config = layer.get_config()
    own_activation = _activations.get(config["activation"])
    if not own_activation.is_linear:
        raise ValueError(f"`layer` '{layer.name}' applies activation {own_activation.name!r} before "
                         "BatchNormalization, which cannot be folded; the layer's activation must be linear.")
    weights = layer.get_weights()
    depthwise, pointwise = weights[0], weights[1]
    filters = pointwise.shape[-1]
    bias = weights[2].astype(np.float64) if config["use_bias"] else np.zeros(filters)

    gamma, beta, mean, variance, epsilon = _batch_norm_parameters(batch_norm, layer, filters)
    scale = gamma / np.sqrt(variance + epsilon)
    folded_pointwise = pointwise.astype(np.float64) * scale  # scales output channel (last axis) f by s[f]
    folded_bias = (bias - mean) * scale + beta

    folded = type(layer).from_config(
        {**config, "use_bias": True, "activation": activation, "name": f"{config['name']}_folded"},
        backend=layer.backend)
    folded._graph_layer = False  # a TF1 layer's fold is no new graph layer (others ignore it)
    folded._build_with_weights([depthwise, folded_pointwise, folded_bias])  # cast to its dtype
    return folded


def _batch_norm_parameters(batch_norm, layer, filters):
    """(gamma, beta, moving_mean, moving_variance, epsilon) as float64, each checked."""
    if isinstance(batch_norm, Mapping):
        unknown = set(batch_norm) - set(_MAPPING_KEYS)
        missing = {"moving_mean", "moving_variance", "epsilon"} - set(batch_norm)
        if unknown or missing:
            raise ValueError(f"`batch_norm` mapping must have keys moving_mean, moving_variance, epsilon "
                             f"and optionally gamma, beta; received keys {sorted(batch_norm, key=str)}.")
        gamma, beta = batch_norm.get("gamma"), batch_norm.get("beta")
        mean, variance, epsilon = (batch_norm[k] for k in ("moving_mean", "moving_variance", "epsilon"))
    elif callable(getattr(batch_norm, "get_config", None)) and callable(getattr(batch_norm, "get_weights", None)):
        gamma, beta, mean, variance, epsilon = _from_keras_layer(batch_norm, layer)
    else:
        raise TypeError("`batch_norm` must be a BatchNormalization layer (with get_config() and "
                        "get_weights()) or a mapping of its parameters; received "
                        f"{type(batch_norm).__name__}.")

    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, (int, float, np.number)) \
            or not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"`batch_norm` epsilon must be a finite number >= 0; received {epsilon!r}.")
    arrays = []
    for name, value, default in (("gamma", gamma, 1.0), ("beta", beta, 0.0),
                                 ("moving_mean", mean, None), ("moving_variance", variance, None)):
        array = np.full(filters, default) if value is None else np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"`batch_norm` {name} must be numbers, one per filter of layer '{layer.name}'; "
                            f"received {_short(value)} of dtype {array.dtype}.")
        array = array.astype(np.float64)
        if array.shape != (filters,):
            raise ValueError(f"`batch_norm` {name} must have shape ({filters},), one value per filter of "
                             f"layer '{layer.name}'; received shape {array.shape}.")
        arrays.append(array)
    if not np.all(arrays[3] + epsilon > 0):
        raise ValueError("`batch_norm` moving_variance + epsilon must be positive everywhere; received "
                         f"minimum {float(np.min(arrays[3] + epsilon))!r}.")
    return (*arrays, float(epsilon))


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _from_keras_layer(batch_norm, layer):
    """Read a Keras 3 / tf.keras BatchNormalization through its config and weights."""
    config = batch_norm.get_config()
    ndim = layer.rank + 2
    axis = config.get("axis", -1)
    if isinstance(axis, (list, tuple)):  # tf.keras after build, and some Keras 3 configs: [3]
        if len(axis) != 1:
            raise ValueError(f"`batch_norm` must normalize the channel axis alone; received axis={axis!r}.")
        axis = axis[0]
    channel_axis = 1 if layer.data_format == "channels_first" else ndim - 1
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis % ndim != channel_axis \
            or not -ndim <= axis < ndim:
        raise ValueError(
            f"`batch_norm` axis must be the channel axis of layer '{layer.name}' ({layer.data_format}, "
            f"{ndim}D tensors: axis {channel_axis} or {channel_axis - ndim}); received axis={config.get('axis')!r}.")
    center, scale = bool(config.get("center", True)), bool(config.get("scale", True))
    names = ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]
    weights = batch_norm.get_weights()
    if len(weights) != len(names):
        raise ValueError(
            f"`batch_norm` with center={center}, scale={scale} should have {len(names)} weights "
            f"({', '.join(names)}); received {len(weights)} (is it built? renorm is not supported).")
    values = dict(zip(names, weights))
    return (values.get("gamma"), values.get("beta"), values["moving_mean"], values["moving_variance"],
            config.get("epsilon", 1e-3))
