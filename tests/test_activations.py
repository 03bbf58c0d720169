"""Activations: Keras 3 definitions (closed forms and values recorded from Keras), identifier
resolution, tf.keras 2.x's hard_sigmoid, and how the backends may apply each."""
import functools
import json
import math

import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import assert_matches
from conftest import GOLDEN_DIR, MANIFEST, golden_arrays
from sepconv_gpu import activations as A
from sepconv_gpu import ops

X = np.linspace(-8, 8, 161)
RECORDED = json.loads((GOLDEN_DIR / "activations.json").read_text())
with np.load(GOLDEN_DIR / "activations.npz") as _z:
    RECORDED_ARRAYS = {k: _z[k] for k in _z.files}


def _sig(v):
    return 1 / (1 + math.exp(-v))


def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


# Closed forms, one scalar at a time, from the Keras 3 docs.
SCALAR = {
    "linear": lambda v: v,
    "relu": lambda v: max(v, 0.0),
    "relu6": lambda v: min(max(v, 0.0), 6.0),
    "leaky_relu": lambda v: v if v >= 0 else 0.2 * v,
    "elu": lambda v: v if v > 0 else math.exp(v) - 1,
    "selu": lambda v: 1.0507009873554805 * (v if v > 0 else 1.6732632423543772 * (math.exp(v) - 1)),
    "celu": lambda v: max(v, 0.0) + min(0.0, math.exp(v) - 1),
    "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
    "sigmoid": _sig,
    "hard_sigmoid": lambda v: min(max(v + 3, 0.0), 6.0) / 6,
    "hard_silu": lambda v: v * min(max(v + 3, 0.0), 6.0) / 6,
    "silu": lambda v: v * _sig(v),
    "mish": lambda v: v * math.tanh(_softplus(v)),
    "softplus": _softplus,
    "softsign": lambda v: v / (1 + abs(v)),
    "tanh": math.tanh,
    "exponential": math.exp,
    "hard_tanh": lambda v: min(max(v, -1.0), 1.0),
    "hard_shrink": lambda v: v if abs(v) > 0.5 else 0.0,
    "soft_shrink": lambda v: v - 0.5 if v > 0.5 else (v + 0.5 if v < -0.5 else 0.0),
    "log_sigmoid": lambda v: math.log(_sig(v)),
    "sparse_plus": lambda v: 0.0 if v <= -1 else ((v + 1) ** 2 / 4 if v < 1 else v),
    "sparse_sigmoid": lambda v: 0.0 if v <= -1 else (1.0 if v >= 1 else (v + 1) / 2),
    "squareplus": lambda v: (v + math.sqrt(v * v + 4)) / 2,
    "tanh_shrink": lambda v: v - math.tanh(v),
    "tf_keras_hard_sigmoid": lambda v: min(max(0.2 * v + 0.5, 0.0), 1.0),
}


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_elementwise_definitions(name):
    got = A.get(name)(X.copy())
    want = np.array([SCALAR[name](v) for v in X])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _recorded_activation(case):
    params = case["params"]
    return A.get(functools.partial(getattr(A, case["name"]), **params) if params else case["name"])


# Keras 3.15's sparsemax is not copied (test_sparsemax_departs_from_keras_315_...)
COPIED = [c for c in RECORDED["cases"] if c["name"] != "sparsemax"]


@pytest.mark.parametrize("case", COPIED, ids=[f"{c['name']}{c['params'] or ''}" for c in COPIED])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_values_recorded_from_keras(case, dtype):
    x = RECORDED_ARRAYS["x"].astype(dtype)
    want = RECORDED_ARRAYS[f"{case['id']}_{dtype}"]
    got = _recorded_activation(case)(x)
    assert got.dtype == x.dtype and got.shape == want.shape
    # Keras computed in the recorded dtype (float32 where it did not keep float64)
    tolerance = 1e-6 if want.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_every_keras_activation_is_known():
    keras_names = {c["name"] for c in RECORDED["cases"]}  # every name Keras 3.15 exports
    assert keras_names - {"threshold"} <= set(A.NAMES)
    assert {n for n in A.NAMES if n != "tf_keras_hard_sigmoid"} <= keras_names


