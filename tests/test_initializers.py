import json
import math
from pathlib import Path

import numpy as np
import pytest

from sepconv_gpu import initializers as I

GOLDEN = json.loads((Path(__file__).parent / "data" / "keras_golden" / "manifest.json").read_text())
KERAS3_CONFIG = GOLDEN["cases"][0]["config"]

# a conv kernel big enough for tight statistics: 294,912 draws, fan_in 2304, fan_out 1152
BIG = (3, 3, 256, 128)
FAN_IN, FAN_OUT = I.compute_fans(BIG)
N = math.prod(BIG)


# -- fans ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rec", GOLDEN["fans"], ids=lambda r: str(r["shape"]))
def test_fans_and_glorot_limit_match_keras(rec):
    fan_in, fan_out = I.compute_fans(rec["shape"])
    assert (fan_in, fan_out) == (rec["fan_in"], rec["fan_out"])
    assert math.sqrt(6 / (fan_in + fan_out)) == pytest.approx(rec["glorot_uniform_limit"], rel=1e-12)
    values = I.GlorotUniform(seed=1)(rec["shape"])
    assert np.abs(values).max() <= np.float32(rec["glorot_uniform_limit"])


def test_fans_of_small_ranks_and_explicit_axes():
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((7,)) == (7, 7)
    assert I.compute_fans((3, 5)) == (3, 5)
    assert I.compute_fans((4, 8, 16), input_axes=[0], output_axes=[1, 2]) == (4, 128)
    assert I.compute_fans((4, 8, 16), input_axes=0) == (4, 16)


# -- statistics ---------------------------------------------------------------------------

def _check_stats(values, mean, std, low=None, high=None):
    """Sample mean within 5 standard errors, sample std within 1%, bounds respected."""
    assert values.shape == BIG and values.dtype == np.float32
    v = values.astype(np.float64)
    assert abs(v.mean() - mean) < 5 * std / math.sqrt(N)
    assert v.std() == pytest.approx(std, rel=0.01)
    if low is not None:
        assert v.min() >= low and v.max() <= high
        # the bounds are reached, not merely respected
        assert v.min() < low + 0.01 * (high - low) and v.max() > high - 0.01 * (high - low)


def _vs(scale, n, distribution):
    """(std, bound) Keras's VarianceScaling gives."""
    var = scale / n
    if distribution == "uniform":
        return math.sqrt(var), math.sqrt(3 * var)
    if distribution == "untruncated_normal":
        return math.sqrt(var), None
    return math.sqrt(var), 2 * math.sqrt(var) / 0.87962566103423978


PRESETS = {
    "glorot_uniform": (1.0, (FAN_IN + FAN_OUT) / 2, "uniform"),
    "glorot_normal": (1.0, (FAN_IN + FAN_OUT) / 2, "truncated_normal"),
    "he_uniform": (2.0, FAN_IN, "uniform"),
    "he_normal": (2.0, FAN_IN, "truncated_normal"),
    "lecun_uniform": (1.0, FAN_IN, "uniform"),
    "lecun_normal": (1.0, FAN_IN, "truncated_normal"),
}


@pytest.mark.parametrize("name", PRESETS)
def test_variance_scaling_presets(name):
    std, bound = _vs(*PRESETS[name])
    _check_stats(I.get(name)(BIG), 0.0, std, -bound, bound)


@pytest.mark.parametrize("mode, n", [("fan_in", FAN_IN), ("fan_out", FAN_OUT),
                                     ("fan_avg", (FAN_IN + FAN_OUT) / 2)])
@pytest.mark.parametrize("distribution", ["uniform", "truncated_normal", "untruncated_normal"])
def test_variance_scaling(mode, n, distribution):
    std, bound = _vs(3.0, n, distribution)
    values = I.VarianceScaling(3.0, mode, distribution, seed=5)(BIG)
    _check_stats(values, 0.0, std, *((-bound, bound) if bound else ()))


