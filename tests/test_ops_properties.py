"""Property tests: both CPU kernels against the float64 reference, any geometry and any
activation, callables included: the NumPy code with tiles of any size (from one output row
to the default), the Numba kernel in both its plans (fused; chunked, with chunks of any
size, down to a few positions across threads)."""
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepconv_gpu import activations, backends, ops
from sepconv_gpu.backends.cpu import numpy_backend

from _cases import assert_matches, conv_configs, examples, input_shape


def centered(t):
    """Not elementwise: each value depends on the whole output (Keras applies it to all)."""
    return t - t.mean()


def scaled_by_max(t):
    return t / (1 + abs(t).max())


CALLABLES = [centered, scaled_by_max]
ACTIVATIONS = list(activations.NAMES) + CALLABLES
# Bytes per tile: one output row of one image, a few rows, several whole images, the default.
TILE_SIZES = [1, 256, 4096, numpy_backend.TILE_BYTES]
# The CPU kernels: the NumPy code (with a tile size), the Numba kernel fused (as small calls
# run) or chunked (as large calls run) with CHUNK_BYTES 1 (16-position chunks, split
# mid-row, over both threads) or its default.
KERNELS = ([("numpy", t) for t in TILE_SIZES]
           + [("numba", "fused"), ("numba", 1), ("numba", "default")] * 2)


def conv_case(activation):
    """Configurations with `activation`, in every dtype that holds it (exponential can
    overflow float16 on its own), any geometry with a non-empty output (inputs smaller than
    the dilated kernel included, under `same` and `causal`), and a CPU kernel with its tile
    or chunk size."""
    dtypes = ("float32", "float64") if activation == "exponential" else ("float32", "float16", "float64")
    return st.tuples(conv_configs(slack=(8, 8), dtypes=dtypes,
                                  activation_choices=lambda dtype: [activation]),
                     st.sampled_from(KERNELS)).map(lambda c: {**c[0], "kernel_plan": c[1]})


def cpu_kernel(plan):
    """A context running the NumPy backend on `plan`, a (kernel, tile or chunk size)."""
    import contextlib

    name, size = plan
    stack = contextlib.ExitStack()
    previous = backends._cpu_kernel_choice
    backends.set_cpu_kernel(name)
    stack.callback(backends.set_cpu_kernel, previous)
    if name == "numpy":
        stack.enter_context(mock.patch.object(numpy_backend, "TILE_BYTES", size))
    elif size != "default":
        from sepconv_gpu.backends.cpu import numba_kernel

        fused = size == "fused"
        stack.enter_context(mock.patch.object(numba_kernel, "FUSED_MAX_PRODUCTS", 2**62 if fused else 0))
        if not fused:
            stack.enter_context(mock.patch.object(numba_kernel, "CHUNK_BYTES", size))
    return stack


def make_inputs(c):
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal(input_shape(c)).astype(c["dtype"])
    dk = (rng.standard_normal(c["kernel"] + (c["channels"], c["multiplier"])) / 3).astype(c["dtype"])
    pk = (rng.standard_normal((1,) * c["rank"] + (c["channels"] * c["multiplier"], c["filters"])) / 3
          ).astype(c["dtype"])
    b = rng.standard_normal(c["filters"]).astype(c["dtype"]) if c["use_bias"] else None
    return x, dk, pk, b


def run_both(c, x, dk, pk, b):
    """(ours, reference); (None, None) when both refuse the case (glu on an odd last axis)."""
    args = (c["strides"], c["padding"], c["data_format"], c["dilation"], c["activation"])
    try:
        ref = ops.reference_separable_conv(c["rank"], x, dk, pk, b, *args)
    except ValueError:
        ref = None
    with cpu_kernel(c.get("kernel_plan", ("numpy", numpy_backend.TILE_BYTES))):
        if ref is None:
            with pytest.raises(ValueError):
                ops.separable_conv(c["rank"], x, dk, pk, b, *args, backend="numpy")
            return None, None
        y = ops.separable_conv(c["rank"], x, dk, pk, b, *args, backend="numpy")
    return y, ref


@pytest.mark.parametrize("activation", ACTIVATIONS,
                         ids=[a if isinstance(a, str) else a.__name__ for a in ACTIVATIONS])
@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_matches_reference(activation, data):
    c = data.draw(conv_case(activation), label="case")
    x, dk, pk, b = make_inputs(c)
    y, ref = run_both(c, x, dk, pk, b)
    if ref is None:
        return
    assert y.dtype == x.dtype
    assert_matches(y, ref)


@pytest.mark.parametrize("activation", ["softmax", centered])
@pytest.mark.parametrize("tile_bytes", [64, 4096])
def test_small_tiles_split_rows_and_images(tile_bytes, activation):
    """Tiny tiles force many row tiles per image (and image grouping at 4096)."""
    for data_format in ("channels_last", "channels_first"):
        c = dict(rank=2, padding="same", kernel=(3, 3), strides=(2, 1), dilation=(1, 1), spatial=(9, 7),
                 batch=5, channels=3, multiplier=2, filters=4, data_format=data_format, use_bias=True,
                 dtype="float32", activation=activation, kernel_plan=("numpy", tile_bytes), seed=1)
        y, ref = run_both(c, *make_inputs(c))
        assert_matches(y, ref)


def test_reference_is_literal_sum():
    """The oracle itself against the defining formula, evaluated loop by loop."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 5, 3))
    dk = rng.standard_normal((3, 2, 3, 2))
    pk = rng.standard_normal((1, 1, 6, 4))
    b = rng.standard_normal(4)
    s, d = (2, 1), (1, 1)
    ref = ops.reference_separable_conv(2, x, dk, pk, b, s, "same", "channels_last", d)
    # same: out = ceil(n/s); pad_before = total // 2
    oh, ow = 3, 5
    pt = max((oh - 1) * 2 + 3 - 6, 0) // 2
    pl = max((ow - 1) * 1 + 2 - 5, 0) // 2
    y = np.zeros((2, oh, ow, 4))
    for n in range(2):
        for i in range(oh):
            for j in range(ow):
                for c in range(3):
                    for m in range(2):
                        acc = 0.0
                        for ti in range(3):
                            for tj in range(2):
                                hi, wj = i * 2 + ti - pt, j + tj - pl
                                if 0 <= hi < 6 and 0 <= wj < 5:
                                    acc += x[n, hi, wj, c] * dk[ti, tj, c, m]
                        y[n, i, j] += acc * pk[0, 0, c * 2 + m]
                y[n, i, j] += b
    np.testing.assert_allclose(ref, y, rtol=1e-12, atol=1e-12)


def test_fast_path_extra_memory_is_per_tile_not_im2col():
    """Peak extra memory stays O(tile): far below the input·k² an im2col would need."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 96, 96, 16)).astype(np.float32)  # 4.7 MB; im2col would be 42 MB
    dk = rng.standard_normal((3, 3, 16, 1)).astype(np.float32)
    pk = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        with cpu_kernel(("numpy", numpy_backend.TILE_BYTES)):
            y = ops.separable_conv2d(x, dk, pk, padding="same", activation="relu", backend="numpy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    extra = peak - y.nbytes
    assert extra < 5 * numpy_backend.TILE_BYTES, extra
    assert extra < x.nbytes * 9 / 4
