"""The Keras-like layer surface beyond the goldens."""
import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import assert_matches
from sepconv_gpu import ops


def test_weights_and_trainability():
    layer = sg.SeparableConv2D(6, (3, 2), depth_multiplier=2, backend="numpy", name="blk")
    assert layer.weights == [] and not layer.built
    y = layer(np.ones((2, 8, 8, 3), "float32"))
    assert layer.built and y.shape == (2, 6, 7, 6)
    assert [w.name for w in layer.weights] == ["depthwise_kernel", "pointwise_kernel", "bias"]
    assert [w.path for w in layer.weights][0] == "blk/depthwise_kernel"
    assert [w.shape for w in layer.weights] == [(3, 2, 3, 2), (1, 1, 6, 6), (6,)]
    assert layer.count_params() == 3 * 2 * 3 * 2 + 6 * 6 + 6
    assert layer.trainable_weights == layer.weights and layer.non_trainable_weights == []
    layer.trainable = False
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 3
    nobias = sg.SeparableConv1D(4, 3, use_bias=False, backend="numpy")
    nobias.build((None, 10, 5))
    assert len(nobias.get_weights()) == 2 and nobias.count_params() == 15 + 20


def test_auto_names_are_unique_and_aliases_share_them():
    a, b = sg.SeparableConv2D(1, 1, backend="numpy"), sg.SeparableConvolution2D(1, 1, backend="numpy")
    assert a.name.startswith("separable_conv2d") and b.name.startswith("separable_conv2d")
    assert a.name != b.name
    assert sg.SeparableConv1D(1, 1, backend="numpy").name.startswith("separable_conv1d")


def test_losses_order_and_activity_scaling():
    layer = sg.SeparableConv2D(3, 3, backend="numpy", depthwise_regularizer="l2",
                               pointwise_regularizer=sg.regularizers.L1(0.5), bias_regularizer="l1",
                               activity_regularizer=sg.regularizers.L2(0.1), bias_initializer="ones")
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 2)).astype("float32")
    y = layer(x)
    dk, pk, b = layer.get_weights()
    want = [0.1 * float(np.sum(y.astype(np.float64) ** 2)) / 4, 0.01 * float(np.sum(dk.astype(np.float64) ** 2)),
            0.5 * float(np.abs(pk).sum()), 0.01 * float(np.abs(b).sum())]
    np.testing.assert_allclose(layer.losses, want, rtol=1e-6)
    layer(x[:2])  # the activity loss is the last call's only
    assert len(layer.losses) == 4


def test_constraints_only_through_apply_constraints():
    layer = sg.SeparableConv2D(3, 3, backend="numpy", depthwise_constraint="non_neg",
                               pointwise_constraint=sg.constraints.MaxNorm(0.5, axis=[0, 1, 2]), bias_constraint="non_neg",
                               bias_initializer=sg.initializers.Constant(-1.0))
    x = np.ones((1, 5, 5, 2), "float32")
    layer(x)
    before = layer.get_weights()
    assert (before[0] < 0).any() and (before[2] < 0).all()  # forward pass never projects
    layer.apply_constraints()
    dk, pk, b = layer.get_weights()
    assert (dk >= 0).all() and (b == 0).all()
    assert np.sqrt((pk.astype(np.float64) ** 2).sum(axis=(0, 1, 2))).max() <= 0.5 + 1e-6
    np.testing.assert_allclose(dk, np.maximum(before[0], 0))


def test_config_round_trip():
    layer = sg.SeparableConv1D(5, 4, strides=2, padding="causal", depth_multiplier=3, activation="gelu",
                               depthwise_initializer=sg.initializers.HeNormal(seed=3),
                               activity_regularizer="l2", pointwise_constraint="unit_norm",
                               dtype="float64", backend="numpy", name="c1")
    config = layer.get_config()
    clone = sg.SeparableConv1D.from_config(config, backend="numpy")
    assert clone.get_config() == config
    assert config["dtype"]["config"]["name"] == "float64" and config["padding"] == "causal"
    assert config["kernel_size"] == (4,) and config["strides"] == (2,)


