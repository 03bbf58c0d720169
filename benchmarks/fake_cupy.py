"""A fake CuPy on the host: `cuda_backend` imported against it runs its whole launch path
on a machine without a GPU, and the fake records what a real device would be asked to do.

Arrays are NumPy arrays of a subclass (`ndarray`) that says it lives on "device 0"; every
array the fake makes is recorded as an allocation on the current stream, every
synchronize, host<->device copy and kernel load as what it is, every event recorded
and waited for with its stream, and every launch with its grid, block, arguments and
stream. Streams keep CuPy's current-stream stack (`with
stream:`) and its capture API (`begin_capture` / `end_capture`); while a stream captures,
a synchronize or a kernel load fails as CUDA's would. By default kernels never run: a
launch is only recorded (and timestamped: `last_launch_ns`), which is what the
host-overhead benchmark (benchmarks/host_overhead.py) and the CPU tests of graph capture
and streams read.

The stand-in (`make(emulator=...)`, `load_backend(emulator=...)`): every launch, still
recorded, also runs on a host emulator of the kernels (tests/_cuda_host_emulator.py's
`HostEmulator`, or anything with its `launch`), and every new array starts as 0xFF bytes
(NaN in every float type), so `cuda_backend` computes real numbers on the CPU and an
element no kernel wrote shows. This is how the emulated tests and the GPU check's dry run
run the backend's own call path with only the bottom swapped.

`load_backend()` imports a fresh `sepconv_gpu.backends.cuda.cuda_backend` bound to a fake,
leaving `sys.modules` as it found it.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import sys
import threading
import time
import types

import numpy as np

_MODULE = "sepconv_gpu.backends.cuda.cuda_backend"


class CaptureError(RuntimeError):
    """What CUDA answers a synchronizing or loading call made while a stream captures."""


def make(compute_capability="90", arena_bytes=0, emulator=None):
    """A fake `cupy` module. arena_bytes > 0: new arrays share one preallocated buffer
    (their values are garbage; for timing the launch path without the cost of a host
    allocation per call). emulator: the stand-in (see the module docstring)."""
    fake = types.ModuleType("cupy")
    fake.calls = []          # (what, ...) in order; see the module docstring
    fake.record = True       # False: keep only the launch timestamp (timing loops)
    fake.last_launch_ns = 0
    arena = np.empty(arena_bytes, np.uint8) if arena_bytes else None
    local = threading.local()

    def note(*entry):
        if fake.record:
            fake.calls.append(entry)

    def capturing():
        return any(s.capturing for s in _stack())

    def _stack():
        if not hasattr(local, "streams"):
            local.streams = []
        return local.streams

    class Stream:
        null = None

        def __init__(self, non_blocking=False, ptr=None):
            self.ptr = ptr if ptr is not None else id(self) & 0xFFFFFFFF
            self.capturing = False

        def __enter__(self):
            _stack().append(self)
            return self

        def __exit__(self, *exc):
            _stack().pop()

        def synchronize(self):
            note("sync", "stream", self.ptr)
            if capturing():
                raise CaptureError("cudaErrorStreamCaptureUnsupported: synchronize while capturing")

        def begin_capture(self, mode=None):
            self.capturing = True
            note("begin_capture", self.ptr)

        def end_capture(self):
            self.capturing = False
            note("end_capture", self.ptr)
            return types.SimpleNamespace(stream=self.ptr)

        def is_capturing(self):
            return self.capturing

        def wait_event(self, event):
            note("wait_event", self.ptr, event.id)

    class Event:
        """A CUDA event: records where it was recorded (`record`) and when (for
        get_elapsed_time); `synchronize` is a host wait, recorded as one."""
        _ids = iter(range(1, 1 << 62))

        def __init__(self, block=False, disable_timing=False, interprocess=False):
            self.id, self.stream, self.ns = next(Event._ids), None, 0

        def record(self, stream=None):
            self.stream = (get_current_stream() if stream is None else stream).ptr
            self.ns = time.perf_counter_ns()
            note("event_record", self.id, self.stream)

        def synchronize(self):
            note("sync", "event", self.id)
            if capturing():
                raise CaptureError("cudaErrorStreamCaptureUnsupported: event synchronize while capturing")

        @property
        def done(self):
            return True

    class ExternalStream(Stream):
        def __init__(self, ptr, device_id=-1):
            super().__init__(ptr=ptr)
            self.device_id = device_id

    Stream.null = Stream(ptr=0)

    def get_current_stream(device_id=-1):
        stack = _stack()
        return stack[-1] if stack else Stream.null

    class Device:
        def __init__(self, device_id=0):
            self.id = device_id
            self.compute_capability = compute_capability

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

        def __hash__(self):
            return self.id

        def synchronize(self):
            note("sync", "device", self.id)
            if capturing():
                raise CaptureError("cudaErrorStreamCaptureUnsupported: device synchronize while capturing")

    _device0 = Device(0)

    class ndarray(np.ndarray):
        @property
        def data(self):
            return types.SimpleNamespace(ptr=self.ctypes.data)

        @property
        def device(self):
            return _device0

        @property
        def __cuda_array_interface__(self):
            return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                    "data": (self.ctypes.data, False), "strides": self.strides}

        def get(self):
            return asnumpy(self)

    def _new(a):
        """A host result (of where / isfinite) as a device array."""
        return np.asarray(a).view(ndarray)

    def _alloc(shape, dtype):
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)  # as CuPy
        nbytes = math.prod(shape) * dtype.itemsize
        note("alloc", nbytes, get_current_stream().ptr)
        if arena is not None and nbytes <= arena.nbytes:
            return np.ndarray(shape, dtype, buffer=arena).view(ndarray)
        out = np.empty(shape, dtype).view(ndarray)
        if emulator is not None:
            _poison(out)
        return out

    def empty(shape, dtype=np.float64):
        return _alloc(shape, dtype)

    def zeros(shape, dtype=np.float64):
        out = _alloc(shape, dtype)
        out.fill(0)
        return out

    def asarray(a, dtype=None):
        if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        if not isinstance(a, ndarray):
            note("h2d", np.asarray(a).nbytes)  # cudaMemcpy from pageable host memory: blocks
            if capturing():
                raise CaptureError("cudaErrorStreamCaptureUnsupported: host copy while capturing")
        host = np.asarray(a, dtype=dtype)
        out = _alloc(host.shape, host.dtype)
        out[...] = host
        return out

    def array(a, dtype=None, copy=True):
        out = asarray(a, dtype)
        if out is a:
            out = _alloc(a.shape, a.dtype)
            out[...] = a
        return out

    def ascontiguousarray(a, dtype=None):
        a = asarray(a, dtype)
        if a.flags.c_contiguous:
            return a
        out = _alloc(a.shape, a.dtype)
        out[...] = a
        return out

    def asnumpy(a):
        note("d2h", np.asarray(a).nbytes)  # a blocking copy: synchronizes the stream
        if capturing():
            raise CaptureError("cudaErrorStreamCaptureUnsupported: device-to-host copy while capturing")
        return np.array(np.asarray(a), copy=True)

    def from_dlpack(x):
        stream = get_current_stream().ptr
        capsule = x.__dlpack__(stream=stream if stream else 1)  # 1: the legacy default stream
        note("from_dlpack", stream)
        return capsule.view(ndarray) if isinstance(capsule, np.ndarray) else capsule

    class Function:
        def __init__(self, name):
            self.name, self.ptr = name, hash(name) & 0xFFFFFF

        def __call__(self, grid, block, args, shared_mem=0, stream=None):
            assert isinstance(grid, tuple) and isinstance(block, tuple)
            fake.last_launch_ns = time.perf_counter_ns()
            stream = get_current_stream() if stream is None else stream
            note("launch", self.name, grid, block, tuple(args), shared_mem, stream.ptr)
            if emulator is not None:
                _emulate(emulator, self.name, grid, block, args, shared_mem)

    def load_kernel(name, device):
        """Stands in for cuda_backend._load_kernel (NVRTC or CuPy compiling)."""
        note("compile", name)
        if capturing():
            raise CaptureError(f"cudaErrorStreamCaptureUnsupported: loading {name} while capturing")
        return Function(name)

    def device_synchronize():
        _device0.synchronize()

    class CudaError(RuntimeError):
        """CuPy's CUDARuntimeError / CUDADriverError: built from a status code, kept as
        `.status` (e.g. 700, illegal address: sticky; 701, too many resources: not)."""

        def __init__(self, status):
            self.status = status
            super().__init__(f"CUDA error {status}")

    runtime = types.SimpleNamespace(
        CUDARuntimeError=type("CUDARuntimeError", (CudaError,), {}),
        getDevice=lambda: 0, getDeviceCount=lambda: 1, driverGetVersion=lambda: 13000,
        deviceGetAttribute=lambda attribute, device: _ATTRIBUTES.get(attribute, 232448),
        getDeviceProperties=lambda device: {"name": b"Fake GPU"},
        deviceSynchronize=device_synchronize)
    driver = types.SimpleNamespace(
        CUDADriverError=type("CUDADriverError", (CudaError,), {}),
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=8,
        funcSetAttribute=lambda ptr, attribute, value: note("setattr", ptr, attribute, value))
    fake.cuda = types.SimpleNamespace(
        runtime=runtime, driver=driver, Device=Device, Stream=Stream, ExternalStream=ExternalStream,
        get_current_stream=get_current_stream, Event=Event,
        get_elapsed_time=lambda start, end: (end.ns - start.ns) / 1e6,
        function=types.SimpleNamespace(Module=None, Function=Function))
    fake.ndarray, fake.empty, fake.zeros, fake.asarray, fake.array = ndarray, empty, zeros, asarray, array
    fake.ascontiguousarray, fake.asnumpy, fake.from_dlpack = ascontiguousarray, asnumpy, from_dlpack
    fake.load_kernel, fake.CaptureError = load_kernel, CaptureError
    fake.dtype = np.dtype
    for name in ("float16", "float32", "float64", "uint32", "int32", "int64"):
        setattr(fake, name, getattr(np, name))
    fake.where = lambda *a: _new(np.where(*a))
    fake.isfinite = lambda a: _new(np.isfinite(a))
    if emulator is not None:  # the rest of CuPy's array API is NumPy's, on host memory
        fake.__getattr__ = lambda name: getattr(np, name)
    return fake


# --- the stand-in: launches executed by a host emulator ----------------------------------

# deviceGetAttribute's answers, an H100 SXM's; any other attribute answers 232448
_ATTRIBUTES = {97: 232448,   # cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KB (sm_90)
               16: 132}      # cudaDevAttrMultiProcessorCount


def _poison(a):
    """Fills a new array with 0xFF bytes: NaN in every float type, as the emulator's
    shared memory starts, so an output no kernel writes is seen."""
    a.view(np.uint8).fill(0xFF)


def _emulate(emulator, name, grid, block, args, shared_mem):
    """One launch on the host emulator: cuda_backend launches 1-D grids and blocks, its
    arrays are this fake's (host memory), its scalars NumPy's."""
    (blocks,), (threads,) = grid, block
    emulator.launch(name, blocks, threads, list(args), shared_mem)


def load_backend(compute_capability="90", arena_bytes=0, emulator=None):
    """(a fresh cuda_backend module bound to a new fake CuPy, the fake). Kernels "compile"
    through `fake.load_kernel`; `sys.modules` is restored, so nothing else sees the fake.
    emulator: the stand-in, whose launches run on it (see the module docstring)."""
    fake = make(compute_capability, arena_bytes, emulator)
    with installed(fake):
        backend = importlib.import_module(_MODULE)
    backend._load_kernel = fake.load_kernel
    return backend, fake


@contextlib.contextmanager
def installed(fake, backend=None):
    """Within the block `import cupy` gives `fake`, and `sepconv_gpu.backends.cuda.cuda_backend`
    gives `backend` (None: nothing, so that an import binds a fresh one to the fake);
    `sys.modules` and the package's attribute are restored after it. The attribute is
    set on the module's own package, backends.cuda, where `from sepconv_gpu.backends.cuda
    import cuda_backend` looks first (an import leaves the last module loaded there)."""
    import sepconv_gpu.backends.cuda as package

    saved = {name: sys.modules.get(name) for name in ("cupy", _MODULE)}
    saved_attribute = package.__dict__.get("cuda_backend")
    sys.modules["cupy"] = fake
    sys.modules.pop(_MODULE, None)
    if backend is not None:
        sys.modules[_MODULE] = package.cuda_backend = backend
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if saved_attribute is None:
            package.__dict__.pop("cuda_backend", None)
        else:
            package.cuda_backend = saved_attribute
