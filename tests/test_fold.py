"""fold_batch_norm: against blocks recorded from real Keras, the float64 unfolded chain, bad input."""
import json
import pathlib

import numpy as np
import pytest

import sepconv_gpu as sg
from sepconv_gpu.compat.v1 import layers as v1_layers

BN_DIR = pathlib.Path(__file__).parent / "data" / "bn_goldens"  # written by record_bn_goldens.py
BN_MANIFEST = json.loads((BN_DIR / "manifest.json").read_text())
CASES = BN_MANIFEST["cases"]


class RecordedBatchNorm:
    """The public surface of the recorded Keras BatchNormalization: its config and weights."""

    def __init__(self, config, weights):
        self._config, self._weights = config, weights

    def get_config(self):
        return dict(self._config)

    def get_weights(self):
        return list(self._weights)


def _recorded_block(case):
    with np.load(BN_DIR / case["file"]) as z:
        arrays = {k: z[k] for k in z.files}
    layer = getattr(sg, case["layer"]).from_config(case["sepconv_config"], backend="numpy")
    layer.build(arrays["x"].shape)
    layer.set_weights([arrays[k] for k in ("depthwise_kernel", "pointwise_kernel", "bias") if k in arrays])
    bn_weights = [arrays[f"bn_{i}"] for i in range(len(case["bn_weight_names"]))]
    return layer, bn_weights, arrays


def _assert_matches_keras(y, expected):
    # Keras runs three float32 passes; the fold runs one, with its kernel and bias rounded
    # once to float32. Each output sums at most ~60 products (3x3 taps x 5 channels, then
    # <= 10 pointwise terms), so both sit within ~n*eps32 ~ 1e-5 of the exact value relative
    # to the output's scale (measured: <= 2.1e-7). A misplaced epsilon or a dropped
    # gamma/beta/mean moves outputs by >= 2.5e-4 of that scale in these cases.
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fold_matches_recorded_keras_block(case):
    layer, bn_weights, arrays = _recorded_block(case)
    before = layer.get_weights()
    bn = RecordedBatchNorm(case["bn_config"], bn_weights)
    folded = sg.fold_batch_norm(layer, bn, activation="relu")
    _assert_matches_keras(folded(arrays["x"]), arrays["y"])
    _assert_matches_keras(sg.fold_batch_norm(layer, bn)(arrays["x"]), arrays["y_bn"])
    assert type(folded) is type(layer) and folded.backend == layer.backend and folded.use_bias
    assert folded.name == f"{layer.name}_folded" and folded.dtype == layer.dtype
    for old, now in zip(before, layer.get_weights()):  # the original layer is untouched
        np.testing.assert_array_equal(old, now)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fold_from_mapping_matches_recorded_keras_block(case):
    layer, bn_weights, arrays = _recorded_block(case)
    mapping = dict(zip(case["bn_weight_names"], bn_weights), epsilon=case["bn_config"]["epsilon"])
    _assert_matches_keras(sg.fold_batch_norm(layer, mapping, "relu")(arrays["x"]), arrays["y"])


def _unfolded_float64(layer, stats, activation, x):
    """The three passes, in float64: separable layer, BatchNormalization, activation."""
    z = layer(x)
    shape = (-1,) + (1,) * layer.rank if layer.data_format == "channels_first" else (-1,)
    s = stats["gamma"] / np.sqrt(stats["moving_variance"] + stats["epsilon"])
    return sg.activations.get(activation)((z - stats["moving_mean"].reshape(shape)) * s.reshape(shape)
                                          + stats["beta"].reshape(shape))


def _random_stats(rng, filters, epsilon=1e-3):
    return {"gamma": rng.uniform(0.5, 1.5, filters), "beta": rng.normal(0, 0.5, filters),
            "moving_mean": rng.normal(0, 0.5, filters), "moving_variance": rng.uniform(0.1, 2, filters),
            "epsilon": epsilon}


