"""The arguments the CUDA backend launches each kernel with match the kernel's parameters.

CuPy passes a pointer to each NumPy scalar's bytes and the driver reads as many as the
kernel's parameter has, unchecked (np.int32 for a `long long` or np.float32 for a `double`
reads garbage; np.float64 for a `float` reinterprets bits), so each
`__global__` signature is parsed from kernels/*.cu and compared, position by position,
with what `launch_sequence` + `launch_arrays` build: arrays where the kernel takes
pointers (with the pointee's dtype), NumPy scalars of exactly the declared type elsewhere,
and the block size its `__launch_bounds__` names.
The second half runs cuda_backend against a fake CuPy: the shared-memory opt-in, the
device limit the planner gets, and how a compiled kernel is loaded.
"""
from __future__ import annotations

import os
import re
import types

import numpy as np
import pytest

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import kernel_cache, simt, tc
from sepconv_gpu.backends.cuda.launch import (
    input_element_strides, Launch, launch_arrays, launch_sequence, prepare_weights)

try:
    from _cases import random_case  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from ._cases import random_case

SCALAR_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
_GLOBAL = re.compile(
    r"__global__\s+void\s+(?:__launch_bounds__\((\w+)[^)]*\)\s*)?(?:__maxnreg__\([^)]*\)\s*)?"
    r"(\w+)\s*\(([^)]*)\)", re.S)
# the block sizes __launch_bounds__ names (tests/test_kernel_constants.py checks the values)
_BLOCK_CONSTANTS = {"SC_THREADS": simt.THREADS, "TC_THREADS": tc.TC_THREADS}


def _globals():
    """(launch bound, name, parameter text) of every __global__ in kernels/*.cu."""
    for filename in ("sepconv_simt.cu", "sepconv_tc.cu"):
        with open(os.path.join(kernel_cache.kernels_dir(), filename), encoding="utf-8") as fh:
            yield from _GLOBAL.findall(re.sub(r"//[^\n]*", "", fh.read()))


def launch_bounds():
    """{kernel name: the block size its __launch_bounds__ allows}."""
    return {name: int(_BLOCK_CONSTANTS.get(bound, bound)) for bound, name, _ in _globals()}


def kernel_parameters():
    """{kernel name: [(C++ type, is_pointer), ...]} for every __global__ in kernels/*.cu."""
    found = {}
    for _, name, params in _globals():
            parsed = []
            for param in params.split(","):
                declaration = " ".join(param.replace("__restrict__", "").split())
                pointer = "*" in declaration
                ctype = declaration.split("*")[0] if pointer else declaration.rsplit(" ", 1)[0]
                parsed.append((ctype.replace("const ", "").strip(), pointer))
            found[name] = parsed
    return found


def pointee_dtype(ctype, dtype):
    """The NumPy dtype of a kernel pointer parameter's element type, for input `dtype`."""
    t = {"float16": "__half", "float32": "float", "float64": "double"}[dtype]
    resolved = {
        "T": t,
        "typename sepconv::Acc<T>::type": "double" if t == "double" else "float",
        "typename sepconv::Tc<T>::Operand": t,  # half operands for half, float (tf32) for float
    }.get(ctype, ctype)
    return np.dtype({"__half": np.float16, "float": np.float32, "double": np.float64}[resolved])


def _case(shape, kernel, filters, dtype, activation):
    rank = len(shape) - 2
    x, dk, pk, b = random_case(np.random.default_rng(0), rank, shape, kernel, 1, filters, dtype)
    s, p, df, d = geometry.normalize_call_args(rank, 1, "same", "channels_last", 1)
    geom = geometry.make_geometry(rank, x.shape, dk.shape, pk.shape, b.shape, s, p, df, d)
    return x, dk, pk, b, geom, activations.get(activation)


