"""Every recorded Keras case: outputs, weight shapes, losses, configs and errors."""
import json

import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import KERAS_TOLERANCE, assert_matches
from conftest import GOLDEN_DIR, MANIFEST, golden_arrays

CASES = MANIFEST["cases"]
LAYERS = {name: getattr(sg, name) for name in
          ("SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D")}


def _weights(arrays):
    return [arrays[k] for k in ("depthwise_kernel", "pointwise_kernel", "bias") if k in arrays]


def _assert_close(y, expected):
    assert_matches(y, expected, tolerance=KERAS_TOLERANCE)


def _built_layer(case, layer=None):
    arrays = golden_arrays(case)
    layer = layer or LAYERS[case["layer"]](**case["kwargs"], backend="numpy")
    layer.build(arrays["x"].shape)
    layer.set_weights(_weights(arrays))
    return layer, arrays


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_output_matches_keras(case):
    layer, arrays = _built_layer(case)
    assert [list(w.shape) for w in layer.get_weights()] == case["weight_shapes"]
    assert list(layer.compute_output_shape(case["input_shape"])) == case["output_shape"]
    y = layer(arrays["x"])
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    _assert_close(y, arrays["y"])
    if "losses" in case:
        np.testing.assert_allclose(layer.losses, case["losses"], rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_from_recorded_config(case):
    """A user can rebuild the real Keras layer here: from_config + set_weights."""
    cls = LAYERS[case["layer"]]
    layer = cls.from_config(case["config"], backend="numpy")
    assert layer.name == case["config"]["name"]
    layer, arrays = _built_layer(case, layer)
    _assert_close(layer(arrays["x"]), arrays["y"])
    config = json.loads(json.dumps(layer.get_config()))
    if case["oracle"].startswith("keras-3"):
        assert config == case["config"]  # our get_config is Keras 3's, key for key
    else:  # a tf.keras 2.x config comes back in Keras 3 form with the same meaning
        for key in ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                    "depth_multiplier", "use_bias", "name", "trainable"):
            assert config[key] == case["config"][key], key
        # tf.keras writes "swish" where Keras 3 writes "silu": same function
        assert sg.activations.get(config["activation"]).name == \
            sg.activations.get(case["config"]["activation"]).name
        for key in ("depthwise_regularizer", "pointwise_regularizer", "bias_regularizer",
                    "activity_regularizer"):
            recorded = case["config"][key]
            assert (config[key] is None) == (recorded is None)
            if recorded:
                assert config[key]["class_name"] == recorded["class_name"]
                assert config[key]["config"] == pytest.approx(recorded["config"])
        assert config["dtype"]["config"]["name"] == case["config"]["dtype"]


def _seed_rule_expectation(err):
    """The seeds (tf.keras 2.x) win where Keras versions disagree: strides > 1 with
    dilation > 1 is an error even where Keras 3 accepted it."""
    kw = err["kwargs"]
    strides, dilation = np.atleast_1d(kw.get("strides", 1)), np.atleast_1d(kw.get("dilation_rate", 1))
    if (strides > 1).any() and (dilation > 1).any():
        return "ValueError"
    return err["raises"]


_STRIDES_AND_DILATION = "`strides > 1` not supported in conjunction with `dilation_rate > 1`"
# What our message must say for each recorded error case, in MANIFEST["errors"] order (the
# case's oracle and arguments in the comment); None: no error, as the oracle recorded.
OUR_PHRASES = [
    "argument `filters`. Expected a strictly positive value. Received filters=0.",  # filters=0
    "argument `filters`. Expected a strictly positive value. Received filters=-2.",
    "`kernel_size` argument must be a tuple of 2 integers. Received kernel_size=0",
    "`kernel_size` argument must be a tuple of 2 integers. Received kernel_size=(3, 3, 3)",
    "`strides` argument must be a tuple of 2 integers. Received strides=0",
    "'causal' is only supported for 1D convolutions",                 # Keras 3, 2D causal
    "'causal' is only supported for 1D convolutions",                 # tf_keras, 2D causal
    "`padding` argument must be one of {'valid', 'same'}. Received: full",
    _STRIDES_AND_DILATION + ". Received: strides=(2, 2)",             # Keras 3 accepts it
    _STRIDES_AND_DILATION + ". Received: strides=(2, 2)",
    "argument `depth_multiplier`. Expected a strictly positive value. Received depth_multiplier=0.",
    "`data_format` argument must be one of {'channels_first', 'channels_last'}. "
    "Received: data_format=nhwc",
    "expected ndim=4, found ndim=3",                                  # 2D layer, 3D input
    "expected ndim=4, found ndim=5",
    "Computed output size would be zero or negative. Received `inputs shape=(1, 3, 3, 3)`",
    "Could not interpret activation function identifier: no_such_activation",
    "Could not interpret initializer identifier: no_such_init",
    "expected ndim=3, found ndim=4",                                  # 1D layer, 4D input
    "`kernel_size` argument must be a tuple of 1 integers. Received kernel_size=(3, 3)",
    None,                                                             # tf_keras: 1D causal, NCW
    _STRIDES_AND_DILATION + ". Received: strides=(2,) and dilation_rate=(2,)",
]
assert len(OUR_PHRASES) == len(MANIFEST["errors"]), "one phrase per recorded error case"


