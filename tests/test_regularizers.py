import json
from pathlib import Path

import numpy as np
import pytest

from sepconv_gpu import regularizers as R

DATA = Path(__file__).parent / "data" / "keras_golden"
GOLDEN = json.loads((DATA / "manifest.json").read_text())
ROLES = ["activity", "depthwise", "pointwise", "bias"]
LOSS_CASES = [c for c in GOLDEN["cases"] if "losses" in c]


@pytest.fixture
def w():
    return np.random.default_rng(0).standard_normal((3, 3, 8, 4)).astype(np.float32)


def test_values(w):
    w64 = w.astype(np.float64)
    assert R.L1(0.3)(w) == 0.3 * np.abs(w64).sum()
    assert R.L2(0.2)(w) == 0.2 * (w64 ** 2).sum()
    assert R.L1L2(0.3, 0.2)(w) == pytest.approx(0.3 * np.abs(w64).sum() + 0.2 * (w64 ** 2).sum(),
                                                rel=1e-15)
    assert R.L1L2()(w) == 0.0
    assert type(R.L2()(w)) is float
    # the Keras docstring example: L2(2.0) on a 5x5 of ones
    assert R.L2(2.0)(np.ones((5, 5), np.float32)) == 50.0


def test_float64_accumulation_and_inputs_left_alone():
    big = np.full(1000, 300.0, np.float16)  # 300**2 overflows float16
    before = big.copy()
    assert R.L2(0.01)(big) == pytest.approx(0.01 * 1000 * 300.0 ** 2)
    assert np.array_equal(big, before)
    assert R.L1(1.0)([[1, -2], [3, -4]]) == 10.0  # lists and ints are taken too


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["id"])
def test_keras_losses(case):
    """The recorded layer losses: activity (over the batch), depthwise, pointwise, bias."""
    arrays = np.load(DATA / case["file"])
    y = arrays["y"]
    ours = [R.get(case["kwargs"]["activity_regularizer"])(y) / y.shape[0]]
    ours += [R.get(case["kwargs"][f"{role}_regularizer"])(arrays[name])
             for role, name in [("depthwise", "depthwise_kernel"),
                                ("pointwise", "pointwise_kernel"), ("bias", "bias")]]
    # Keras sums in float32
    np.testing.assert_allclose(ours, case["losses"], rtol=1e-6)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["id"])
def test_keras_configs(case):
    for role in ROLES:
        given, recorded = case["kwargs"][f"{role}_regularizer"], case["config"][f"{role}_regularizer"]
        assert R.serialize(R.get(given)) == recorded  # tf.keras 2.x dict in, Keras 3 dict out
        assert R.serialize(R.get(recorded)) == recorded


def test_names_and_defaults():
    assert R.get("l1").get_config() == {"l1": 0.01}
    assert R.get("L2").get_config() == {"l2": 0.01}
    assert R.get("l1_l2").get_config() == {"l1": 0.01, "l2": 0.01}
    assert R.get("L1L2").get_config() == {"l1": 0.0, "l2": 0.0}
    assert R.get("l1l2").get_config() == {"l1": 0.0, "l2": 0.0}
    assert R.L1(None).l1 == 0.01 and R.L1L2(None, None).get_config() == {"l1": 0.0, "l2": 0.0}
    assert R.L1(1).get_config() == {"l1": 1.0} and R.L2(np.float32(0.5)).l2 == 0.5


@pytest.mark.gpu
def test_cupy_arrays(w):
    cupy = pytest.importorskip("cupy")  # conftest skips `gpu` tests without a device
    for reg in (R.L1(0.3), R.L2(0.2), R.L1L2(0.1, 0.4)):
        value = reg(cupy.asarray(w))
        assert type(value) is float and value == pytest.approx(reg(w), rel=1e-12)
