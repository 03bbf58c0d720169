"""Activations: Keras 3 definitions, identifier resolution."""
import functools
import math

import numpy as np
import pytest

from sepconv_gpu import activations as A

X = np.linspace(-8, 8, 161)


def _sig(v):
    return 1 / (1 + math.exp(-v))


# Closed forms, one scalar at a time, straight from the Keras 3 docs.
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
    "mish": lambda v: v * math.tanh(math.log1p(math.exp(v))),
    "softplus": lambda v: math.log1p(math.exp(v)),
    "softsign": lambda v: v / (1 + abs(v)),
    "tanh": math.tanh,
    "exponential": math.exp,
}


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_elementwise_definitions(name):
    got = A.get(name)(X.copy())
    want = np.array([SCALAR[name](v) for v in X])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_gelu_tanh_form_and_partial_resolution():
    act = A.get(functools.partial(A.gelu, approximate=True))
    assert act.kernel_id == "gelu_tanh"
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in X]
    np.testing.assert_allclose(act(X), want, rtol=1e-12, atol=1e-12)
    assert A.get(functools.partial(A.leaky_relu, negative_slope=0.1)).kernel_param == 0.1


def test_softmax_family_over_last_axis():
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    s = A.get("softmax")(x)
    np.testing.assert_allclose(s.sum(-1), 1, rtol=1e-12)
    np.testing.assert_allclose(A.get("log_softmax")(x), np.log(s), atol=1e-12)
    assert A.get("softmax").last_axis and not A.get("relu").last_axis


def test_no_overflow_warnings_for_large_inputs():
    big = np.array([-1e4, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        for name in ("sigmoid", "silu", "softplus", "mish", "elu", "selu", "celu"):
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


def test_every_name_has_a_kernel_id():
    assert all(A.get(n).kernel_id for n in A.NAMES)
