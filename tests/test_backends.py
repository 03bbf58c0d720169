"""The backend rule: explicit > use_backend > set_backend > env var > auto."""
import sys
import threading
import types
import warnings

import numpy as np
import pytest

import sepconv_gpu as sg
from sepconv_gpu import backends


@pytest.fixture(autouse=True)
def clean_rule(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "_global_choice", None)
    yield


@pytest.fixture
def no_cuda(monkeypatch):
    """Pretend there is no GPU, whatever this machine has."""
    monkeypatch.setattr(backends, "cuda_status", lambda: (False, "test: no device"))
    backends._cuda_ops.cache_clear()
    yield
    backends._cuda_ops.cache_clear()


def test_auto_without_cuda_falls_back_to_numpy_and_says_so_once(no_cuda, monkeypatch):
    monkeypatch.setattr(backends, "_fallback_said", False)
    with pytest.warns(sg.NumpyFallbackWarning, match="test: no device"):
        assert sg.get_backend() == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sg.get_backend() == "numpy"  # said once only


def test_cuda_without_device_is_a_clear_error(no_cuda):
    with pytest.raises(sg.BackendUnavailableError, match="cuda.*test: no device"):
        sg.SeparableConv2D(2, 3, backend="cuda")
    with pytest.raises(sg.BackendUnavailableError):
        sg.set_backend("cuda")
    with pytest.raises(sg.BackendUnavailableError):
        with sg.use_backend("cuda"):
            pass