@pytest.mark.parametrize("err, phrase", zip(MANIFEST["errors"], OUR_PHRASES),
                         ids=[f"{e['oracle']}-{e['kwargs']}" for e in MANIFEST["errors"]])
def test_error_cases(err, phrase):
    cls = LAYERS[err["layer"]]
    x = np.zeros(err["input_shape"], dtype=np.float32)
    expected = _seed_rule_expectation(err)
    assert (expected is None) == (phrase is None)
    if expected is None:  # the oracle computed: so do we, with the shape its padding implies
        layer = cls(**err["kwargs"], backend="numpy")
        y = layer(x)
        assert y.shape == tuple(layer.compute_output_shape(x.shape))
        if err["kwargs"].get("padding") == "causal":  # the length is kept
            channels_first = err["kwargs"].get("data_format") == "channels_first"
            length, channels = (2, 1) if channels_first else (1, 2)
            assert y.shape[length] == x.shape[length]
            assert y.shape[channels] == err["kwargs"]["filters"]
        return
    with pytest.raises({"ValueError": ValueError, "TypeError": TypeError}[expected]) as info:
        cls(**err["kwargs"], backend="numpy")(x)
    assert phrase in str(info.value)
    if (err["message"] or "").startswith("Could not interpret"):
        assert str(info.value) == err["message"]  # Keras's message, word for word


def test_goldens_cover_every_activation_and_padding():
    """The recorded set exercises what we claim to match: every activation in a layer case
    or, for the rest, alone (activations.json, checked in test_activations.py)."""
    alone = json.loads((GOLDEN_DIR / "activations.json").read_text())["cases"]
    acts = {c["kwargs"].get("activation") for c in CASES} | {c["name"] for c in alone}
    # tf.keras's hard_sigmoid: checked against tf.keras's documented values instead
    assert set(sg.activations.NAMES) - {"tf_keras_hard_sigmoid"} <= acts
    pads = {(c["layer"][-2:], c["kwargs"].get("padding", "valid")) for c in CASES}
    assert {("1D", "causal"), ("2D", "same"), ("2D", "valid"), ("1D", "same")} <= pads


class RecordedKerasLayer:
    """What from_keras reads of a real Keras 3 / tf.keras layer, replayed from a recording."""

    def __init__(self, config, weights):
        self._config, self._weights = config, weights
        self.built = bool(weights)

    def get_config(self):
        return json.loads(json.dumps(self._config))  # a fresh copy, as Keras returns

    def get_weights(self):
        return [w.copy() for w in self._weights]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_from_keras(case):
    """One call rebuilds a built Keras layer here: config, build and weights."""
    arrays = golden_arrays(case)
    keras_layer = RecordedKerasLayer(case["config"], _weights(arrays))
    layer = LAYERS[case["layer"]].from_keras(keras_layer, backend="numpy")
    assert layer.built and layer.name == case["config"]["name"]
    for ours, recorded in zip(layer.get_weights(), _weights(arrays)):
        np.testing.assert_array_equal(ours, recorded)
    _assert_close(layer(arrays["x"]), arrays["y"])


def test_from_keras_unbuilt_and_not_a_keras_layer():
    case = CASES[0]
    layer = LAYERS[case["layer"]].from_keras(RecordedKerasLayer(case["config"], []), backend="numpy",
                                             allow_tf32=True)
    assert not layer.built and layer.allow_tf32 and layer.filters == case["config"]["filters"]
    with pytest.raises(TypeError, match="`keras_layer` must be a Keras layer"):
        sg.SeparableConv2D.from_keras(case["config"])
    conv2d_config = {k: v for k, v in case["config"].items() if k != "depth_multiplier"}
    with pytest.raises(ValueError, match="`keras_layer` must be a separable convolution layer"):
        sg.SeparableConv2D.from_keras(RecordedKerasLayer(conv2d_config, []))