# (shape, kernel, filters, dtype, activation, allow_tf32, kinds that must be launched)
CASES = [
    ((2, 9, 10, 6), 3, 20, "float32", "relu", False, {"simt"}),
    ((2, 9, 10, 6), (2, 4), 20, "float64", "softmax", False, {"simt", "softmax"}),
    ((2, 31, 5), 5, 7, "float16", "log_softmax", False, {"simt", "softmax"}),
    ((2, 19, 21, 64), 3, 72, "float16", "gelu", False, {"tc"}),
    ((2, 19, 21, 64), 3, 72, "float32", "elu", True, {"tc"}),
    ((1, 7, 7, 256), 3, 64, "float16", "relu", False, {"tc", "tc_reduce"}),
    ((1, 7, 7, 256), 3, 64, "float32", "softmax", True, {"tc", "tc_reduce", "softmax"}),
]


@pytest.mark.parametrize("shape,kernel,filters,dtype,activation,allow_tf32,kinds", CASES)
def test_launch_arguments_match_kernel_signatures(shape, kernel, filters, dtype, activation,
                                                  allow_tf32, kinds):
    signatures = kernel_parameters()
    x, dk, pk, b, geom, act = _case(shape, kernel, filters, dtype, activation)
    strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    launches, _ = launch_sequence(dtype, geom, act, strides, True, allow_tf32)
    assert {launch.kind for launch in launches} == kinds
    y, partial = np.empty(geom.output_shape, x.dtype), None
    for launch in launches:  # as cuda_backend._separable_conv does
        weights = (prepare_weights(np, launch.weights, dk, pk, b)
                   if launch.weights else None)
        if launch.partial:  # made by a split "tc" launch, read by its "tc_reduce"
            partial = np.empty(launch.partial, np.float32)
        args = launch_arrays(launch, x, weights, y, partial) + launch.scalars
        kernel_name = launch.name.split("<")[0]
        params = signatures[kernel_name]
        # a larger block fails to launch; the kernels' loops assume exactly this size
        assert launch.block == launch_bounds()[kernel_name], launch.name
        assert len(args) == len(params), (launch.name, len(args), len(params))
        for i, (arg, (ctype, pointer)) in enumerate(zip(args, params)):
            where = f"{launch.name} parameter {i} ({ctype}{' *' if pointer else ''})"
            if pointer:
                assert isinstance(arg, np.ndarray), where
                if launch.kind == "tc" and i == 5 and not launch.partial:
                    continue  # `partial` without a split: any valid pointer, never read
                assert arg.dtype == pointee_dtype(ctype, dtype), (where, arg.dtype)
            else:
                assert type(arg) is SCALAR_TYPES[ctype], (where, type(arg))


def test_every_kernel_is_parsed():
    names = kernel_parameters()
    assert set(names) == {"sepconv_simt", "sepconv_softmax_lastaxis", "sepconv_tc",
                          "sepconv_tc_reduce"}
    assert all(names.values())


# --- cuda_backend against a fake CuPy ----------------------------------------------------
# The fake takes arguments as CuPy's Cython signatures do (cupy/cuda/function.pyx,
# cupy_backends/cuda/api/driver.pyx, runtime.pyx) and records every call.

class _FakeFunction:
    def __init__(self, name, calls):
        # one handle per name, as a driver may hand a freed handle out again
        self.name, self.ptr, self.calls = name, hash(name) & 0xFFFFFF, calls

    def __call__(self, grid, block, args, shared_mem=0):
        assert isinstance(grid, tuple) and isinstance(block, tuple)  # `tuple grid, tuple block`
        self.calls.append(("launch", self.name, grid, block, tuple(args), shared_mem))


