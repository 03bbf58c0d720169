"""The tensor-core kernel on a real device: against the float64 reference, against the SIMT
kernel on the same inputs, the shared-memory opt-in, the weight cache, predicted vs
measured times.

Marked `gpu`, skipped where no CUDA device answers. The tolerance (`bound`) is that of
tests/test_tensor_core_kernel.py (derived there: 2u (A + |y|), u = 2^-11, A the magnitude
of the pointwise sum) plus what the tensor cores' truncating accumulation may add, derived
below; that module's second check, against a float64 model of the kernel's roundings to
one output ulp, holds for the emulator only (it sums an mma exactly and rounds once) and
has no counterpart here. On the GPU the activations' libdevice math adds a few fp32 ulps.
"""
from __future__ import annotations

import numpy as np
import pytest

from sepconv_gpu import activations, geometry, ops
from sepconv_gpu.backends import cuda_available
from sepconv_gpu.backends.cuda import tc
from sepconv_gpu.backends.cuda.launch import (
    input_element_strides, Launch, launch_arrays, launch_sequence, select_kernel, weights_layout)
from sepconv_gpu.backends.cpu.numpy_backend import reference_separable_conv

from _cases import random_case

GPU = cuda_available()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not GPU, reason="no CUDA device answers (or CuPy is missing)")]
if GPU:
    import cupy

    from sepconv_gpu.backends.cuda import cuda_backend

    if int(cupy.cuda.Device().compute_capability) < cuda_backend.TENSOR_CORE_MIN_ARCH:
        pytestmark.append(pytest.mark.skip(reason="the tensor-core kernel needs sm_80 or newer"))

U = 2.0 ** -11
LINEAR = activations.get(None)


def case(seed, shape, kernel, filters, strides=1, padding="same", dilation=1, dtype="float16",
         activation="relu", rank=2):
    rng = np.random.default_rng(seed)
    x, dk, pk, b = random_case(rng, rank, shape, kernel, 1, filters, dtype, True)
    s, p, df, d = geometry.normalize_call_args(rank, strides, padding, "channels_last", dilation)
    geom = geometry.make_geometry(rank, x.shape, dk.shape, pk.shape, b.shape, s, p, df, d)
    return x, dk, pk, b, geom, activations.get(activation)


def run(kind, x, dk, pk, b, geom, act, allow_tf32=False):
    """y from the kernel `kind` ("tc" or "simt", forced through x_aligned) on the device."""
    xd = cupy.asarray(x)
    strides = input_element_strides(xd.shape, xd.strides, xd.itemsize, geom)
    aligned = kind == "tc"  # a misaligned base is one of the things that rules TC out
    limit = cuda_backend._shared_memory_limit(xd.device.id)
    chosen = select_kernel(x.dtype.name, geom, allow_tf32, strides, aligned, limit)
    if chosen != kind and limit < tc.TC_SMEM_LIMIT:  # e.g. sm_86 / sm_89: 99 KB
        pytest.skip(f"no tensor-core tile of this case fits {limit} B of shared memory")
    assert chosen == kind
    launches, apply_after = launch_sequence(
        x.dtype.name, geom, act, strides, True, allow_tf32, aligned, limit)
    assert launches[0].kind == ("tc" if kind == "tc" else "simt")
    y = cupy.empty(geom.output_shape, dtype=x.dtype)
    weights = cuda_backend._prepared_weights(launches[0].weights, dk, pk, b, xd.device, None)
    partial = cupy.empty(max(launches[0].partial, 1), dtype=cupy.float32)
    for launch in launches:
        cuda_backend._launch(launch, launch_arrays(launch, xd, weights, y, partial))
    assert not apply_after
    return cupy.asnumpy(y).astype(np.float64), launches


