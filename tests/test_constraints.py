import json
from pathlib import Path

import numpy as np
import pytest

from sepconv_gpu import constraints as C

DATA = Path(__file__).parent / "data" / "keras_golden"
GOLDEN = json.loads((DATA / "manifest.json").read_text())


def _norms(w, axis):
    return np.sqrt((np.asarray(w, np.float64) ** 2).sum(axis=axis, keepdims=True))


@pytest.fixture
def w():
    return np.random.default_rng(0).standard_normal((3, 3, 8, 4)).astype(np.float32)


@pytest.mark.parametrize("rec", GOLDEN["constraints"], ids=lambda r: r["id"])
def test_keras_goldens(rec):
    arrays = np.load(DATA / rec["file"])
    w = arrays["w"]
    before = w.copy()
    constraint = C.get(rec["config"])
    out = constraint(w)
    assert out.dtype == np.float32 and out.shape == tuple(rec["shape"])
    np.testing.assert_allclose(out, arrays["out"], rtol=1e-6, atol=1e-7)
    assert np.array_equal(w, before) and out is not w
    assert C.serialize(constraint) == rec["config"]
    # the tf.keras 2.x form and the name build the same constraint
    assert C.get({"class_name": rec["config"]["class_name"], "config": rec["config"]["config"]}) \
        == constraint
    assert type(C.get(rec["constraint"])) is type(constraint)


@pytest.mark.parametrize("axis", [0, 3, [0, 1, 2], (0, 1)])
def test_norm_constraints(w, axis):
    ax = axis if isinstance(axis, int) else tuple(axis)
    np.testing.assert_allclose(_norms(C.UnitNorm(axis)(w), ax), 1.0, rtol=1e-5)
    max_norm = C.MaxNorm(1.5, axis)(w)
    before, after = _norms(w, ax), _norms(max_norm, ax)
    np.testing.assert_allclose(after, np.minimum(before, 1.5), rtol=1e-5)
    mm = C.MinMaxNorm(0.5, 2.0, rate=1.0, axis=axis)(w)
    np.testing.assert_allclose(_norms(mm, ax), np.clip(before, 0.5, 2.0), rtol=1e-5)
    half = C.MinMaxNorm(0.5, 2.0, rate=0.25, axis=axis)(w)
    np.testing.assert_allclose(_norms(half, ax), 0.25 * np.clip(before, 0.5, 2.0) + 0.75 * before,
                               rtol=1e-5)


def test_non_neg_and_dtypes(w):
    out = C.NonNeg()(w)
    assert np.array_equal(out, np.maximum(w, 0)) and out.dtype == np.float32
    for dtype in (np.float16, np.float64):
        assert C.MaxNorm()(w.astype(dtype)).dtype == dtype
        assert C.UnitNorm()(w.astype(dtype)).dtype == dtype
    assert C.UnitNorm()(np.array([[3], [4]])).dtype.kind == "f"  # integers are normalized as floats
    np.testing.assert_allclose(C.UnitNorm()(np.array([[3], [4]])), [[0.6], [0.8]], rtol=1e-6)
    assert np.array_equal(C.NonNeg()([-1, 2]), [0, 2])


def test_identifiers(w):
    for name, cls in [("max_norm", C.MaxNorm), ("MaxNorm", C.MaxNorm), ("min_max_norm", C.MinMaxNorm),
                      ("MinMaxNorm", C.MinMaxNorm), ("non_neg", C.NonNeg), ("NonNeg", C.NonNeg),
                      ("unit_norm", C.UnitNorm), ("UnitNorm", C.UnitNorm)]:
        assert type(C.get(name)) is cls
    assert C.get("max_norm").get_config() == {"max_value": 2, "axis": 0}
    assert C.get("min_max_norm").get_config() == {"min_value": 0.0, "max_value": 1.0, "rate": 1.0,
                                                  "axis": 0}
    keras2 = C.get({"class_name": "MaxNorm", "config": {"max_value": 3, "axis": [0, 1, 2]}})
    assert keras2.get_config() == {"max_value": 3, "axis": [0, 1, 2]}
    np.testing.assert_allclose(keras2(w), C.MaxNorm(3, (0, 1, 2))(w))


@pytest.mark.gpu
@pytest.mark.parametrize("c", [C.MaxNorm(1.5), C.MinMaxNorm(0.5, 1.0, 0.7), C.NonNeg(),
                               C.UnitNorm([0, 1, 2])], ids=lambda c: type(c).__name__)
def test_cupy_arrays(w, c):
    cupy = pytest.importorskip("cupy")  # conftest skips `gpu` tests without a device
    w_gpu = cupy.asarray(w)
    out = c(w_gpu)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out.get(), c(w), rtol=1e-6, atol=1e-7)
    assert cupy.array_equal(w_gpu, cupy.asarray(w))
