"""The CUDA backend on a real device: Keras goldens, properties against the float64
reference, layouts, strided views, torch interop, threads, > 2^31 elements.

Every test is marked `gpu` and skipped where no CUDA device answers (or CuPy is missing).
Run them with `pytest -m gpu` on a GPU machine (benchmarks/gpu_check.sh does, with the
compute-sanitizer pass).
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepconv_gpu import activations, ops
from sepconv_gpu.backends import cuda_available
from sepconv_gpu.backends.cuda import simt

from _cases import (KERAS_TOLERANCE, SHAPE_PRESERVING_ACTIVATIONS, assert_matches, conv_configs,
                    examples, input_shape, random_case)

GPU = cuda_available()
pytestmark = pytest.mark.gpu  # conftest.py skips it where no CUDA device answers
if GPU:
    import cupy

    from sepconv_gpu.backends.cuda import cuda_backend

GOLDEN = pathlib.Path(__file__).parent / "data" / "keras_golden"


def _golden_cases():
    manifest = GOLDEN / "manifest.json"
    if not manifest.exists():
        return []
    return json.loads(manifest.read_text())["cases"]


def _run_golden(case, to_device):
    data = np.load(GOLDEN / case["file"])
    kw = case["kwargs"]
    rank = 1 if "1D" in case["layer"] else 2
    bias = data["bias"] if kw.get("use_bias", True) and "bias" in data else None
    args = [data["x"], data["depthwise_kernel"], data["pointwise_kernel"], bias]
    if to_device:
        args = [None if a is None else cupy.asarray(a) for a in args]
    y = ops.separable_conv(rank, *args, strides=kw.get("strides", 1),
                           padding=kw.get("padding", "valid"),
                           data_format=kw.get("data_format") or "channels_last",
                           dilation_rate=kw.get("dilation_rate", 1),
                           activation=kw.get("activation"), backend="cuda")
    return y, data["y"]


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["id"])
def test_keras_golden(case):
    y, expected = _run_golden(case, to_device=False)
    assert isinstance(y, np.ndarray)  # NumPy in -> NumPy out, computed on the GPU
    assert y.dtype == expected.dtype
    assert_matches(y, expected, tolerance=KERAS_TOLERANCE)


@pytest.mark.parametrize("case", _golden_cases()[::7], ids=lambda c: c["id"])
def test_keras_golden_cupy_in_cupy_out(case):
    y, expected = _run_golden(case, to_device=True)
    assert isinstance(y, cupy.ndarray)
    assert_matches(cupy.asnumpy(y), expected, tolerance=KERAS_TOLERANCE)


# --- helpers ---------------------------------------------------------------------------

def make_case(rng, rank, x_shape, kernel, multiplier, filters, dtype="float32", bias=True):
    return random_case(rng, rank, x_shape, kernel, multiplier, filters, dtype, bias)


def to_layout(x, data_format):
    """A channels_last-shaped host array in the requested layout (contiguous)."""
    if data_format == "channels_first":
        return np.ascontiguousarray(np.moveaxis(x, -1, 1))
    return x


def compare(rank, x, dk, pk, b, **kw):
    """Run on the GPU (x may be a CuPy view) and compare with the float64 reference."""
    host_x = cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else x
    before = host_x.copy()
    y = ops.separable_conv(rank, x, dk, pk, b, backend="cuda", **kw)
    if isinstance(x, cupy.ndarray):
        assert isinstance(y, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(x), before)  # never written
        y = cupy.asnumpy(y)
    ref = ops.reference_separable_conv(rank, host_x, dk, pk, b, **kw)
    assert y.dtype == host_x.dtype
    assert_matches(y, ref)
    return y


# --- properties against the float64 reference ------------------------------------------

@settings(max_examples=examples(80), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(c=conv_configs(kernels=st.sampled_from([1, 2, 3, 3, 5, 7]), slack=(300, 40),
                     channels=(1, 48), multiplier=(1, 4), filters=(1, 150), batch=(1, 4),
                     activation_choices=lambda dtype: (None,) + SHAPE_PRESERVING_ACTIVATIONS),
       data=st.data())
def test_random_configurations_match_reference(c, data):
    rank, data_format = c["rank"], c["data_format"]
    rng = np.random.default_rng(c["seed"])
    x, dk, pk, b = make_case(rng, rank, input_shape(c, "channels_last"), c["kernel"],
                             c["multiplier"], c["filters"], c["dtype"], c["use_bias"])
    kw = dict(strides=c["strides"], padding=c["padding"], data_format=data_format,
              dilation_rate=c["dilation"], activation=c["activation"])
    device_x = data.draw(st.booleans(), "cupy input")
    x = to_layout(x, data_format)
    compare(rank, cupy.asarray(x) if device_x else x, dk, pk, b, **kw)


@pytest.mark.parametrize("name", (None,) + activations.NAMES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [1, 2])
def test_every_activation(name, data_format, rank):
    rng = np.random.default_rng(11)
    shape = (2, 9, 10, 6) if rank == 2 else (2, 38, 6)  # even last axes in both layouts (glu)
    x, dk, pk, b = make_case(rng, rank, shape, 3, 2, 20)
    compare(rank, to_layout(x, data_format), dk, pk, b, padding="same",
            data_format=data_format, activation=name)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (1, 3), (2, 7)])
def test_specialized_and_generic_extents(dtype, kernel):
    rng = np.random.default_rng(12)
    x, dk, pk, b = make_case(rng, 2, (2, 13, 17, 24), kernel, 1, 40, dtype)
    for data_format in ("channels_last", "channels_first"):
        compare(2, to_layout(x, data_format), dk, pk, b, padding="same", data_format=data_format,
                activation="relu")


def test_large_batch_many_blocks():
    rng = np.random.default_rng(13)
    x, dk, pk, b = make_case(rng, 2, (64, 32, 32, 16), 3, 1, 96)
    y = compare(2, cupy.asarray(x), dk, pk, b, padding="same", activation="swish")
    assert y.shape == (64, 32, 32, 96)


@pytest.mark.parametrize("shape,kernel,m,f", [
    ((1, 1, 1, 1), 1, 1, 1),           # everything 1
    ((3, 7, 5, 3), (7, 5), 1, 1),      # kernel = input
    ((2, 11, 13, 37), 3, 17, 65),      # M > chunk, C*M not a multiple of 16, 2 filter blocks
    ((1, 67, 3, 5), (1, 3), 3, 129),   # odd everything
])
def test_odd_sizes(shape, kernel, m, f):
    rng = np.random.default_rng(14)
    x, dk, pk, b = make_case(rng, 2, shape, kernel, m, f)
    for data_format in ("channels_last", "channels_first"):
        compare(2, to_layout(x, data_format), dk, pk, b, padding="valid", data_format=data_format)


def test_large_dilation_without_halo():
    rng = np.random.default_rng(15)
    x, dk, pk, b = make_case(rng, 2, (1, 90, 85, 20), 3, 1, 10)
    p = simt.plan("float32", 1, 20, 1, 10, (90, 85), (90, 85), (3, 3), (1, 1), (40, 40))
    assert not p.use_halo
    compare(2, x, dk, pk, b, padding="same", dilation_rate=40)


def test_conformer_like_1d():
    rng = np.random.default_rng(16)
    x, dk, pk, b = make_case(rng, 1, (4, 1024, 64), 31, 1, 64)
    compare(1, cupy.asarray(x), dk, pk, b, padding="same", activation="swish")


# --- strided views, never writing into x ------------------------------------------------

@pytest.mark.parametrize("view", ["negative", "every_other_channel", "transposed", "cropped"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_non_contiguous_and_negative_stride_inputs(view, data_format):
    rng = np.random.default_rng(17)
    x, dk, pk, b = make_case(rng, 2, (2, 12, 14, 6), 3, 2, 9)
    d = cupy.asarray(to_layout(x, data_format))
    if view == "negative":
        d = d[:, ::-1, :, ::-1]
    elif view == "every_other_channel":
        ax = 1 if data_format == "channels_first" else 3
        shape = list(d.shape)
        shape[ax] *= 2
        wide = cupy.zeros(shape, d.dtype)
        index = [slice(None)] * 4
        index[ax] = slice(None, None, 2)
        wide[tuple(index)] = d
        d = wide[tuple(index)]
    elif view == "transposed":
        d = cupy.ascontiguousarray(d.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    else:  # a spatial crop
        d = d[:, :, 1:-1, 2:] if data_format == "channels_first" else d[:, 1:-1, 2:, :]
    assert not d.flags.c_contiguous
    compare(2, d, dk, pk, b, padding="same", data_format=data_format, activation="tanh")


def test_custom_callable_activation_is_applied_after_the_kernel():
    rng = np.random.default_rng(18)
    x, dk, pk, b = make_case(rng, 2, (2, 8, 8, 4), 3, 1, 5)
    compare(2, cupy.asarray(x), dk, pk, b, activation=lambda t: t * 2 - 1)
    slope = functools.partial(activations.leaky_relu, negative_slope=0.37)
    compare(2, x, dk, pk, b, activation=slope)


def test_kernels_are_memoized_per_device():
    rng = np.random.default_rng(19)
    x, dk, pk, b = make_case(rng, 2, (1, 6, 6, 3), 3, 1, 4)
    ops.separable_conv2d(cupy.asarray(x), dk, pk, b, backend="cuda")
    count = len(cuda_backend._functions)
    ops.separable_conv2d(cupy.asarray(x), dk, pk, b, backend="cuda")
    assert len(cuda_backend._functions) == count


# --- interop and concurrency -----------------------------------------------------------

def test_torch_cuda_tensor_round_trip_without_copies():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    rng = np.random.default_rng(20)
    x, dk, pk, b = make_case(rng, 2, (2, 9, 9, 5), 3, 2, 7)
    tx = torch.from_numpy(x).cuda()
    ops_ = cuda_backend.CupyOps()
    view, give_back = ops_.take(tx)
    assert view.data.ptr == tx.data_ptr()  # zero-copy view
    y = ops.separable_conv2d(tx, dk, pk, b, padding="same", activation="relu")
    assert isinstance(y, torch.Tensor) and y.is_cuda
    back = give_back(cupy.asarray(view))
    assert back.data_ptr() == tx.data_ptr()
    ref = ops.reference_separable_conv(2, x, dk, pk, b, padding="same", activation="relu")
    assert_matches(y.cpu().numpy(), ref)


def test_many_threads_calling_one_op():
    rng = np.random.default_rng(21)
    cases = [make_case(rng, 2, (2, 10, 11, 8), 3, 1, 12) for _ in range(16)]
    cuda_backend._functions.clear()  # the threads race to compile the same kernel

    def run(case):
        x, dk, pk, b = case
        with cupy.cuda.Stream(non_blocking=True):
            y = ops.separable_conv2d(cupy.asarray(x), dk, pk, b, padding="same", activation="gelu")
            return cupy.asnumpy(y)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, cases))
    for (x, dk, pk, b), y in zip(cases, results):
        ref = ops.reference_separable_conv(2, x, dk, pk, b, padding="same", activation="gelu")
        assert_matches(y, ref)


# --- beyond 2^31 elements --------------------------------------------------------------

@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_more_than_2_to_31_elements(data_format):
    channels = filters = 8
    length = 2**28 + 1024                      # x and y each hold > 2^31 elements
    need = 2 * length * channels * 2 + (1 << 30)
    if cupy.cuda.runtime.memGetInfo()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    rng = np.random.default_rng(22)
    _, dk, pk, b = make_case(rng, 1, (1, 8, channels), 3, 1, filters, "float16")
    shape = (1, length, channels) if data_format == "channels_last" else (1, channels, length)
    x = cupy.zeros(shape, cupy.float16)
    axis = 1 if data_format == "channels_last" else 2
    windows = [(0, 4096), (2**28 - 2048, 2**28 + 1024), (length - 4096, length)]
    for lo, hi in windows:  # random data where we check; zeros elsewhere
        patch = rng.uniform(-1, 1, (1, hi - lo, channels)).astype(np.float16)
        index = [slice(None)] * 3
        index[axis] = slice(lo, hi)
        x[tuple(index)] = cupy.asarray(to_layout(patch, data_format))
    try:
        y = ops.separable_conv1d(x, dk, pk, b, padding="valid", data_format=data_format)
        assert y.size > 2**31
        for lo, hi in windows:
            index = [slice(None)] * 3
            index[axis] = slice(lo, hi)
            ref = ops.reference_separable_conv(1, cupy.asnumpy(x[tuple(index)]), dk, pk, b,
                                               padding="valid", data_format=data_format)
            out = [slice(None)] * 3
            out[axis] = slice(lo, hi - 2)
            assert_matches(cupy.asnumpy(y[tuple(out)]), ref)
        # a zero region: bias only
        mid = [slice(None)] * 3
        mid[axis] = slice(2**27, 2**27 + 16)
        expect = np.broadcast_to(b.astype(np.float16).reshape((1, 1, -1) if axis == 1 else (1, -1, 1)),
                                 cupy.asnumpy(y[tuple(mid)]).shape)
        np.testing.assert_allclose(cupy.asnumpy(y[tuple(mid)]), expect, rtol=0, atol=1e-3)
    finally:
        del x
        cupy.get_default_memory_pool().free_all_blocks()
