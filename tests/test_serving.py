"""Serving on the GPU, host side: the fast path of a repeated call, CUDA graph capture and
the caller's stream, run by cuda_backend against the fake CuPy of benchmarks/fake_cupy.py
(which records every allocation, synchronize, host copy, kernel load and launch, and fails
a synchronize or a load while a stream captures, as CUDA does). No GPU: what is checked is
what the host asks the device to do, and, with the fake's launches run on the host emulator
(the stand-in), that a layer's calls compute the reference. The GPU halves are in
tests/test_serving_gpu.py.
"""
from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

import sepconv_gpu as sg
from sepconv_gpu import activations, geometry, ops
from sepconv_gpu.backends.cuda.launch import input_element_strides, launch_sequence
from benchmarks import fake_cupy


@pytest.fixture
def fake():
    """(cuda_backend bound to a fresh fake CuPy, the fake, CupyOps on it)."""
    backend, cupy = fake_cupy.load_backend()
    return backend, cupy, backend.CupyOps()


def _layer(cupy, ops_, shape, filters, dtype="float32", activation="relu", **kwargs):
    layer = sg.SeparableConv2D(filters, 3, padding="same", activation=activation, dtype=dtype,
                               backend=ops_, **kwargs)
    x = cupy.asarray(np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype))
    return layer, x


def _kinds(calls):
    return [c[0] for c in calls]


# (input shape, filters, dtype, activation, allow_tf32): today the SIMT kernel, SIMT +
# softmax, the tensor-core kernel, and the split tensor-core kernel with its reduction
# buffer (which kernels run is the planner's; each case checks what it plans)
GRAPH_CASES = [
    ((1, 14, 14, 32), 48, "float32", "relu", False),
    ((2, 7, 7, 16), 24, "float32", "softmax", False),
    ((2, 19, 21, 64), 72, "float16", "gelu", False),
    ((1, 7, 7, 256), 64, "float32", "relu", True),
]


def _planned(x, filters, dtype, activation, allow_tf32):
    """The launches launch_sequence plans for this layer call (the fake's device limit)."""
    rank = x.ndim - 2
    geom = geometry.make_geometry(rank, x.shape, (3,) * rank + (x.shape[-1], 1),
                                  (1,) * rank + (x.shape[-1], filters), (filters,),
                                  (1,) * rank, "same", "channels_last", (1,) * rank)
    strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    return launch_sequence(dtype, geom, activations.get(activation), strides, True,
                           allow_tf32, smem_limit=232448)[0]


@pytest.mark.parametrize("shape,filters,dtype,activation,allow_tf32", GRAPH_CASES)
def test_cuda_graph_capture_after_warm_up_has_no_sync_compile_or_host_copy(
        fake, shape, filters, dtype, activation, allow_tf32):
    """Once a shape has been seen, a layer call asks for nothing a CUDA graph capture
    forbids: no synchronize, no kernel load or compile, no host<->device copy; it only
    allocates its output (and a split's partial sums) from the current allocator on the
    capturing stream, and launches there."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, shape, filters, dtype, activation, allow_tf32=allow_tf32)
    eager = np.asarray(layer(x)).copy()  # warm-up: builds, uploads weights, compiles, plans
    warm_up = _kinds(cupy.calls)
    assert "compile" in warm_up and "h2d" in warm_up
    cupy.calls.clear()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        y = layer(x)
        stream.end_capture()
    during = cupy.calls[1:-1]
    assert _kinds(cupy.calls)[0] == "begin_capture" and _kinds(cupy.calls)[-1] == "end_capture"
    assert set(_kinds(during)) <= {"alloc", "launch"}, _kinds(during)
    planned = _planned(x, filters, dtype, activation, allow_tf32)
    launches = [c for c in during if c[0] == "launch"]
    assert [c[1] for c in launches] == [launch.name for launch in planned]
    assert all(c[-1] == stream.ptr for c in launches)  # on the capturing stream
    allocations = [c for c in during if c[0] == "alloc"]
    assert all(c[2] == stream.ptr for c in allocations)
    assert allocations[0][1] == int(np.prod(y.shape)) * np.dtype(dtype).itemsize
    assert [c[1] for c in allocations[1:]] == [4 * l.partial for l in planned if l.partial]
    assert y.shape == eager.shape


def test_cuda_graph_capture_of_an_unseen_shape_fails_at_the_kernel_load(fake):
    """Without a warm-up, the first call must load its kernel, which a capture forbids:
    the fake (like CUDA) refuses it, and nothing was launched into the graph."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 8, 8, 16), 16)
    layer.build(x.shape)
    stream = cupy.cuda.Stream()
    with stream:
        stream.begin_capture()
        with pytest.raises(RuntimeError, match="capturing"):
            layer(x)
    assert "launch" not in _kinds(cupy.calls)