def _fake_cupy(compute_capability, driver_version=13000):
    calls = []

    class Module:
        def load(self, cubin):
            assert isinstance(cubin, bytes)  # `cpdef load(self, bytes cubin)`
            calls.append(("load", cubin))

        def get_function(self, name):
            calls.append(("get_function", name))
            return _FakeFunction(name, calls)

    class RawModule:
        def __init__(self, *, code, options=(), name_expressions=None):
            assert isinstance(code, str) and isinstance(options, tuple)
            calls.append(("RawModule", options, tuple(name_expressions)))

        def get_function(self, name):
            return types.SimpleNamespace(kernel=_FakeFunction(name, calls))

    class Device:
        def __init__(self, device_id=0):
            self.id = device_id
            self.compute_capability = compute_capability  # a string, e.g. "90"

    runtime = types.SimpleNamespace(
        CUDARuntimeError=type("CUDARuntimeError", (RuntimeError,), {}),
        getDevice=lambda: 0, driverGetVersion=lambda: driver_version,
        deviceGetAttribute=lambda attribute, device: calls.append(("attribute", attribute, device))
        or 232448)
    driver = types.SimpleNamespace(
        CUDADriverError=type("CUDADriverError", (RuntimeError,), {}),
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=8,
        funcSetAttribute=lambda ptr, attribute, value: calls.append(("setattr", ptr, attribute, value)))
    cuda = types.SimpleNamespace(runtime=runtime, driver=driver, Device=Device,
                                 function=types.SimpleNamespace(Module=Module))
    fake = types.ModuleType("cupy")
    fake.cuda, fake.RawModule, fake.ndarray, fake.calls = cuda, RawModule, type("ndarray", (), {}), calls
    return fake


@pytest.fixture
def fake_backend():
    """cuda_backend imported against a fake CuPy: (module, fake). `sys.modules` and the
    package's attribute are put back afterwards (`fake_cupy.installed`), so no later test
    sees the fake."""
    import contextlib
    import importlib

    from benchmarks import fake_cupy

    with contextlib.ExitStack() as stack:
        def load(compute_capability="90", driver_version=13000):
            fake = _fake_cupy(compute_capability, driver_version)
            stack.enter_context(fake_cupy.installed(fake))
            return importlib.import_module(fake_cupy._MODULE), fake

        yield load


def test_tensor_core_kernel_is_not_planned_below_sm80(fake_backend):
    """sepconv_tc needs sm_80 (cp.async): on sm_75 the planner gets no shared memory for it."""
    backend, cupy = fake_backend("75")
    assert backend._shared_memory_limit(0) == 0
    x, dk, pk, b, geom, act = _case((2, 19, 21, 64), 3, 72, "float16", "relu")
    strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    assert [launch.kind for launch in launch_sequence(
        "float16", geom, act, strides, True, smem_limit=0)[0]] == ["simt"]
    backend, cupy = fake_backend("90")
    assert backend._shared_memory_limit(0) == 232448
    assert cupy.calls == [("attribute", 97, 0)]  # cudaDevAttrMaxSharedMemoryPerBlockOptin


def _launch(shared_bytes, name="sepconv_tc<__half, 3, 3, 2>"):
    return Launch("tc", name, 7, 256, shared_bytes, (np.int32(1), np.float32(2)))


def fake_nvrtc(backend, monkeypatch, compiled=None):
    """Our NVRTC 13.0 (sm_75/80/90) on the fake backend. `compiled(names)`: what the kernel
    cache's library_kernels returns (None: it must not be called); the list it returns
    records each (names, arch) built."""
    from sepconv_gpu.backends.cuda import nvrtc

    toolkit = nvrtc.Toolkit(library="libnvrtc.so.13", include_dir="/include", version=(13, 0),
                            archs=(75, 80, 90), from_wheel=True)
    monkeypatch.setattr(backend._nvrtc, "toolkit", lambda: toolkit)
    built = []
    monkeypatch.setattr(backend._kernel_cache, "library_kernels", compiled and (
        lambda names, arch: built.append((names, arch)) or compiled(names)))
    return built