def test_threshold_needs_its_arguments():
    with pytest.raises(ValueError, match=r"needs arguments \(threshold, default_value"):
        A.get("threshold")
    act = A.get(functools.partial(A.threshold, threshold=0.25, default_value=-1.5))
    np.testing.assert_array_equal(act(X), np.where(X > 0.25, X, -1.5))
    assert act.kernel_id is None and act.by_rows  # elementwise, applied after the kernel
    assert A.serialize(act) is act._fn  # no name can carry its arguments


def test_glu_halves_the_last_axis_and_refuses_odd_ones():
    x = np.random.default_rng(1).standard_normal((3, 8))
    np.testing.assert_allclose(A.get("glu")(x), x[:, :4] / (1 + np.exp(-x[:, 4:])), rtol=1e-13)
    assert A.get("glu").output_shape((3, 8)) == (3, 4) and not A.get("glu").by_rows
    with pytest.raises(ValueError, match="divisible by 2"):
        A.get("glu")(x[:, :7])
    with pytest.raises(ValueError, match="divisible by 2"):
        A.get("glu").output_shape((3, 7))


@pytest.mark.parametrize("record", RECORDED["glu_layer"], ids=lambda r: r["data_format"])
def test_glu_layer_shapes(record):
    """Keras halves the called output's last axis; its compute_output_shape does not (a
    Keras bug not copied): ours reports the shape the call returns."""
    layer = sg.SeparableConv2D(record["filters"], record["kernel_size"], activation="glu",
                               data_format=record["data_format"], backend="numpy")
    x = np.random.default_rng(2).standard_normal(record["input_shape"]).astype("float32")
    y = layer(x)
    assert list(y.shape) == record["call_shape"]
    assert list(layer.compute_output_shape(record["input_shape"])) == record["call_shape"]
    assert record["compute_output_shape"] != record["call_shape"]  # what Keras 3.15 reports
    assert layer.compute_output_shape([None] + record["input_shape"][1:])[1:] == tuple(record["call_shape"][1:])
    ref = ops.reference_separable_conv(2, x, *layer.get_weights(), data_format=record["data_format"],
                                       activation="glu")
    assert_matches(y, ref)


def test_glu_on_an_odd_output_axis_is_refused_before_computing():
    layer = sg.SeparableConv2D(5, 3, activation="glu", backend="numpy")
    with pytest.raises(ValueError, match="divisible by 2"):
        layer(np.zeros((1, 6, 6, 2), "float32"))


def _paper_sparsemax(row):
    """Martins & Astudillo (2016), Algorithm 1, one row at a time in plain Python."""
    z = sorted(row, reverse=True)
    k = max(j for j in range(1, len(z) + 1) if 1 + j * z[j - 1] > sum(z[:j]))
    tau = (sum(z[:k]) - 1) / k
    return [max(v - tau, 0.0) for v in row]


def test_sparsemax_is_the_papers():
    x = RECORDED_ARRAYS["x"].astype("float64").reshape(-1, RECORDED_ARRAYS["x"].shape[-1])
    got = A.get("sparsemax")(x)
    np.testing.assert_allclose(got, [_paper_sparsemax(r) for r in x.tolist()], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-13)
    row = np.array([[0.1, 0.5, 0.45, -1.0]])  # support 3, tau = 1/60
    np.testing.assert_allclose(A.get("sparsemax")(row), np.maximum(row - 1 / 60, 0), atol=1e-15)


def test_sparsemax_departs_from_keras_315_only_where_keras_is_wrong():
    """Keras 3.15 sums the running sums over the support: right for a support of one
    element, rows not summing to 1 otherwise. The recorded Keras values show both."""
    case = next(c for c in RECORDED["cases"] if c["name"] == "sparsemax")
    x = RECORDED_ARRAYS["x"].astype("float64")
    keras = RECORDED_ARRAYS[f"{case['id']}_float64"]
    ours = A.get("sparsemax")(x)
    keras_rows_ok = np.isclose(keras.sum(axis=-1), 1.0, rtol=1e-12)
    assert keras_rows_ok.any() and not keras_rows_ok.all()  # the recording covers both kinds
    np.testing.assert_allclose(ours[keras_rows_ok], keras[keras_rows_ok], rtol=1e-13, atol=1e-13)
    assert not np.allclose(ours[~keras_rows_ok], keras[~keras_rows_ok])