def test_fast_path_plans_once_per_signature_and_replans_a_new_one(fake):
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 9, 9, 16), 16)
    backend._call_plan.cache_clear()
    for _ in range(3):
        layer(x)
    info = backend._call_plan.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    layer(cupy.asarray(np.zeros((2, 9, 9, 16), np.float32)))  # a new batch: a new plan
    assert backend._call_plan.cache_info().misses == 2
    assert _kinds(cupy.calls).count("compile") == 1  # the same kernel serves both


@pytest.mark.parametrize("dtype, kind", [("float32", "simt"), ("float16", "tc")])
def test_layer_calls_on_the_stand_in_compute_the_reference_with_cached_weights(
        emulator_for, monkeypatch, dtype, kind):
    """The serving path's numbers: a layer on cuda_backend whose launches the host emulator
    runs (the stand-in, tests/_cuda_host_emulator.stand_in). Its first call prepares the
    weights into the layer's cache, the second only reads them, a call after set_weights
    prepares the new ones; every output matches the float64 reference."""
    import _cuda_host_emulator as host

    from _cases import assert_matches

    backend, cupy = host.stand_in(emulator_for([]))
    prepared = []
    real = backend.prepare_weights
    monkeypatch.setattr(backend, "prepare_weights",
                        lambda *args: prepared.append(args[1]) or real(*args))
    layer, x = _layer(cupy, backend.CupyOps(), (2, 7, 9, 16), 24, dtype)
    rng = np.random.default_rng(1)
    for step in ("first", "cached", "new weights"):
        if step == "new weights":
            layer.set_weights([rng.uniform(-0.3, 0.3, w.shape).astype(dtype)
                               for w in layer.get_weights()])
        del cupy.calls[:]
        y = cupy.asnumpy(layer(x))
        launched = [c[1] for c in cupy.calls if c[0] == "launch"]
        assert launched and launched[0].startswith(f"sepconv_{kind}<"), launched
        assert len(prepared) == {"first": 1, "cached": 1, "new weights": 2}[step]
        reference = ops.reference_separable_conv(2, cupy.asnumpy(x), *layer.get_weights(),
                                                 padding="same", activation="relu")
        assert_matches(y, reference)