def test_launch_loads_the_cubin_and_opts_in_above_48_kb_once(fake_backend, monkeypatch):
    from sepconv_gpu.backends.cuda import nvrtc

    backend, cupy = fake_backend("90")
    built = fake_nvrtc(backend, monkeypatch, lambda names: nvrtc.Compiled(
        cubin=b"ELF", lowered={n: "_Z" + n.split("<")[0] for n in names}, log=""))
    arrays = ("x", "dw", "pw", "b", "y", "partial")
    backend._launch(_launch(100 * 1024), arrays)
    backend._launch(_launch(100 * 1024), arrays)
    backend._launch(_launch(40 * 1024, "sepconv_tc_reduce<__half>"), arrays[:3])
    assert built == [(("sepconv_tc<__half, 3, 3, 2>",), 90), (("sepconv_tc_reduce<__half>",), 90)]
    steps = [c[0] for c in cupy.calls]
    assert steps == ["load", "get_function", "attribute", "setattr", "launch", "launch",
                     "load", "get_function", "launch"]
    assert cupy.calls[1] == ("get_function", "_Zsepconv_tc")  # the lowered name, not the expression
    assert cupy.calls[2] == ("attribute", 97, 0)  # cudaDevAttrMaxSharedMemoryPerBlockOptin
    _, ptr, attribute, value = cupy.calls[3]
    # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, to the device's maximum (not the
    # launch's size, which another thread's smaller launch could lower)
    assert (attribute, value) == (8, 232448)
    _, _, grid, block, args, shared = cupy.calls[4]
    assert (grid, block, shared) == ((7,), (256,), 100 * 1024)
    assert args == arrays + (np.int32(1), np.float32(2))
    # reloaded (the cache cleared, the handle reused): the new Function opts in again
    backend._functions.clear()
    backend._launch(_launch(100 * 1024), arrays)
    assert [c[0] for c in cupy.calls[-4:]] == ["load", "get_function", "setattr", "launch"]


def test_cupy_compiles_when_nvrtc_is_newer_than_the_driver(fake_backend, monkeypatch):
    from sepconv_gpu.backends.cuda import nvrtc

    backend, cupy = fake_backend("90", driver_version=12040)
    fake_nvrtc(backend, monkeypatch)  # library_kernels must not be used
    monkeypatch.setattr(backend._kernel_cache, "kernel_source", lambda: "// the kernels")
    backend._launch(_launch(0), ("x",))
    assert cupy.calls[0] == ("RawModule", kernel_cache.NVRTC_OPTIONS, ("sepconv_tc<__half, 3, 3, 2>",))
    assert cupy.calls[1][0] == "launch"


@pytest.mark.parametrize("device_type,on_device", [(1, False), (2, True), (3, False), (13, True)])
def test_dlpack_device_types_are_those_cupy_imports(device_type, on_device):
    """cupy.from_dlpack takes kDLCUDA (2) and kDLCUDAManaged (13) only (cupy/_core/dlpack.pyx);
    pinned host memory (kDLCUDAHost, 3) must take the host path, not fail in CuPy."""
    from sepconv_gpu import backends

    class Exporter:
        def __dlpack__(self, stream=None):
            raise AssertionError("not read here")

        def __dlpack_device__(self):
            return (device_type, 0)

    assert backends.dlpack_on_cuda(Exporter()) is on_device
    assert backends.lives_on_device(Exporter()) is on_device


def test_a_fault_found_by_the_debug_synchronize_names_the_kernel(fake_backend, monkeypatch):
    """SEPCONV_GPU_DEBUG_SYNC=1: the stream's synchronize raises CUDARuntimeError (CuPy's
    runtime.streamSynchronize), which must come back naming the kernel like launch errors."""
    monkeypatch.setenv("SEPCONV_GPU_DEBUG_SYNC", "1")
    backend, cupy = fake_backend("75", driver_version=12040)  # CuPy compiles: no NVRTC needed
    monkeypatch.setattr(backend._kernel_cache, "kernel_source", lambda: "// the kernels")

    def synchronize():
        raise cupy.cuda.runtime.CUDARuntimeError("cudaErrorIllegalAddress")

    cupy.cuda.get_current_stream = lambda: types.SimpleNamespace(synchronize=synchronize)
    with pytest.raises(RuntimeError, match=r"sepconv_tc<__half, 3, 3, 2> .*cudaErrorIllegalAddress"):
        backend._launch(_launch(0), ("x",))