def test_precedence(no_cuda, monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    assert backends.requested_backend() == "cuda"  # env var
    sg.set_backend("numpy")
    assert backends.requested_backend() == "numpy"  # set_backend beats env
    sg.set_backend("auto")
    with sg.use_backend("numpy") as ops:
        assert ops.name == "numpy" and backends.requested_backend() == "numpy"  # context beats global
        assert backends.requested_backend("auto") == "auto"  # explicit beats context
    assert backends.requested_backend() == "auto"


def test_bad_names_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        sg.set_backend("gpu")
    monkeypatch.setenv(backends.ENV_VAR, "opencl")
    with pytest.raises(ValueError, match="SEPCONV_GPU_BACKEND"):
        backends.requested_backend()


@pytest.fixture
def cpu_rule(monkeypatch):
    monkeypatch.delenv(backends.CPU_KERNEL_ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "_cpu_kernel_choice", None)
    monkeypatch.setattr(backends, "_numba_fallback_said", False)


def test_cpu_kernel_rule(cpu_rule, monkeypatch):
    """Numba where it imports; the NumPy code by name (set_cpu_kernel beats the env var)
    or where Numba is missing, said once; bad names and a missing Numba asked for by name
    are clear errors."""
    from sepconv_gpu.backends.cpu import numba_kernel

    assert backends.cpu_kernel() == "numba"
    monkeypatch.setenv(backends.CPU_KERNEL_ENV_VAR, "numpy")
    assert backends.cpu_kernel() == "numpy"
    backends.set_cpu_kernel("numba")
    assert backends.cpu_kernel() == "numba"
    x, dk, pk = np.ones((1, 5, 5, 2), "f4"), np.ones((3, 3, 2, 1), "f4"), np.ones((1, 1, 2, 3), "f4")
    calls = []
    monkeypatch.setattr(numba_kernel, "separable_conv", lambda *a: calls.append(a) or np.zeros((1, 5, 5, 3), "f4"))
    sg.ops.separable_conv2d(x, dk, pk, padding="same", backend="numpy")
    backends.set_cpu_kernel("numpy")
    y = sg.ops.separable_conv2d(x, dk, pk, padding="same", backend="numpy")
    assert len(calls) == 1 and y[0, 2, 2, 0] == 18  # the NumPy code ran the second call
    with pytest.raises(ValueError, match="cpu_kernel must be one of"):
        backends.set_cpu_kernel("llvm")
    backends.set_cpu_kernel(None)
    monkeypatch.setenv(backends.CPU_KERNEL_ENV_VAR, "cython")
    with pytest.raises(ValueError, match="SEPCONV_GPU_CPU_KERNEL"):
        backends.cpu_kernel()
    monkeypatch.delenv(backends.CPU_KERNEL_ENV_VAR)
    monkeypatch.setattr(backends, "numba_status", lambda: (False, "test: no numba"))
    with pytest.warns(backends.NumbaFallbackWarning, match="test: no numba"):
        assert backends.cpu_kernel() == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.cpu_kernel() == "numpy"  # said once only
    with pytest.raises(sg.BackendUnavailableError, match="test: no numba"):
        backends.set_cpu_kernel("numba")


def test_a_backend_object_is_an_ops():
    """`backend=` takes an `Ops` object as is; an object that only looks like one (it has
    a `separable_conv`) is refused as a bad name, not called."""
    ops = backends.get_ops("numpy")
    assert isinstance(ops, backends.Ops) and backends.resolve(ops) is ops
    assert backends.requested_backend(ops) == "numpy"

    class LookAlike:
        name = "numpy"

        def separable_conv(self, *args, **kwargs):
            raise AssertionError("called")

    with pytest.raises(ValueError, match="backend must be one of .*LookAlike"):
        sg.SeparableConv2D(2, 3, backend=LookAlike())


def test_context_is_per_thread():
    seen = {}

    def worker():
        seen["thread"] = backends.requested_backend()

    with sg.use_backend("numpy"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert backends.requested_backend() == "numpy"
    assert seen["thread"] == "auto"


def test_layer_keeps_the_backend_it_was_made_with():
    with sg.use_backend("numpy"):
        layer = sg.SeparableConv2D(2, 3)
    assert layer.backend == "numpy"
    layer.build((1, 5, 5, 3))
    assert all(isinstance(w.value, np.ndarray) for w in layer.weights)


def test_ops_compute_where_x_lives():
    x = np.ones((1, 5, 5, 2), "float32")
    assert backends.ops_for_array(x).name == "numpy"
    assert not backends.lives_on_device(x)

    class FakeCudaArray:
        __cuda_array_interface__ = {}

    assert backends.lives_on_device(FakeCudaArray())


def _fake_cupy(device_count):
    """A stand-in for CuPy with `device_count` devices (an exception: the driver fails)."""
    def count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    device = types.SimpleNamespace(compute_capability="90")
    runtime = types.SimpleNamespace(getDeviceCount=count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime, Device=lambda i: device))


@pytest.mark.parametrize("cupy_module, expected", [
    (None, (False, "CuPy is not importable (")),
    (_fake_cupy(0), (False, "CuPy found no CUDA device")),
    (_fake_cupy(RuntimeError("cudaErrorNoDevice")), (False, "no CUDA device answers (RuntimeError: cudaErrorNoDevice)")),
    (_fake_cupy(2), (True, "")),
])
def test_cuda_status_says_why(monkeypatch, cupy_module, expected):
    monkeypatch.setitem(sys.modules, "cupy", cupy_module)  # None: `import cupy` fails
    backends.cuda_status.cache_clear()
    try:
        ok, reason = backends.cuda_status()
        assert ok is expected[0] and reason.startswith(expected[1]), reason
        assert backends.cuda_available() is ok
    finally:
        backends.cuda_status.cache_clear()  # the real answer again


def test_failed_set_backend_changes_nothing(no_cuda):
    """It used to raise as documented but leave the default at "cuda", so every later
    layer raised until set_backend(None)."""
    sg.set_backend("numpy")
    with pytest.raises(sg.BackendUnavailableError):
        sg.set_backend("cuda")
    assert backends.requested_backend() == "numpy"
    assert sg.SeparableConv2D(2, 3).backend == "numpy"
    sg.set_backend(None)
    with pytest.raises(sg.BackendUnavailableError):
        sg.set_backend("cuda")
    assert backends._global_choice is None


def test_numba_kernel_concurrent_calls_agree_and_give_blas_its_threads_back():
    """Calls from several threads at once (each chunked over the kernel's threads, BLAS
    held to one thread meanwhile) compute what the reference does, and afterwards BLAS
    has its own thread count again (the limit is process-wide: the last call out restores it).
    Compared per library loaded before the calls: Numba's first compile in a process loads
    SciPy's OpenBLAS beside NumPy's."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 32, 32, 16)).astype("f4")  # 1.3M multiply-adds: chunked
    dk = rng.standard_normal((3, 3, 16, 1)).astype("f4")
    pk = rng.standard_normal((1, 1, 16, 32)).astype("f4")
    ref = sg.ops.reference_separable_conv(2, x, dk, pk, None, padding="same", activation="relu6")
    results, start = [None] * 4, threading.Barrier(4)

    def call(i):
        start.wait()
        results[i] = sg.ops.separable_conv2d(x, dk, pk, padding="same", activation="relu6", backend="numpy")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for y in results:
        np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * max(1, np.abs(ref).max()))
    after = blas_threads()
    assert {path: after.get(path) for path in before} == before


def test_numba_kernel_outputs_reuse_memory_only_once_every_view_is_freed(cpu_rule, monkeypatch):
    """Large outputs come from a pool (every size here: MIN_BYTES lowered): a view of an
    earlier result keeps that result's memory and values through later calls; once it is
    freed, the next call of that size reuses the memory and overwrites all of it."""
    pytest.importorskip("numba")
    from sepconv_gpu.backends.cpu import output_pool

    monkeypatch.setattr(output_pool, "MIN_BYTES", 0)
    backends.set_cpu_kernel("numba")
    rng = np.random.default_rng(3)
    dk = rng.standard_normal((3, 3, 16, 1)).astype("f4")
    pk = rng.standard_normal((1, 1, 16, 32)).astype("f4")
    xs = [rng.standard_normal((2, 32, 32, 16)).astype("f4") for _ in range(3)]
    refs = [sg.ops.reference_separable_conv(2, x, dk, pk, None, padding="same") for x in xs]

    def call(i):
        return sg.ops.separable_conv2d(xs[i], dk, pk, padding="same", backend="numpy")

    def check(y, ref):
        np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())

    view = call(0)[1:]  # the result itself is dropped at once, its view lives on
    address = view.base.ctypes.data
    kept = call(1)
    assert not np.shares_memory(kept, view)
    check(view, refs[0][1:])  # its values survived call(1)
    del view
    y = call(2)
    assert y.ctypes.data == address  # recycled ...
    check(y, refs[2])  # ... and overwritten
    check(kept, refs[1])


@pytest.mark.parametrize("activation", ["exponential", "sigmoid", "silu"])
def test_numba_kernel_worker_threads_keep_the_callers_floating_point_errstate(cpu_rule, monkeypatch,
                                                                             activation):
    """The chunked plan computes on worker threads, which do not inherit np.errstate:
    overflow in exp (large inputs) must warn there no more than on the caller's thread."""
    pytest.importorskip("numba")
    from sepconv_gpu.backends.cpu import numba_kernel

    monkeypatch.setattr(numba_kernel, "FUSED_MAX_PRODUCTS", 0)   # always chunked
    monkeypatch.setattr(numba_kernel, "CHUNK_BYTES", 1)          # many chunks, both threads
    backends.set_cpu_kernel("numba")
    x = (100 * np.random.default_rng(5).standard_normal((2, 16, 16, 8))).astype("float32")
    dk, pk = np.ones((3, 3, 8, 1), "f4"), np.ones((1, 1, 8, 8), "f4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = sg.ops.separable_conv2d(x, dk, pk, activation=activation, backend="numpy")
    assert [str(w.message) for w in caught] == [] and y.shape == (2, 14, 14, 8)