def test_fast_path_keeps_validation_errors_for_a_seen_signature(fake):
    """A signature that failed is never cached: the same call fails the same way again,
    and a valid one between them changes nothing."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 9, 9, 16), 16)
    layer(x)
    bad = cupy.asarray(np.zeros((1, 9, 9, 8), np.float32))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 16"):
            layer(bad)
        layer(x)
    # sg.ops: strides equal to a cached valid value (True == 1, (1, True) == (1, 1),
    # 1.0 == 1) still fail, each time, with their own message
    xs = np.zeros((1, 5, 5, 16), np.float32)
    dk, pk = np.zeros((3, 3, 16, 1), np.float32), np.zeros((1, 1, 16, 4), np.float32)
    for _ in range(2):
        for valid in (1, (1, 1)):
            ops.separable_conv2d(xs, dk, pk, strides=valid)
        for bad, error in ((True, ValueError), ((1, True), TypeError), (1.0, ValueError)):
            with pytest.raises(error, match=r"`strides` argument must be a tuple of 2 integers"):
                ops.separable_conv2d(xs, dk, pk, strides=bad)


def test_stream_kernels_go_to_cupys_current_stream(fake):
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 7, 7, 8), 8, activation="softmax")
    layer(x)
    assert {c[-1] for c in cupy.calls if c[0] == "launch"} == {0}  # the null stream
    cupy.calls.clear()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        layer(x)
        ops.separable_conv2d(x, layer.depthwise_kernel.value, layer.pointwise_kernel.value,
                             backend=ops_)
    launches = [c for c in cupy.calls if c[0] == "launch"]
    assert len(launches) == 3 and {c[-1] for c in launches} == {stream.ptr}
    assert not [c for c in cupy.calls if c[0] == "sync"]


class _FakeTorch:
    """torch, as far as the CUDA backend uses it for CUDA tensors: the current stream,
    empty, from_dlpack (which records the stream CuPy has current when it is called: CuPy's
    __dlpack__ orders its current stream before the consumer's, so it must be torch's)."""

    def __init__(self, cupy, stream_ptr):
        self.cupy, self.calls = cupy, []
        self.float16, self.float32, self.float64 = "float16", "float32", "float64"
        self.cuda = types.SimpleNamespace(current_stream=lambda device=None: types.SimpleNamespace(
            cuda_stream=stream_ptr))

    def tensor(self, array):
        return _FakeTensor(np.asarray(array), self)

    def empty(self, shape, dtype, device):
        self.calls.append(("empty", tuple(shape), dtype, self.cupy.cuda.get_current_stream().ptr))
        return _FakeTensor(np.empty(shape, dtype), self)

    def from_dlpack(self, array):
        self.calls.append(("from_dlpack", self.cupy.cuda.get_current_stream().ptr))
        return _FakeTensor(np.asarray(array), self)


class _FakeTensor:
    is_cuda, requires_grad = True, False
    device = types.SimpleNamespace(type="cuda", index=0)

    def __init__(self, array, torch):
        self.array, self.torch = array, torch
        self.shape, self.dtype = array.shape, array.dtype

    def __dlpack__(self, stream=None):
        self.torch.calls.append(("__dlpack__", stream))
        return self.array

    def __dlpack_device__(self):
        return (2, 0)


_FakeTensor.__module__ = "torch"


def test_stream_torch_tensors_run_on_torchs_current_stream(fake, monkeypatch):
    """A torch CUDA tensor: kernels, output allocations and both DLPack exchanges happen on
    torch's current stream, made CuPy's current stream for the call, so DLPack's handshake
    needs no event and a torch pipeline stays ordered without synchronize()."""
    backend, cupy, ops_ = fake
    torch = _FakeTorch(cupy, stream_ptr=0x5EED)
    monkeypatch.setitem(sys.modules, "torch", torch)
    layer, x = _layer(cupy, ops_, (1, 7, 7, 8), 8)
    layer.build(x.shape)  # its weight uploads wait for their copies (a synchronize, once)
    x_torch = torch.tensor(np.asarray(x))
    for call in (lambda: layer(x_torch),
                 lambda: ops.separable_conv2d(x_torch, layer.depthwise_kernel.value,
                                              layer.pointwise_kernel.value, padding="same",
                                              backend=ops_)):
        cupy.calls.clear()
        torch.calls.clear()
        y = call()
        assert type(y) is _FakeTensor
        launches = [c for c in cupy.calls if c[0] == "launch"]
        assert launches and {c[-1] for c in launches} == {0x5EED}
        assert ("__dlpack__", 0x5EED) in torch.calls  # the consumer stream handed to torch
        assert ("from_dlpack", 0x5EED) in torch.calls  # the result given back on it too
        assert [c for c in torch.calls if c[0] == "empty"] == [
            ("empty", y.shape, "float32", 0x5EED)]  # from torch's allocator
        assert not [c for c in cupy.calls if c[0] in ("sync", "d2h")]
    assert cupy.cuda.get_current_stream().ptr == 0  # the scope is left as it was found


def test_cuda_graph_torch_capture_allocates_from_torch_only(fake, monkeypatch):
    """Under torch.cuda.graph the output must come from torch's graph pool: after a warm-up
    a torch call allocates nothing through CuPy and launches on torch's stream."""
    backend, cupy, ops_ = fake
    torch = _FakeTorch(cupy, stream_ptr=0xCAFE)
    monkeypatch.setitem(sys.modules, "torch", torch)
    layer, x = _layer(cupy, ops_, (2, 19, 21, 64), 72, dtype="float16", activation="gelu")
    x_torch = torch.tensor(np.asarray(x))
    layer(x_torch)
    cupy.calls.clear()
    stream = backend._external_stream(0xCAFE, 0)
    stream.begin_capture()
    layer(x_torch)
    stream.end_capture()
    during = cupy.calls[1:-1]
    assert set(_kinds(during)) <= {"launch", "from_dlpack"}, _kinds(during)
    assert {c[-1] for c in during if c[0] == "launch"} == {0xCAFE}