def test_random_normal_uniform_truncated():
    _check_stats(I.RandomNormal(mean=0.5, stddev=2.0)(BIG), 0.5, 2.0)
    _check_stats(I.RandomUniform(minval=-1.0, maxval=3.0)(BIG), 1.0, 4 / math.sqrt(12), -1.0, 3.0)
    # Keras 3 truncates at 2 stddev: what is left has 0.8796 of the stddev
    _check_stats(I.TruncatedNormal(mean=1.0, stddev=0.5)(BIG), 1.0, 0.5 * 0.87962566103423978,
                 0.0, 2.0)
    assert I.RandomNormal()(BIG).std() == pytest.approx(0.05, rel=0.01)
    assert np.abs(I.RandomUniform()(BIG)).max() <= 0.05


def test_constant_zeros_ones_identity():
    assert np.array_equal(I.get("zeros")((2, 3)), np.zeros((2, 3), np.float32))
    assert I.get("ones")(4, dtype="float64").dtype == np.float64
    assert np.array_equal(I.Constant(2.5)((2, 2)), np.full((2, 2), 2.5, np.float32))
    row = I.Constant(np.array([1.0, 2.0, 3.0]))((2, 3))
    assert np.array_equal(row, [[1, 2, 3], [1, 2, 3]]) and row.flags.writeable
    assert np.array_equal(I.Identity(gain=2.0)((2, 3)), 2 * np.eye(2, 3))
    with pytest.raises(ValueError, match="2D matrices"):
        I.Identity()((2, 2, 2))


@pytest.mark.parametrize("shape", [(6, 6), (3, 3, 8, 16), (40, 10), (1, 1, 32, 8), (5, 64)])
def test_orthogonal(shape):
    q = I.Orthogonal(gain=1.5, seed=3)(shape, dtype="float64").reshape(-1, shape[-1])
    small = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
    np.testing.assert_allclose(small, 1.5 ** 2 * np.eye(len(small)), atol=1e-12)
    with pytest.raises(ValueError, match="at least two-dimensional"):
        I.Orthogonal()((5,))


# -- seeds and dtypes ---------------------------------------------------------------------

ALL_RANDOM = ["random_normal", "random_uniform", "truncated_normal", "variance_scaling",
              "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
              "lecun_normal", "orthogonal"]


@pytest.mark.parametrize("name", ALL_RANDOM)
def test_seeds(name):
    seeded = I.get({"class_name": name, "config": {"seed": 42}})
    first = seeded((4, 5, 6))
    assert np.array_equal(first, seeded((4, 5, 6)))  # every call repeats
    assert np.array_equal(first, I.deserialize(I.serialize(seeded))((4, 5, 6)))
    assert not np.array_equal(first, I.get({"class_name": name, "config": {"seed": 43}})((4, 5, 6)))
    unseeded = I.get(name)
    assert not np.array_equal(unseeded((4, 5, 6)), unseeded((4, 5, 6)))
    assert I.get({"class_name": name, "config": {"seed": -7}})((2, 2)).shape == (2, 2)


@pytest.mark.parametrize("seed", [1.5, "3", True, [1]])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        I.GlorotUniform(seed=seed)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", np.float64])
def test_dtype(dtype):
    for name in ("glorot_uniform", "he_normal", "orthogonal", "zeros", "ones", "constant"):
        assert I.get(name)((3, 4), dtype=dtype).dtype == np.dtype(dtype)
    assert I.get("glorot_uniform")((3, 4)).dtype == np.float32
    assert I.get("glorot_uniform")((3, 4), dtype=None).dtype == np.float32


# -- identifiers and configs --------------------------------------------------------------

def test_get_names_and_aliases():
    for name, cls in [("glorot_uniform", I.GlorotUniform), ("GlorotUniform", I.GlorotUniform),
                      ("he_normal", I.HeNormal), ("Orthogonal", I.Orthogonal),
                      ("orthogonal", I.Orthogonal), ("OrthogonalInitializer", I.Orthogonal),
                      ("uniform", I.RandomUniform), ("normal", I.RandomNormal),
                      ("one", I.Ones), ("zero", I.Zeros), ("variance_scaling", I.VarianceScaling),
                      ("truncated_normal", I.TruncatedNormal), ("constant", I.Constant)]:
        assert type(I.get(name)) is cls
    assert I.get(None) is None
    inst = I.HeUniform(seed=1)
    assert I.get(inst) is inst
    assert type(I.get(I.LecunNormal)) is I.LecunNormal

    def custom(shape, dtype=None):
        return np.full(shape, 7.0, dtype)
    assert I.get(custom) is custom