def test_gelu_tanh_form_and_partial_resolution():
    act = A.get(functools.partial(A.gelu, approximate=True))
    assert act.kernel_id == "gelu_tanh"
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in X]
    np.testing.assert_allclose(act(X), want, rtol=1e-12, atol=1e-12)
    slope = A.get(functools.partial(A.leaky_relu, negative_slope=0.1))
    assert slope.kernel_id == "leaky_relu" and slope.kernel_param == 0.1
    assert A.get(functools.partial(A.squareplus, b=0.7)).kernel_param == 0.7


def test_parameters_the_kernels_take_as_fixed_make_a_fallback():
    assert A.get(functools.partial(A.relu, max_value=4.0)).kernel_id is None
    softmax_rows = A.get(functools.partial(A.softmax, axis=1))
    assert softmax_rows.kernel_id is None and not softmax_rows.by_rows
    assert A.get("softmax").by_rows and A.get("sparsemax").by_rows


def test_non_default_parameters_serialize_as_the_object():
    """A name would lose the parameter: Keras 3 would rebuild leaky_relu with slope 0.2."""
    act = A.get(functools.partial(A.leaky_relu, negative_slope=0.1))
    assert A.get(A.serialize(act)).kernel_param == 0.1
    assert A.serialize(functools.partial(A.leaky_relu, negative_slope=0.2)) == "leaky_relu"


def test_softmax_family_over_last_axis():
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    s = A.get("softmax")(x)
    np.testing.assert_allclose(s.sum(-1), 1, rtol=1e-12)
    np.testing.assert_allclose(A.get("log_softmax")(x), np.log(s), atol=1e-12)