@pytest.mark.parametrize("cls, input_shape, kwargs, activation", [
    (sg.SeparableConv2D, (2, 7, 6, 3), dict(padding="same", use_bias=False), "relu"),
    (sg.SeparableConv2D, (2, 3, 7, 6), dict(strides=2, data_format="channels_first", depth_multiplier=2), "swish"),
    (sg.SeparableConv1D, (2, 11, 4), dict(padding="causal", dilation_rate=2), "relu6"),
    (sg.SeparableConv1D, (2, 4, 11), dict(data_format="channels_first"), None),
    (v1_layers.SeparableConv2D, (1, 6, 6, 3), dict(padding="same"), "gelu"),
])
def test_fold_equals_unfolded_chain_in_float64(cls, input_shape, kwargs, activation):
    rng = np.random.default_rng(7)
    layer = cls(5, 3, dtype="float64", backend="numpy", bias_initializer="random_normal", **kwargs)
    x = rng.standard_normal(input_shape)
    layer.build(x.shape)
    stats = _random_stats(rng, 5)
    folded = sg.fold_batch_norm(layer, stats, activation)
    assert type(folded) is cls and folded.dtype == "float64"
    np.testing.assert_allclose(folded(x), _unfolded_float64(layer, stats, activation, x), rtol=1e-12, atol=1e-12)


def test_float16_layer_fold_is_rounded_once():
    rng = np.random.default_rng(3)
    layer = sg.SeparableConv2D(6, 3, padding="same", dtype="float16", backend="numpy")
    x = rng.standard_normal((1, 8, 8, 4)).astype("float16")
    layer.build(x.shape)
    stats = _random_stats(rng, 6)
    folded = sg.fold_batch_norm(layer, stats, "relu")
    assert folded.get_weights()[1].dtype == np.float16 and folded(x).dtype == np.float16
    # The float64 chain on the same float16 weights; the fold's kernel and bias are rounded
    # to float16 (2**-11 relative each) and the call computes in float32 then rounds the
    # output: a few float16 ulps of the output scale.
    weights64 = [w.astype(np.float64) for w in layer.get_weights()]
    layer64 = sg.SeparableConv2D(6, 3, padding="same", dtype="float64", backend="numpy")
    layer64.build(x.shape)
    layer64.set_weights(weights64)
    expected = _unfolded_float64(layer64, stats, "relu", x.astype(np.float64))
    np.testing.assert_allclose(folded(x), expected, rtol=0, atol=4 * 2.0 ** -11 * np.abs(expected).max())


def test_mixed_precision_layer_keeps_float32_weights():
    layer = sg.SeparableConv2D(4, 3, dtype="mixed_float16", backend="numpy")
    layer.build((None, 5, 5, 2))
    folded = sg.fold_batch_norm(layer, _random_stats(np.random.default_rng(0), 4))
    assert folded.dtype_policy == "mixed_float16" and folded.get_weights()[2].dtype == np.float32


def _built(**kwargs):
    layer = sg.SeparableConv2D(4, 3, backend="numpy", **kwargs)
    layer.build((None, 6, 6, 3) if kwargs.get("data_format") != "channels_first" else (None, 3, 6, 6))
    return layer


def _keras_like_bn(axis=-1, center=True, scale=True, n_weights=None, filters=4):
    names = ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]
    weights = [np.ones(filters)] * (len(names) if n_weights is None else n_weights)
    return RecordedBatchNorm({"axis": axis, "center": center, "scale": scale, "epsilon": 1e-3}, weights)


@pytest.mark.parametrize("axis", [-1, 3, [3], (-1,)])
def test_channels_last_axis_forms(axis):
    layer = _built()
    assert sg.fold_batch_norm(layer, _keras_like_bn(axis)).use_bias


@pytest.mark.parametrize("axis", [1, -3, [1]])
def test_channels_first_axis_forms(axis):
    assert sg.fold_batch_norm(_built(data_format="channels_first"), _keras_like_bn(axis)).built


@pytest.mark.parametrize("layer_kwargs, axis", [
    ({}, 1), ({}, 2), ({}, -4), ({}, 4), ({}, [1, 3]), ({}, "channels"),
    ({"data_format": "channels_first"}, -1), ({"data_format": "channels_first"}, 3),
])
def test_axis_that_is_not_the_channel_axis(layer_kwargs, axis):
    with pytest.raises(ValueError, match=r"`batch_norm` .*axis.*received axis="):
        sg.fold_batch_norm(_built(**layer_kwargs), _keras_like_bn(axis))