def test_seeded_initializers_reproduce():
    def weights():
        layer = sg.SeparableConv2D(4, 3, backend="numpy",
                                   depthwise_initializer=sg.initializers.GlorotUniform(seed=7),
                                   pointwise_initializer=sg.initializers.GlorotUniform(seed=8))
        layer.build((None, 5, 5, 3))
        return layer.get_weights()

    for a, b in zip(weights(), weights()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("policy, var_dtype, out_dtype", [
    ("float32", "float32", "float32"), ("float64", "float64", "float64"),
    ("float16", "float16", "float16"), ("mixed_float16", "float32", "float16"),
    ({"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float64"}}, "float64", "float64"),
])
def test_dtype_policies(policy, var_dtype, out_dtype):
    layer = sg.SeparableConv2D(3, 3, dtype=policy, backend="numpy")
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 2)).astype("float32")
    y = layer(x)  # floating inputs are cast to the compute dtype, as Keras does
    assert y.dtype == out_dtype and all(w.dtype == var_dtype for w in layer.weights)
    ref = ops.reference_separable_conv(2, x.astype(out_dtype), *layer.get_weights())
    assert_matches(y, ref)


def test_compute_output_shape_with_unknown_dims():
    layer = sg.SeparableConv2D(7, 3, strides=2, padding="same", data_format="channels_first", backend="numpy")
    assert layer.compute_output_shape((None, 3, 9, None)) == (None, 7, 5, None)
    with pytest.raises(ValueError, match="zero or negative"):
        sg.SeparableConv2D(7, 5, backend="numpy").compute_output_shape((1, 3, 3, 2))


def test_build_needs_channels():
    with pytest.raises(ValueError, match="channel dimension"):
        sg.SeparableConv2D(2, 3, backend="numpy").build((None, 5, 5, None))


def test_callable_activation_sees_the_whole_output(monkeypatch):
    """A non-elementwise callable gets the layer's whole output, as in Keras, however the
    NumPy backend tiles the work."""
    from sepconv_gpu.backends.cpu import numpy_backend

    monkeypatch.setattr(numpy_backend, "TILE_BYTES", 64)  # one output row per tile
    layer = sg.SeparableConv2D(4, 3, padding="same", backend="numpy", activation=lambda t: t - t.mean(),
                               bias_initializer=sg.initializers.Constant(25.0))
    x = np.random.default_rng(4).standard_normal((3, 9, 8, 2)).astype("float32")
    y = layer(x)
    ref = ops.reference_separable_conv(2, x, *layer.get_weights(), padding="same",
                                       activation=lambda t: t - t.mean())
    assert_matches(y, ref)


def test_allow_tf32_travels_through_config_and_calls():
    default = sg.SeparableConv1D(3, 2, backend="numpy")
    assert default.allow_tf32 is False and "allow_tf32" not in default.get_config()
    layer = sg.SeparableConv1D(3, 2, backend="numpy", allow_tf32=True)
    config = layer.get_config()
    assert config["allow_tf32"] is True
    assert sg.SeparableConv1D.from_config(config, backend="numpy").allow_tf32 is True
    x = np.random.default_rng(5).standard_normal((2, 6, 4)).astype("float32")
    y = layer(x)  # the NumPy backend is exact either way
    assert_matches(y, ops.reference_separable_conv(1, x, *layer.get_weights()))
    np.testing.assert_array_equal(ops.separable_conv1d(x, *layer.get_weights(), allow_tf32=True), y)
    with pytest.raises(TypeError, match="`allow_tf32` must be a bool; received 'yes'"):
        ops.separable_conv1d(x, *layer.get_weights(), allow_tf32="yes")


def test_readme_example_runs():
    """The README's Example block, as written (its Keras line is checked in test_golden)."""
    import pathlib
    import re
    import warnings

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Example\s+```python\n(.*?)```", readme, re.S).group(1)
    assert "from_keras(" in block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sg.NumpyFallbackWarning)
        exec(compile(block, "README.md", "exec"), {})


@pytest.mark.parametrize("dtype", [
    {"module": "keras.dtype_policies", "class_name": "QuantizedDTypePolicy",
     "config": {"mode": "int8", "source_name": "float32"}, "registered_name": None},  # Keras 3.15
    {"class_name": "DTypePolicy", "config": None},
])
def test_from_config_with_a_policy_naming_no_dtype_says_what_is_supported(dtype):
    config = {"filters": 4, "kernel_size": 3, "dtype": dtype}
    with pytest.raises(ValueError, match=r"`dtype` must be a dtype name or a DTypePolicy config "
                                         r"naming one of \('float16', .*'mixed_bfloat16'\); "
                                         r"received \{.*'class_name': '\w*DTypePolicy'.*which names none"):
        sg.SeparableConv2D.from_config(config)