@pytest.mark.parametrize("identifier", ["no_such_init", "GLOROT_UNIFORM", "glorotuniform"])
def test_unknown_identifier(identifier):
    with pytest.raises(ValueError) as err:
        I.get(identifier)
    assert str(err.value) == f"Could not interpret initializer identifier: {identifier}"


def test_unknown_identifier_message_is_keras():
    rec = next(e for e in GOLDEN["errors"] if "depthwise_initializer" in e["kwargs"])
    with pytest.raises(ValueError) as err:
        I.get(rec["kwargs"]["depthwise_initializer"])
    assert str(err.value) == rec["message"]
    for bad in [{"class_name": "Nope", "config": {}}, {"config": {}}, 3]:
        with pytest.raises(ValueError, match="Could not interpret initializer identifier"):
            I.get(bad)


def test_keras3_configs_round_trip_exactly():
    for key in ("depthwise_initializer", "pointwise_initializer", "bias_initializer"):
        config = KERAS3_CONFIG[key]
        assert I.serialize(I.get(config)) == config
    assert I.serialize(I.GlorotUniform()) == {
        "module": "keras.initializers", "class_name": "GlorotUniform",
        "config": {"seed": None, "input_axes": None, "output_axes": None}, "registered_name": None}
    assert I.serialize(None) is None


def test_tf_keras_2_configs():
    tf2 = next(c for c in GOLDEN["cases"] if c["oracle"].startswith("tf_keras"))["config"]
    glorot = I.get(tf2["depthwise_initializer"])  # {"seed": null}, no fan axes
    assert type(glorot) is I.GlorotUniform and glorot.seed is None
    assert type(I.get({"class_name": "Zeros", "config": {}})) is I.Zeros
    # TF 1.x-era configs also carry a dtype
    vs = I.get({"class_name": "VarianceScaling",
                "config": {"scale": 2.0, "mode": "fan_out", "distribution": "normal",
                           "seed": 3, "dtype": "float32"}})
    assert (vs.scale, vs.mode, vs.distribution, vs.seed) == (2.0, "fan_out", "truncated_normal", 3)
    with pytest.raises(TypeError, match="no_such_key"):
        I.get({"class_name": "GlorotUniform", "config": {"no_such_key": 1}})


@pytest.mark.parametrize("init", [
    I.Zeros(), I.Ones(), I.Constant(0.25), I.Constant([1.0, 2.0]), I.Identity(3.0),
    I.RandomNormal(0.1, 0.2, seed=1), I.RandomUniform(-2, 2, seed=2),
    I.TruncatedNormal(stddev=0.3, seed=3),
    I.VarianceScaling(0.5, "fan_avg", "uniform", seed=4, input_axes=[0], output_axes=[1]),
    I.GlorotUniform(5), I.GlorotNormal(), I.HeUniform(6), I.HeNormal(), I.LecunUniform(7),
    I.LecunNormal(), I.Orthogonal(gain=2.0, seed=8),
], ids=lambda i: type(i).__name__)
def test_serialize_round_trip(init):
    config = I.serialize(init)
    assert config["module"] == "keras.initializers" and config["registered_name"] is None
    assert config["class_name"] == type(init).__name__
    again = I.deserialize(json.loads(json.dumps(config)))
    assert type(again) is type(init) and again.get_config() == init.get_config()
    assert type(init).from_config(init.get_config()) == init
    # the tf.keras 2.x form of the same
    assert I.get({"class_name": config["class_name"], "config": config["config"]}) == init


def test_bad_arguments_name_argument_and_value():
    cases = [
        (lambda: I.VarianceScaling(scale=0), "scale=0"),
        (lambda: I.VarianceScaling(scale="big"), "scale='big'"),
        (lambda: I.VarianceScaling(mode="fan_sum"), "fan_sum"),
        (lambda: I.VarianceScaling(distribution="cauchy"), "cauchy"),
        (lambda: I.RandomNormal(stddev=-1), "stddev=-1"),
        (lambda: I.RandomUniform(minval=1, maxval=0), "minval=1, maxval=0"),
        (lambda: I.Orthogonal(gain=float("nan")), "gain=nan"),
        (lambda: I.Constant("abc"), "value='abc'"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            make()
    assert I.VarianceScaling(distribution="Uniform").distribution == "uniform"