def test_bad_input_names_the_argument():
    layer = _built()
    stats = _random_stats(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match=r"`layer` .* not built"):
        sg.fold_batch_norm(sg.SeparableConv2D(4, 3), stats)
    with pytest.raises(ValueError, match=r"`layer` .*activation 'relu'.*must be linear"):
        sg.fold_batch_norm(_built(activation="relu"), stats)
    with pytest.raises(TypeError, match=r"`layer` must be .*received ndarray"):
        sg.fold_batch_norm(np.zeros(3), stats)
    with pytest.raises(TypeError, match=r"`batch_norm` must be .*received list"):
        sg.fold_batch_norm(layer, [1, 2])
    with pytest.raises(ValueError, match=r"`batch_norm` moving_mean must have shape \(4,\).*received shape \(5,\)"):
        sg.fold_batch_norm(layer, {**stats, "moving_mean": np.zeros(5)})
    with pytest.raises(ValueError, match=r"`batch_norm` gamma must have shape \(4,\).*received shape \(4, 1\)"):
        sg.fold_batch_norm(layer, {**stats, "gamma": np.ones((4, 1))})
    with pytest.raises(ValueError, match=r"`batch_norm` mapping must have keys.*received keys \['mean'"):
        sg.fold_batch_norm(layer, {"mean": 0})
    with pytest.raises(ValueError, match=r"moving_variance \+ epsilon must be positive"):
        sg.fold_batch_norm(layer, {**stats, "moving_variance": -np.ones(4)})
    with pytest.raises(ValueError, match=r"epsilon must be a finite number >= 0; received 'x'"):
        sg.fold_batch_norm(layer, {**stats, "epsilon": "x"})
    with pytest.raises(ValueError, match=r"should have 4 weights .*received 0 \(is it built"):
        sg.fold_batch_norm(layer, _keras_like_bn(n_weights=0))
    with pytest.raises(ValueError, match=r"center=False, scale=True should have 3 weights"):
        sg.fold_batch_norm(layer, _keras_like_bn(center=False, n_weights=4))


def test_mapping_without_gamma_and_beta_is_identity_affine():
    layer = _built(dtype="float64")
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 3))
    stats = {"moving_mean": np.full(4, 0.25), "moving_variance": np.full(4, 4.0), "epsilon": 0.0}
    np.testing.assert_allclose(sg.fold_batch_norm(layer, stats)(x), (layer(x) - 0.25) / 2.0, rtol=1e-12, atol=1e-12)


def test_fold_of_a_tf1_layer_is_no_new_graph_layer():
    """Folding reads a TF1 layer; it must not add the folded layer's variables to the TF1
    graph (`global_variables()`), where a later model would find them."""
    from sepconv_gpu.compat import v1

    v1.reset_default_graph()
    try:
        layer = v1_layers.SeparableConv2D(5, 3, padding="same", backend="numpy", use_bias=False)
        x = np.random.default_rng(1).standard_normal((1, 6, 6, 3)).astype("float32")
        layer(x)
        before = v1.global_variables()
        stats = _random_stats(np.random.default_rng(2), 5)
        folded = sg.fold_batch_norm(layer, stats)
        assert v1.global_variables() == before and len(before) == 2
        assert [v.name for v in folded.variables] == [
            "separable_conv2d_folded/depthwise_kernel:0", "separable_conv2d_folded/pointwise_kernel:0",
            "separable_conv2d_folded/bias:0"]
        assert folded.losses == [] and folded.scope_name == "separable_conv2d_folded"
        scale = stats["gamma"] / np.sqrt(stats["moving_variance"] + stats["epsilon"])
        expected = (layer(x).astype(np.float64) - stats["moving_mean"]) * scale + stats["beta"]
        np.testing.assert_allclose(folded(x), expected, rtol=1e-5, atol=1e-5)
    finally:
        v1.reset_default_graph()


@pytest.mark.parametrize("name", ["gamma", "beta", "moving_mean", "moving_variance"])
def test_non_numeric_batch_norm_parameter_is_named(name):
    layer = sg.SeparableConv2D(4, 3, backend="numpy")
    layer.build((None, 5, 5, 2))
    stats = {**_random_stats(np.random.default_rng(0), 4), name: list("abcd")}
    with pytest.raises(TypeError, match=f"`batch_norm` {name} must be numbers, one per filter of layer "
                                        f"'{layer.name}'; received \\['a', 'b', 'c', 'd'\\] of dtype <U1"):
        sg.fold_batch_norm(layer, stats)