def bound(x, dk, pk, geom, ref):
    """|tensor-core y - float64 reference| may reach: 2u (A + |y|) for the operand and
    output roundings, plus the accumulation's truncation.

    A tensor core adds an mma's b products (exact: 11- or 8-bit significands multiply
    exactly in fp32) and the accumulator by aligning them to the largest exponent,
    keeping a 24-bit significand and truncating what falls off, then truncates the
    normalized sum (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor
    cores", PeerJ CS 2021: b = 4 on V100, 8 on A100; assumed 4 <= b <= 16 on later
    parts). Each of the b + 1 addends then loses < 2^-23 of the largest, the sum < 2^-23
    of itself: < (b + 2) 2^-23 S per mma, S the magnitudes it adds, <= A (the accumulator
    holds a partial sum of A's terms). An output chains K_pad / b of them (a channel split
    only shortens each chain; its fp32 reduction rounds to nearest, < splits 2^-24 A):
    < (b + 2)(K_pad / b + 1) 2^-23 A <= (1.5 K_pad + 18) 2^-23 A for any b in 4..16,
    about 0.4 u A at K = 1024."""
    magnitude = np.max(reference_separable_conv(
        np.abs(x.astype(np.float64)), np.abs(dk.astype(np.float64)),
        np.abs(pk.astype(np.float64)), None, geom, LINEAR))
    k_pad = -(-pk.shape[-2] // tc.TC_K_ALIGN) * tc.TC_K_ALIGN
    accumulation = (1.5 * k_pad + 18) * 2.0 ** -23 * magnitude
    return 2 * U * (magnitude + np.abs(ref)) + accumulation + 1e-6


GEOMETRIES = [
    ((2, 9, 11, 16), 3, 20, 1, "same", 1),
    ((2, 17, 19, 32), 3, 64, 2, "same", 1),
    ((1, 15, 13, 40), 5, 9, 1, "valid", 1),
    ((2, 12, 12, 24), (2, 3), 70, 1, "same", (2, 1)),
    ((1, 7, 7, 96), 3, 300, 1, "same", 1),            # two filter blocks
    ((3, 14, 14, 128), 3, 256, 1, "same", 1),         # one 256-filter block, > 48 KB smem
    ((4, 56, 56, 32), 3, 64, 1, "same", 1),
    ((2, 1, 200, 64), (1, 31), 64, 1, "same", 1),     # Conformer-like 1D as 2D
]


@pytest.mark.parametrize("geom_case", GEOMETRIES, ids=lambda c: f"{c[0]}-k{c[1]}-f{c[2]}")
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_matches_reference_and_simt(geom_case, mode):
    shape, kernel, f, s, padding, d = geom_case
    dtype = "float16" if mode == "float16" else "float32"
    x, dk, pk, b, geom, act = case(5, shape, kernel, f, s, padding, d, dtype)
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    tc, launches = run("tc", x, dk, pk, b, geom, act, allow_tf32=mode == "tf32")
    simt, _ = run("simt", x, dk, pk, b, geom, act)
    tol = bound(x, dk, pk, geom, ref)
    assert np.all(np.abs(tc - ref) <= tol), (float(np.max(np.abs(tc - ref) - tol)), launches[0])
    # the SIMT kernel is exact up to its output rounding: the two differ by the
    # tensor-core operand roundings and at most one more output rounding
    assert np.all(np.abs(tc - simt) <= tol + U * np.abs(ref)), launches[0]


# The planner's round-2 structure at sizes where it matters (the planner's own choice):
# bands of rows on a wide image, A resident over 3 / 8 filter blocks with channel splits,
# tiles spanning images on small ones.
SUITE_SHAPES = [
    ((2, 147, 147, 64), 128, 1),
    ((4, 19, 19, 728), 728, 1),
    ((8, 10, 10, 1536), 2048, 1),
    ((4, 7, 7, 960), 320, 1),
    ((4, 56, 56, 144), 24, 1),
]


@pytest.mark.parametrize("shape,filters,stride", SUITE_SHAPES, ids=lambda v: str(v))
def test_tensor_core_suite_shapes(shape, filters, stride):
    x, dk, pk, b, geom, act = case(11, shape, 3, filters, stride)
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    tc, launches = run("tc", x, dk, pk, b, geom, act)
    tol = bound(x, dk, pk, geom, ref)
    assert np.all(np.abs(tc - ref) <= tol), (float(np.max(np.abs(tc - ref) - tol)), launches[0])


@pytest.mark.parametrize("plan_case", __import__("test_tensor_core_kernel").PLAN_SHAPES,
                         ids=lambda c: f"{c[-1]}-f{c[2]}-{c[0]}")
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_every_plan_shape(plan_case, mode):
    """Each position order, halo layout and A arrangement the emulated tests force
    (tests/test_tensor_core_kernel.py PLAN_SHAPES), now on the device."""
    from test_tensor_core_kernel import plan_with

    shape, kernel, filters, strides, dilation, want = plan_case
    dtype = "float16" if mode == "float16" else "float32"
    x, dk, pk, b, geom, act = case(12, shape, kernel, filters, strides, "same", dilation, dtype)
    tp = plan_with(dtype, geom, **want)
    if tp.shared_bytes > cuda_backend._shared_memory_limit(0):
        pytest.skip(f"{tp.shared_bytes} B of shared memory: more than this device allows")
    xd = cupy.asarray(x)
    strides_x = input_element_strides(xd.shape, xd.strides, xd.itemsize, geom)
    weights = cuda_backend._prepared_weights(weights_layout("tc", dtype), dk, pk,
                                             b, xd.device, None)
    y = cupy.full(geom.output_shape, np.nan, dtype=x.dtype)
    partial = cupy.full(max(1, tp.k_splits * geom.output_positions * filters), np.nan,
                        dtype=cupy.float32)
    launches = [Launch(
        "tc", tc.tc_name(dtype, tc.tc_extent(geom.kernel), tp.m_tiles),
        tp.grid, tc.TC_THREADS, tp.shared_bytes,
        tc.tc_scalar_args(geom, tp, strides_x, True, act.kernel_id, act.kernel_param),
        partial=partial.size if tp.k_splits > 1 else 0)]
    if tp.k_splits > 1:
        grid, block = tc.tc_reduce_grid(geom, cuda_backend._sm_count(0))
        launches.append(Launch(
            "tc_reduce", tc.tc_reduce_name(dtype), grid, block, 0,
            tc.tc_reduce_scalar_args(geom, tp, True, act.kernel_id, act.kernel_param)))
    for launch in launches:
        cuda_backend._launch(launch, launch_arrays(launch, xd, weights, y, partial))
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    got = cupy.asnumpy(y).astype(np.float64)
    assert np.all(np.abs(got - ref) <= bound(x, dk, pk, geom, ref)), tp


@pytest.mark.parametrize("name", activations.NAMES)
def test_tensor_core_every_activation_through_ops(name):
    x, dk, pk, b, geom, act = case(6, (2, 8, 9, 16), 3, 24, activation=name)
    y = ops.separable_conv(2, cupy.asarray(x), dk, pk, b, padding="same", activation=name,
                           backend="cuda")
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    tol = bound(x, dk, pk, geom, ref)
    assert np.all(np.abs(cupy.asnumpy(y).astype(np.float64) - ref) <= tol)


def test_tensor_core_float32_default_is_exact_simt_and_tf32_is_opt_in():
    x, dk, pk, b, geom, act = case(7, (2, 10, 10, 32), 3, 48, dtype="float32")
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    exact = ops.separable_conv(2, x, dk, pk, b, padding="same", activation="relu", backend="cuda")
    np.testing.assert_allclose(exact, ref, rtol=0, atol=2e-5 * max(1.0, np.max(np.abs(ref))))
    fast = ops.separable_conv(2, x, dk, pk, b, padding="same", activation="relu",
                              backend="cuda", allow_tf32=True)
    assert np.all(np.abs(fast - ref) <= bound(x, dk, pk, geom, ref))


def test_tensor_core_misaligned_input_runs_simt_correctly():
    x, dk, pk, b, geom, act = case(8, (1, 9, 9, 16), 3, 16)
    flat = cupy.asarray(np.concatenate([np.zeros(1, x.dtype), x.ravel()]))
    shifted = flat[1:].reshape(x.shape)   # 2 bytes off a 16-byte boundary
    assert shifted.data.ptr % 16
    y = ops.separable_conv(2, shifted, dk, pk, b, padding="same", activation="relu", backend="cuda")
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    assert np.all(np.abs(cupy.asnumpy(y).astype(np.float64) - ref) <= bound(x, dk, pk, geom, ref))


def test_tensor_core_weights_prepared_once_per_cache():
    x, dk, pk, b, geom, act = case(9, (1, 8, 8, 16), 3, 16)
    cache = {}
    y1 = ops.separable_conv(2, cupy.asarray(x), dk, pk, b, padding="same", activation="relu",
                            backend="cuda", weights_cache=cache)
    assert set(cache) == {("tc:float16", cupy.cuda.Device().id)}
    prepared = cache[("tc:float16", cupy.cuda.Device().id)]
    y2 = ops.separable_conv(2, cupy.asarray(x), dk, pk, b, padding="same", activation="relu",
                            backend="cuda", weights_cache=cache)
    assert cache[("tc:float16", cupy.cuda.Device().id)] is prepared
    np.testing.assert_array_equal(cupy.asnumpy(y1), cupy.asnumpy(y2))


def test_tensor_core_predicted_vs_measured(capsys):
    """Prints the cost model's prediction beside the measured time (nothing asserted about
    speed: the first GPU run calibrates the model)."""
    for shape, f, s in (((32, 56, 56, 128), 128, 1), ((32, 112, 112, 64), 128, 2),
                        ((32, 19, 19, 728), 728, 1), ((32, 7, 7, 960), 160, 1)):
        x, dk, pk, b, geom, act = case(10, shape, 3, f, s)
        xd = cupy.asarray(x)
        cache = {}
        call = lambda: ops.separable_conv(2, xd, dk, pk, b, strides=s, padding="same",  # noqa: E731
                                          activation="relu", backend="cuda", weights_cache=cache)
        call()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(10):
            call()
        end.record()
        end.synchronize()
        measured = cupy.cuda.get_elapsed_time(start, end) * 1000 / 10
        strides = input_element_strides(xd.shape, xd.strides, xd.itemsize, geom)
        launch = launch_sequence(
            "float16", geom, act, strides, True,
            smem_limit=cuda_backend._shared_memory_limit(xd.device.id))[0][0]
        with capsys.disabled():
            print(f"\n{shape}->{f} s{s}: {launch.name} predicted {launch.predicted_us:.1f} us, "
                  f"measured {measured:.1f} us")
        assert measured > 0