def test_fast_path_kernel_load_errors_name_the_kernel(fake):
    """A kernel that fails to load (now at planning, before any launch) is reported as a
    launch failure was: a RuntimeError naming the kernel; and it is not cached."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 6, 6, 8), 8)

    def fail(name, device):
        raise cupy.cuda.driver.CUDADriverError("CUDA_ERROR_NO_BINARY_FOR_GPU")

    backend._load_kernel = fail
    name = _planned(np.asarray(x), 8, "float32", "relu", False)[0].name
    for _ in range(2):
        with pytest.raises(RuntimeError, match=rf"kernel {re.escape(name)} .*CUDA_ERROR_NO_BINARY"):
            layer(x)
    backend._load_kernel = cupy.load_kernel
    assert layer(x).shape == (1, 6, 6, 8)


@pytest.mark.parametrize("channels, dtype, kernel", [(5, "float32", "sepconv_simt"),
                                                    (16, "float16", "sepconv_tc")])
def test_in_place_writes_to_a_weight_are_never_seen_whichever_kernel_runs(fake, channels, dtype,
                                                                           kernel):
    """`value` on CUDA is a copy: writing into it changes no call, on the SIMT kernel
    (whose float32 weight layout could alias the layer's array) as on the tensor-core one
    (which copies it); `assign` is seen by the next call."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 6, 6, channels), 8, dtype=dtype)
    layer(x)
    depthwise = [c[4][1] for c in cupy.calls if c[0] == "launch"]
    assert kernel in [c[1] for c in cupy.calls if c[0] == "launch"][0]
    before = np.array(depthwise[0], copy=True)
    layer.depthwise_kernel.value[...] = 0
    layer(x)
    launched = [c[4][1] for c in cupy.calls if c[0] == "launch"][-1]
    np.testing.assert_array_equal(launched, before)
    assert np.abs(layer.depthwise_kernel.numpy()).max() > 0
    layer.depthwise_kernel.assign(np.zeros(layer.depthwise_kernel.shape))
    layer(x)
    assert not np.any([c[4][1] for c in cupy.calls if c[0] == "launch"][-1])


def test_in_place_writes_to_a_weight_are_refused_on_numpy():
    layer = sg.SeparableConv2D(4, 3, backend="numpy")
    x = np.random.default_rng(0).standard_normal((1, 5, 5, 3)).astype("float32")
    y = layer(x)
    with pytest.raises(ValueError, match="read-only"):
        layer.depthwise_kernel.value[...] = 0
    np.testing.assert_array_equal(layer(x), y)
    given = np.ones(layer.pointwise_kernel.shape, np.float32)
    layer.pointwise_kernel.value = given        # replacing the array is a write
    assert given.flags.writeable                # the caller's array keeps its flags
    assert not np.array_equal(layer(x), y)


# --- several streams and threads: what orders what ----------------------------------------

def _on_stream(cupy, stream, body):
    """body() on `stream`, in a thread of its own (CuPy's current stream is per thread)."""
    import threading

    errors = []

    def run():
        try:
            with stream:
                body()
        except BaseException as exc:  # noqa: BLE001 (re-raised below)
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def test_prepared_weights_are_ordered_before_a_call_on_another_stream(fake):
    """A layer's weights are prepared once (per layout), on the first caller's stream, with
    an event recorded there after; a call on that stream needs nothing more, a call from
    another thread on another stream waits for the event on the device (never the host)
    before its first launch."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (2, 19, 21, 64), 72, dtype="float16")  # tensor-core kernel
    layer.build(x.shape)
    first, second = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    cupy.calls.clear()
    _on_stream(cupy, first, lambda: layer(x))
    records = [c for c in cupy.calls if c[0] == "event_record"]
    assert len(records) == 1 and records[0][2] == first.ptr
    launch_at = _kinds(cupy.calls).index("launch")
    assert cupy.calls.index(records[0]) < launch_at  # right after the preparation
    event = records[0][1]
    for stream in (first, second, first):
        cupy.calls.clear()
        _on_stream(cupy, stream, lambda: layer(x))
        kinds = _kinds(cupy.calls)
        assert "sync" not in kinds and "event_record" not in kinds and "h2d" not in kinds
        waits = [c for c in cupy.calls if c[0] == "wait_event"]
        if stream is first:
            assert waits == []
        else:
            assert waits == [("wait_event", second.ptr, event)]
            assert kinds.index("wait_event") < kinds.index("launch")
        assert {c[-1] for c in cupy.calls if c[0] == "launch"} == {stream.ptr}


def test_weight_uploads_are_complete_when_set_weights_returns(fake):
    """set_weights copies onto the device on the stream current in that thread: it waits
    for the copies there, so that a call on any other stream reads the new values."""
    backend, cupy, ops_ = fake
    layer, x = _layer(cupy, ops_, (1, 7, 7, 8), 8)
    layer.build(x.shape)
    upload = cupy.cuda.Stream(non_blocking=True)
    cupy.calls.clear()
    _on_stream(cupy, upload, lambda: layer.set_weights([np.ones(w.shape, np.float32)
                                                        for w in layer.weights]))
    kinds = _kinds(cupy.calls)
    assert kinds.count("h2d") == 3
    last_copy = max(i for i, k in enumerate(kinds) if k == "h2d")
    assert ("sync", "stream", upload.ptr) in cupy.calls[last_copy:]


def test_shared_memory_opt_in_is_set_once_to_the_device_maximum(fake):
    """Threads launching plans of different sizes above 48 KB on one kernel: one opt-in,
    to the device's limit, so that none can lower it under another's launch."""
    import threading

    from sepconv_gpu.backends.cuda.launch import Launch

    backend, cupy, ops_ = fake
    fn = cupy.cuda.function.Function("sepconv_tc<__half, 3, 3, 4>")
    sizes = [60 * 1024, 200 * 1024, 100 * 1024, 49 * 1024] * 4
    start = threading.Barrier(len(sizes))

    def launch(shared):
        start.wait()
        backend._launch(Launch("tc", fn.name, 1, 256, shared, ()), (), fn)

    threads = [threading.Thread(target=launch, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opt_ins = [c for c in cupy.calls if c[0] == "setattr"]
    assert opt_ins == [("setattr", fn.ptr, 8, 232448)]  # the fake device's opt-in maximum
    assert sorted(c[5] for c in cupy.calls if c[0] == "launch") == sorted(sizes)
    assert cupy.calls.index(opt_ins[0]) < _kinds(cupy.calls).index("launch")


@pytest.mark.parametrize("status,fatal", [(700, True), (701, False)])
def test_autotune_raises_a_context_killing_fault_naming_the_plan(fake, monkeypatch, tmp_path,
                                                                 caplog, status, fatal):
    """A candidate whose launch faults with a sticky error (700: illegal address) stops
    autotuning with an error naming the plan: the context is dead, every later candidate
    would fail too. One that cannot launch (701: too many resources) is skipped."""
    from sepconv_gpu.backends.cuda import autotune

    backend, cupy, ops_ = fake
    monkeypatch.setattr(backend._autotune, "_tuner", autotune.Tuner(str(tmp_path)))
    autotune.set_autotune(True)

    def load(name, device):
        fn = cupy.load_kernel(name, device)
        if name.startswith("sepconv_simt"):  # the SIMT candidate (timed last) faults
            return _Failing(fn, cupy.cuda.driver.CUDADriverError(status))
        return fn

    backend._load_kernel = load
    layer, x = _layer(cupy, ops_, (2, 19, 21, 64), 72, dtype="float16")
    try:
        if fatal:
            with pytest.raises(autotune.DeviceFault, match=r"plan \{'kernel': 'simt'.*context is lost"):
                layer(x)
        else:
            assert layer(x).shape == (2, 19, 21, 72)
            assert "KernelPlan" in caplog.text and "not a candidate" in caplog.text
    finally:
        autotune.set_autotune(None)


class _Failing:
    """A loaded kernel whose every launch raises `error`."""

    def __init__(self, fn, error):
        self.name, self.ptr, self.error = fn.name, fn.ptr, error

    def __call__(self, *args, **kwargs):
        raise self.error