def test_no_overflow_warnings_for_large_inputs():
    big = np.array([-1e4, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        for name in ("sigmoid", "silu", "softplus", "mish", "elu", "selu", "celu", "log_sigmoid"):
            assert np.isfinite(A.get(name)(big)).all(), name


def test_identifiers():
    assert A.get(None).name == "linear" and A.get("swish").name == "silu"
    assert A.get("hard_swish").name == "hard_silu"
    assert A.get({"class_name": "function", "config": "relu"}).name == "relu"
    assert A.get(A.relu).name == "relu"
    custom = A.get(lambda x: x * 2)
    assert custom.kernel_id is None and custom(np.array([2.0]))[0] == 4.0
    assert A.serialize("swish") == "silu" and A.serialize(None) == "linear"
    with pytest.raises(ValueError, match="Could not interpret activation function identifier: nope"):
        A.get("nope")
    with pytest.raises(ValueError):
        A.get(42)


def test_every_name_resolves_to_a_known_function():
    assert all(A.get(n).kernel_id for n in A.NAMES)


# --- tf.keras 2.x hard_sigmoid --------------------------------------------------------------

# tf.keras 2.x docstring example of hard_sigmoid: [-3, -1, 0, 1, 3] -> [0, .3, .5, .7, 1].
TF_KERAS_DOC = ([-3.0, -1.0, 0.0, 1.0, 3.0], [0.0, 0.3, 0.5, 0.7, 1.0])


def test_tf_keras_names_mean_tf_keras_functions():
    x, want = (np.array(v, "float32") for v in TF_KERAS_DOC)
    act = A.get("hard_sigmoid", tf_keras=True)
    assert act.name == "tf_keras_hard_sigmoid"
    np.testing.assert_allclose(act(x), want, atol=1e-7)
    assert A.serialize(act) == "tf_keras_hard_sigmoid"  # Keras 3 refuses it: never silent
    assert A.get("hard_sigmoid").name == "hard_sigmoid"
    assert A.get("relu", tf_keras=True).name == "relu"


def _function(module, name):
    def fn(x):
        raise AssertionError("never called: resolved by name")

    fn.__module__, fn.__name__ = module, name
    return fn


def test_tf_keras_function_objects_mean_tf_keras_functions():
    assert A.get(_function("tf_keras.src.activations", "hard_sigmoid")).name == "tf_keras_hard_sigmoid"
    assert A.get(_function("tensorflow.python.keras.activations", "hard_sigmoid")).name == \
        "tf_keras_hard_sigmoid"
    assert A.get(_function("keras.src.activations.activations", "hard_sigmoid")).name == "hard_sigmoid"


def _tf_keras_config():
    case = next(c for c in MANIFEST["cases"]
                if c["oracle"].startswith("tf_keras") and c["layer"] == "SeparableConv2D")
    assert "kernel_initializer" in case["config"]  # what marks a tf.keras 2.x config
    return case


def test_tf_keras_config_with_hard_sigmoid_computes_tf_keras_function():
    case = _tf_keras_config()
    config = dict(case["config"], activation="hard_sigmoid")
    layer = sg.SeparableConv2D.from_config(config, backend="numpy")
    arrays = golden_arrays(case)
    layer.build(arrays["x"].shape)
    weights = [arrays[k] for k in ("depthwise_kernel", "pointwise_kernel", "bias") if k in arrays]
    layer.set_weights(weights)
    y = layer(arrays["x"])
    kw = {k: config[k] for k in ("strides", "padding", "data_format", "dilation_rate")}
    linear = ops.reference_separable_conv(2, arrays["x"], *weights, **kw)
    assert_matches(y, np.clip(0.2 * linear + 0.5, 0, 1))
    assert np.abs(np.clip(linear / 6 + 0.5, 0, 1) - y).max() > 0.01  # not Keras 3's
    rebuilt = sg.SeparableConv2D.from_config(layer.get_config(), backend="numpy")
    assert rebuilt.activation.name == "tf_keras_hard_sigmoid"


def test_keras3_config_with_hard_sigmoid_keeps_keras3_function():
    case = next(c for c in MANIFEST["cases"] if c["oracle"].startswith("keras-3"))
    assert "kernel_initializer" not in case["config"]
    layer = sg.SeparableConv2D.from_config(dict(case["config"], activation="hard_sigmoid"),
                                           backend="numpy")
    assert layer.activation.name == "hard_sigmoid"


def test_softmax_of_a_row_with_nan_and_infinities_is_keras_s():
    """Keras 3 on TensorFlow, float32, gives [nan, nan, 0, 0, 0, 0] for
    [nan, inf, -inf, 0, 1e30, -1e30] (recorded: keras_golden/nonfinite_softmax.json): NaN
    and +inf entries give NaN, the others 0. We apply that rule in float64 too, where TF's
    kernel (also recorded) gives NaN everywhere, as plain exp(x - max) / sum does: a
    deliberate difference (docs/design.md). log_softmax is NaN everywhere, as recorded.
    Rows without NaN / +inf are untouched by the rule."""
    recorded = json.loads((GOLDEN_DIR / "nonfinite_softmax.json").read_text())
    assert recorded["backend"] == "tensorflow"
    row, outputs = recorded["x"], recorded["outputs"]
    expected = np.array(outputs["softmax/float32"])
    assert np.isnan(outputs["softmax/float64"]).all()  # the difference stated above
    finite = np.array([[1.0, 2.0, -3.0, 0.5, 4.0, -np.inf]])
    for dtype in ("float32", "float64"):
        x = np.array([row, finite[0]], dtype=dtype)
        with np.errstate(all="ignore"):
            y = A.softmax(x)
            by_layer_path = A.get("softmax")(x)  # what the NumPy backend applies, tile by tile
            log_y = A.log_softmax(x)
        for got in (y, by_layer_path):
            np.testing.assert_array_equal(got[0], expected.astype(dtype))
            assert got.dtype == dtype
        np.testing.assert_array_equal(log_y[0], np.array(outputs[f"log_softmax/{dtype}"], dtype))
        e = np.exp(finite - finite.max())
        np.testing.assert_allclose(y[1], (e / e.sum())[0], rtol=1e-6)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-13)])
def test_gelu_keeps_its_negative_tail_as_keras_records_it(dtype, rtol):
    """gelu below x = -4, relative to Keras's recorded values (no absolute slack, which
    would hide them: gelu(-6) = -5.92e-9). 0.5x(1 + erf(x/√2)) cancels: -0.0 from -6
    down, 4% off at -5. float32: both round erfc's argument -x/√2 to float32, which moves
    the result by up to z²·2^-24 relatively (z ≤ 5.2 here), and Keras's erfc is float32's."""
    case = next(c for c in RECORDED["cases"] if c["name"] == "gelu" and not c["params"])
    x = RECORDED_ARRAYS["x"].astype(dtype)
    tail = x < -4
    want = RECORDED_ARRAYS[f"{case['id']}_{dtype}"][tail]
    assert tail.sum() >= 10 and (want < 0).all()
    np.testing.assert_allclose(A.get("gelu")(x)[tail], want, rtol=rtol, atol=0)
