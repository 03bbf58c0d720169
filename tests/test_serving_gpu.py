"""Serving on a real GPU: CUDA graph replay equals the eager call (CuPy stream capture and
torch.cuda.graph), kernels run on the caller's stream (CuPy's current one, torch's current
one), and bfloat16 on the CUDA backend. The CPU halves are tests/test_serving.py.

Every test is marked `gpu` and skipped where no CUDA device answers (or CuPy is missing).
"""
from __future__ import annotations

import numpy as np
import pytest

import sepconv_gpu as sg
from sepconv_gpu import ops
from sepconv_gpu.backends import cuda_available

from _cases import TOLERANCE, random_case

GPU = cuda_available()
pytestmark = pytest.mark.gpu  # conftest.py skips it where no CUDA device answers
if GPU:
    import cupy

# the layer calls the CPU graph-capture tests plan (test_serving.py)
from test_serving import GRAPH_CASES as CASES  # noqa: E402


def _layer(shape, filters, dtype, activation, allow_tf32):
    layer = sg.SeparableConv2D(filters, 3, padding="same", activation=activation, dtype=dtype,
                               backend="cuda", allow_tf32=allow_tf32)
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, shape).astype(dtype) for _ in range(2)]
    return layer, inputs


@pytest.fixture
def async_pool():
    """CuPy's stream-ordered allocator (cudaMallocAsync), which stream capture needs for
    the outputs a captured call allocates."""
    previous = cupy.cuda.get_allocator()
    cupy.cuda.set_allocator(cupy.cuda.MemoryAsyncPool().malloc)
    yield
    cupy.cuda.set_allocator(previous)


@pytest.mark.parametrize("shape,filters,dtype,activation,allow_tf32", CASES)
def test_cuda_graph_cupy_replay_equals_eager(async_pool, shape, filters, dtype, activation,
                                             allow_tf32):
    layer, (a, b) = _layer(shape, filters, dtype, activation, allow_tf32)
    x = cupy.asarray(a)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        layer(x)  # warm-up: compiles, plans, uploads the weights
        stream.synchronize()
        stream.begin_capture()
        y = layer(x)
        graph = stream.end_capture()
        x[...] = cupy.asarray(b)  # new input in the captured buffer
        graph.launch(stream)
        stream.synchronize()
    eager = layer(cupy.asarray(b))
    np.testing.assert_array_equal(cupy.asnumpy(y), cupy.asnumpy(eager))


@pytest.mark.parametrize("shape,filters,dtype,activation,allow_tf32", CASES)
def test_cuda_graph_torch_replay_equals_eager(shape, filters, dtype, activation, allow_tf32):
    torch = pytest.importorskip("torch")
    layer, (a, b) = _layer(shape, filters, dtype, activation, allow_tf32)
    static = torch.from_numpy(a).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        layer(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(static)
    static.copy_(torch.from_numpy(b).cuda())
    graph.replay()
    torch.cuda.synchronize()
    eager = layer(torch.from_numpy(b).cuda())
    assert torch.equal(y, eager)


def _slow_producer(xp, x, rounds=64):
    """Device work that takes a while and leaves x's values as they were: a kernel on the
    caller's stream that has not finished would be read half-done by a misordered one."""
    y = x.copy()
    for _ in range(rounds):
        y = y * 1.0 + 0.0
    return y


def test_stream_cupy_kernels_follow_work_on_the_current_stream():
    layer, (a, _) = _layer((4, 56, 56, 32), 32, "float32", "relu", False)
    expected = cupy.asnumpy(layer(cupy.asarray(a)))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x = _slow_producer(cupy, cupy.asarray(a))
        y = layer(x)
        z = y + 1  # a consumer on the same stream
    stream.synchronize()
    np.testing.assert_allclose(cupy.asnumpy(z), expected + 1, rtol=1e-6, atol=1e-6)


def test_stream_torch_pipeline_stays_ordered_without_synchronize():
    torch = pytest.importorskip("torch")
    layer, (a, _) = _layer((4, 56, 56, 32), 32, "float32", "relu", False)
    expected = layer(torch.from_numpy(a).cuda()).cpu()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = _slow_producer(torch, torch.from_numpy(a).cuda())
        z = layer(x) + 1
    stream.synchronize()
    torch.testing.assert_close(z.cpu(), expected + 1)


def test_bfloat16_cuda_matches_the_reference_or_refuses_clearly():
    """bfloat16 CUDA tensors: computed by the catalogue's bfloat16 kernels when there are
    any, else refused with a TypeError saying so. Tolerance, relative to max(1, max|ref|):
    the output's rounding (u = 2**-8) plus the bfloat16 operands of the intermediate
    (u per term of the pointwise sum, whose magnitudes random_case keeps under ~3 times
    the output's scale): 4u = 2**-6, plus the float32 budget."""
    torch = pytest.importorskip("torch")
    from sepconv_gpu.backends.cuda import kernel_common

    x, dk, pk, b = random_case(np.random.default_rng(5), 2, (2, 9, 9, 32), 3, 1, 40)
    as_bf16 = lambda a: torch.from_numpy(a).to(torch.bfloat16).cuda()
    args = [as_bf16(a) for a in (x, dk, pk, b)]
    if "bfloat16" not in kernel_common.DTYPES:
        with pytest.raises(TypeError, match="bfloat16"):
            ops.separable_conv2d(*args, padding="same", activation="relu")
        return
    try:
        cupy.from_dlpack(args[0])
    except Exception as exc:  # CuPy < 14 or no ml_dtypes: refused clearly (test_bfloat16.py)
        pytest.skip(f"this CuPy cannot import bfloat16 tensors: {exc}")
    y = ops.separable_conv2d(*args, padding="same", activation="relu")
    assert y.dtype == torch.bfloat16 and y.is_cuda
    reference = ops.reference_separable_conv(2, *(a.float().cpu().numpy() for a in args),
                                             padding="same", activation="relu")
    scale = max(1.0, float(np.abs(reference).max()))
    err = float(np.abs(y.float().cpu().numpy() - reference).max()) / scale
    assert err <= 2.0 ** -6 + TOLERANCE["float32"], err
