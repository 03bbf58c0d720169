"""CUDA backend: CuPy arrays, one fused kernel launch per separable convolution (plus a
reduce launch where a tensor-core plan splits the channels, and one for softmax).

The kernels live in kernels/*.cu (see sepconv_simt.cu for the design). They are read
once and compiled lazily, one instantiation (name expression: dtype, layout, kernel
extent; the activation is a runtime argument) at a time on first use, to SASS for the
device's architecture by our own NVRTC binding (`nvrtc.py`, the wheel's libnvrtc). The
binaries are kept on disk by `kernel_cache.py` (`kernel_cache.cache_dir()`:
SEPCONV_GPU_CACHE_DIR, else $XDG_CACHE_HOME/sepconv_gpu, else ~/.cache/sepconv_gpu), so a later process loads them instead of compiling, and memoized
per device here. A device newer than every architecture our NVRTC knows gets PTX for the
newest one, which the driver JIT-compiles (`nvrtc.target`, said once in the log). Where our
NVRTC cannot serve the device (none found, newer than the driver, an older architecture it
does not know) CuPy's `RawModule` compiles instead, said once in the log. Launches go to
the caller's stream (CuPy's current stream; for torch CUDA tensors torch's current stream,
see `CupyOps.stream_scope`); a call never synchronizes (a weight upload waits for its
copy: `_uploaded`), prepared weights are ordered by an event across streams
(`_Prepared`), and a call of a seen signature neither compiles nor plans (`_call_plan`),
so it can be captured in a CUDA graph.

A call (`CupyOps._separable_conv`) asks `launch.launch_sequence` (CuPy-free, shared with
the host-emulation tests) what to launch, once per signature (`_call_plan`), and runs it
through `launch.run_launches`, the loop the emulator runs too, with CuPy allocations,
device weights (`_prepared_weights`) and loaded kernels (`_launch`).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import threading
from typing import NamedTuple

import cupy
import numpy as np

from ... import _dtypes
from ..._env import flag
from ..._nvtx import annotate
from .. import Ops, dlpack_on_cuda, identity
from . import autotune as _autotune
from . import kernel_cache as _kernel_cache
from . import kernel_common as _kernel_common
from . import nvrtc as _nvrtc
from .launch import input_element_strides, launch_sequence, prepare_weights, run_launches

# SEPCONV_GPU_DEBUG_SYNC=1: synchronize after every launch (debugging, sanitizer runs);
# off by default: the hot path never synchronizes.
_DEBUG_SYNC = flag("SEPCONV_GPU_DEBUG_SYNC")
_compile_lock = threading.Lock()
_functions = {}  # (device id, name expression) -> cupy.cuda.function.Function
_logger = logging.getLogger("sepconv_gpu")


def get_function(name, device=None):
    """The compiled kernel `name` (a name expression) for `device` (default: the current
    one): a `cupy.cuda.function.Function`, called as fn(grid, block, args, shared_mem=...);
    its `.ptr` is the CUfunction (for cupy.cuda.driver.funcSetAttribute)."""
    if device is None:
        device = cupy.cuda.runtime.getDevice()
    key = (device, name)
    fn = _functions.get(key)
    if fn is None:
        with _compile_lock:  # one compilation per key, even with many calling threads
            fn = _functions.get(key)
            if fn is None:
                fn = _functions[key] = _load_kernel(name, device)
    return fn


def _load_kernel(name, device):
    arch = _nvrtc_arch(cupy.cuda.Device(device).compute_capability)
    if arch is None:
        module = cupy.RawModule(code=_kernel_cache.kernel_source(),
                                options=_kernel_cache.NVRTC_OPTIONS,
                                name_expressions=(name,))
        return module.get_function(name).kernel  # the Function, as below
    compiled = _kernel_cache.library_kernels((name,), arch)
    module = cupy.cuda.function.Module()
    module.load(compiled.cubin)  # a CUBIN, or PTX (NUL-terminated) the driver JIT-compiles
    return module.get_function(compiled.lowered[name])


@functools.lru_cache(maxsize=None)
def _nvrtc_arch(compute_capability):
    """The SM version our NVRTC builds for on a device of this compute capability ("90"),
    or None where it cannot (then CuPy compiles; said once per compute capability)."""
    arch = int(compute_capability)
    try:
        toolkit = _nvrtc.toolkit()
    except _nvrtc.NvrtcNotFoundError as exc:
        reason = str(exc)
    else:
        driver = cupy.cuda.runtime.driverGetVersion()  # e.g. 12040 for CUDA 12.4
        if toolkit.version[0] > driver // 1000:  # its SASS would not load
            reason = (f"NVRTC {toolkit.version[0]}.{toolkit.version[1]} ({toolkit.library}) "
                      f"is newer than the driver's CUDA {driver // 1000}.{driver % 1000 // 10}")
        elif arch not in toolkit.archs and arch < max(toolkit.archs):  # newer: PTX
            reason = f"NVRTC {toolkit.version[0]}.{toolkit.version[1]} has no sm_{arch} target"
        else:
            return arch
    _logger.warning("sepconv_gpu: %s; CuPy compiles the kernels instead, without the "
                    "sepconv_gpu kernel cache", reason)
    return None


def _device_view(x):
    """A zero-copy CuPy view of a CUDA array-like (torch CUDA tensor, Numba array, any
    __cuda_array_interface__ / CUDA __dlpack__ object), or None for host data."""
    if isinstance(x, cupy.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()  # DLPack refuses tensors that require grad; we read values only
    if hasattr(x, "__dlpack__") and dlpack_on_cuda(x):
        # DLPack first: it orders the producer's stream before ours.
        try:
            return cupy.from_dlpack(x)
        except Exception as exc:
            if _dtypes.is_bfloat16(getattr(x, "dtype", "")):
                raise TypeError(
                    "sepconv_gpu CUDA backend: this CuPy cannot import bfloat16 arrays "
                    f"({type(exc).__name__}: {exc}); CuPy >= 14 with ml_dtypes installed "
                    "can (pip install 'sepconv_gpu[bf16]').") from exc
            raise
    if hasattr(x, "__cuda_array_interface__"):
        return cupy.asarray(x)
    return None


def _give_back_like(x):
    """Turns a CuPy result into the kind of the device input `x`, without a copy."""
    library = type(x).__module__.split(".")[0]
    if library == "torch":
        import torch

        return torch.from_dlpack
    if library == "numba":
        from numba import cuda

        return cuda.as_cuda_array
    from_dlpack = getattr(sys.modules.get(library), "from_dlpack", None)
    return from_dlpack if callable(from_dlpack) else identity


def _give_back_host(x):
    if type(x).__module__.split(".")[0] == "torch":  # a CPU tensor: a CPU tensor back
        import torch

        return lambda a: torch.from_numpy(cupy.asnumpy(a))
    return cupy.asnumpy


class CupyOps(Ops):
    """The CUDA backend (`Ops` says what each method does)."""

    name = "cuda"
    xp = cupy

    def owns(self, x):
        return isinstance(x, cupy.ndarray)

    def take(self, x):
        """x as a CuPy array and a function giving a result back in x's kind: NumPy in ->
        copy to the device, NumPy out; CuPy in -> as is; CUDA array-likes -> zero-copy."""
        if isinstance(x, cupy.ndarray):
            return x, identity
        if isinstance(x, np.ndarray):
            return cupy.asarray(x), cupy.asnumpy
        view = _device_view(x)
        if view is not None:
            return view, _give_back_like(x)
        return cupy.asarray(np.asarray(x)), _give_back_host(x)

    def asarray(self, a, dtype=None):
        """Weights onto the device, always a copy (as NumpyOps does), complete when it
        returns (`_uploaded`)."""
        view = _device_view(a)
        return _uploaded(cupy.array(view if view is not None else np.asarray(a), dtype=dtype,
                                    copy=True))

    def to_numpy(self, a):
        view = _device_view(a)
        return cupy.asnumpy(view) if view is not None else np.asarray(a)

    def stream_scope(self, x):
        """The context of one call with input `x`: kernels go to the caller's stream.
        CuPy's current stream serves as it is; for a torch CUDA tensor, torch's current
        stream becomes CuPy's current one for the call (`_TorchScope`)."""
        if type(x) is not cupy.ndarray and type(x).__module__.split(".")[0] == "torch" \
                and getattr(x, "is_cuda", False):
            return _TorchScope(x.device)
        return _SAME_STREAM

    def separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                       weights_cache=None, unrounded=False):
        """y = act(bias + pointwise(depthwise(x))) as a CuPy array of x's dtype (float32
        for a float16/bfloat16 x when `unrounded`), computed on x's device (x: a CuPy
        array, as `take` gave it to ops)."""
        with annotate("sepconv_gpu.cuda.separable_conv"), x.device:
            return self._separable_conv(x, depthwise, pointwise, bias, geom, activation,
                                        allow_tf32, weights_cache, unrounded)

    def _separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                        weights_cache=None, unrounded=False):
        activated_after = unrounded or not _kernel_common.kernels_apply(activation.kernel_id)
        if x.dtype.itemsize == 2 and activated_after:
            # float16/bfloat16 kernels round in their epilogue, so an activation that runs
            # after them would see rounded values: the float32 kernels write the float32
            # result instead, the activation runs on it, and it is rounded once. They read
            # a float32 copy of x with TF32 tensor cores allowed: the half values are exact
            # in TF32, which rounds the weights and the depthwise result no coarser than
            # the float16/bfloat16 tensor-core kernel does.
            _kernel_common.check_dtype(x.dtype.name)  # a dtype without kernels is refused
            y = self._separable_conv(x.astype(cupy.float32), depthwise, pointwise, bias, geom,
                                     activation, True, weights_cache)
            return y if unrounded else y.astype(x.dtype)
        signature = (x.dtype, geom, activation.kernel_id, activation.kernel_param, x.strides,
                     bias is not None, bool(allow_tf32), x.data.ptr % 16 == 0, x.device.id)
        plan = _call_plan(*signature)
        if plan.copy_input:  # byte strides that are not whole elements: copy once
            x = cupy.ascontiguousarray(x)
        y = _empty(geom.output_shape, x.dtype)
        if y.size == 0:
            return y
        weights = (depthwise, pointwise, bias)
        if _autotune.get_autotune():  # the first call of a signature times the candidates
            plan = _tuned(signature, plan, x, y, weights, weights_cache)
        _run(plan, x, y, weights, weights_cache)
        if plan.apply_after:  # an activation without a kernel variant (any callable)
            y = activation(y)
            if not isinstance(y, cupy.ndarray) or y.dtype != x.dtype:
                y = cupy.asarray(y, dtype=x.dtype)
        return y


def _run(plan, x, y, weights, weights_cache):
    """Enqueues the launches of `plan` (a `_CallPlan`) on x and y (weights: the user's
    depthwise, pointwise, bias) through the shared launch loop."""
    run_launches(
        plan.launches, x, y,
        prepare=lambda layout: _prepared_weights(layout, *weights, x.device, weights_cache),
        empty=lambda n: _empty((n,), cupy.float32),
        launch_one=lambda launch, arrays: _launch(launch, arrays, plan.functions[launch.name]))


def _tuned(signature, default, x, y, weights, weights_cache):
    """The call plan autotuning picks for this signature (autotune.py): timed on its first
    call in this process (or read from the on-disk choices), a dict lookup after that."""
    device_id = signature[-1]
    call = default.call  # launch_sequence's arguments
    # candidates time kernels alone, weights prepared once, as a layer call runs them
    cache = {} if weights_cache is None else weights_cache

    def run(p):  # autotune compares each candidate's output with the reference plan's
        _run(_call_plan(*signature, plan=p), x, y, weights, cache)
        return y

    chosen = _autotune.plan_for(_device_name(device_id), *call, clock=_event_seconds, run=run)
    return default if chosen is None else _call_plan(*signature, plan=chosen)


@functools.lru_cache(maxsize=None)
def _device_name(device_id):
    """The device's name, e.g. "NVIDIA H100 80GB HBM3" (autotune's key)."""
    name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _event_seconds(body):
    """Seconds `body()`'s launches take on the current stream, by CUDA events (autotune's
    clock; it synchronizes, which only the first call of a shape pays)."""
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    body()
    end.record()
    try:  # where a fault of the launches timed surfaces
        end.synchronize()
    except (cupy.cuda.driver.CUDADriverError, cupy.cuda.runtime.CUDARuntimeError) as exc:
        raise _cuda_failure(f"sepconv_gpu: the timed launches failed: {exc}", exc) from exc
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


class _CallPlan(NamedTuple):
    launches: tuple      # launch.Launch, in order
    functions: dict      # Launch.name -> its loaded Function
    apply_after: bool    # the activation runs after the kernels (no kernel variant)
    copy_input: bool     # x's byte strides are not whole elements: launch on a copy
    call: tuple          # launch_sequence's arguments (autotune times other plans of it)


@functools.lru_cache(maxsize=256)
def _call_plan(dtype, geom, kernel_id, kernel_param, byte_strides, has_bias, allow_tf32,
               x_aligned, device_id, plan=None):
    """Everything a call derives from its signature (dtype, geometry, activation, strides,
    bias, TF32, alignment, device): the checked launch sequence with its packed scalar
    arguments and the loaded kernels. A small LRU: a call of a seen signature pays one
    lookup; a failing signature is never cached (its error is raised on every call); the
    first call of a signature compiles or loads its kernels, later ones (and CUDA graph
    captures) never do."""
    itemsize = dtype.itemsize
    shape = geom.input_shape
    x_strides = input_element_strides(shape, byte_strides, itemsize, geom)
    copy_input = x_strides is None
    if copy_input:  # the contiguous copy's strides
        contiguous = [itemsize]
        for n in reversed(shape[1:]):
            contiguous.insert(0, contiguous[0] * n)
        x_strides = input_element_strides(shape, contiguous, itemsize, geom)
        x_aligned = True  # a fresh allocation
    # NumPy's name is the catalogue's ("bfloat16" for ml_dtypes' bfloat16, which CuPy >= 14
    # uses; torch's bfloat16 arrives as that through DLPack); launch_sequence refuses a
    # dtype the catalogue has no kernel for, before anything is allocated or launched
    call = (dtype.name, geom, _KernelActivation(kernel_id, kernel_param), x_strides, has_bias,
            allow_tf32, x_aligned, _shared_memory_limit(device_id))
    launches, apply_after = launch_sequence(*call, plan=plan, sms=_sm_count(device_id))
    functions = {}
    for launch in launches:
        try:
            functions[launch.name] = get_function(launch.name, device_id)
        except (cupy.cuda.driver.CUDADriverError, cupy.cuda.runtime.CUDARuntimeError) as exc:
            raise _kernel_error(launch, exc) from exc
    return _CallPlan(launches, functions, apply_after, copy_input, call)


class _KernelActivation(NamedTuple):
    """What launch_sequence reads of an activation."""
    kernel_id: str
    kernel_param: float


class _TorchScope:
    """A call on torch CUDA tensors: torch's current stream is CuPy's current stream, so
    DLPack's stream handshake (`cupy.from_dlpack` in, `torch.from_dlpack` out) needs no
    event and every kernel is ordered with the torch work around it; outputs come from
    torch's allocator (stream-ordered, and `torch.cuda.graph`'s pool while it captures)."""

    def __init__(self, device):
        import torch

        self._stream = _external_stream(torch.cuda.current_stream(device).cuda_stream,
                                        device.index)
        self._device = device

    def __enter__(self):
        self._token = _torch_device.set(self._device)
        self._stream.__enter__()
        return self

    def __exit__(self, *exc):
        self._stream.__exit__(*exc)
        _torch_device.reset(self._token)


_SAME_STREAM = contextlib.nullcontext()  # reusable
_torch_device = contextvars.ContextVar("sepconv_gpu_torch_device", default=None)


@functools.lru_cache(maxsize=64)
def _external_stream(ptr, device_id):
    """CuPy's view of a stream handle (ExternalStream owns nothing, so one per handle)."""
    return cupy.cuda.ExternalStream(ptr, device_id)


def _empty(shape, dtype):
    """A new device array: from torch's allocator inside a torch call, else CuPy's current
    allocator (for CUDA graph capture, a stream-ordered one: cupy.cuda.MemoryAsyncPool)."""
    device = _torch_device.get()
    if device is None:
        return cupy.empty(shape, dtype=dtype)
    import torch

    tensor = torch.empty(shape, dtype=getattr(torch, cupy.dtype(dtype).name), device=device)
    return cupy.from_dlpack(tensor)


_DEFAULT_SHARED_LIMIT = 48 * 1024
# sepconv_tc's cp.async and mma.m16n8k16 need sm_80; NVRTC still targets sm_75 (Turing).
TENSOR_CORE_MIN_ARCH = 80


@functools.lru_cache(maxsize=None)
def _shared_memory_limit(device_id):
    """Dynamic shared memory one block of the tensor-core kernel may opt in to on this
    device (the planner's smem_limit); 0 below sm_80, which no tensor-core tile fits, so
    every launch there runs the SIMT kernel."""
    if int(cupy.cuda.Device(device_id).compute_capability) < TENSOR_CORE_MIN_ARCH:
        return 0
    return _shared_memory_opt_in_limit(device_id)


@functools.lru_cache(maxsize=None)
def _shared_memory_opt_in_limit(device_id):
    """The most dynamic shared memory a block may opt in to on this device."""
    attribute = getattr(cupy.cuda.runtime, "cudaDevAttrMaxSharedMemoryPerBlockOptin", 97)
    return cupy.cuda.runtime.deviceGetAttribute(attribute, device_id)


@functools.lru_cache(maxsize=None)
def _sm_count(device_id):
    """Streaming multiprocessors of this device (sizes the grid-stride reduce launch)."""
    attribute = getattr(cupy.cuda.runtime, "cudaDevAttrMultiProcessorCount", 16)
    return cupy.cuda.runtime.deviceGetAttribute(attribute, device_id)


def _launch(launch, arrays, fn=None):
    fn = get_function(launch.name) if fn is None else fn
    try:
        if launch.shared_bytes > _DEFAULT_SHARED_LIMIT and fn not in _shared_opt_in:
            _opt_in_shared_memory(fn)
        fn((launch.grid,), (launch.block,), arrays + launch.scalars,
           shared_mem=launch.shared_bytes)
        if _DEBUG_SYNC:  # surface asynchronous faults at the launch that caused them
            cupy.cuda.get_current_stream().synchronize()
    except (cupy.cuda.driver.CUDADriverError, cupy.cuda.runtime.CUDARuntimeError) as exc:
        # driver: load, opt-in, launch; runtime: the debug synchronize (a fault in the kernel)
        raise _kernel_error(launch, exc) from exc


# The loaded Functions that opted in to the device's whole dynamic shared memory. Keyed by
# the object, not its CUfunction handle: the reference keeps the module loaded, so a
# handle freed by clearing _functions cannot come back for another kernel that never
# opted in. A Function belongs to one device (`_functions` is keyed by device).
_shared_opt_in = set()
_opt_in_lock = threading.Lock()


def _opt_in_shared_memory(fn):
    """Above 48 KB a kernel must opt in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
    Once per Function, to the device's maximum and under a lock: an opt-in to each
    launch's own size would let a thread launching a smaller plan lower it under another
    thread between that one's opt-in and its launch (which then fails)."""
    with _opt_in_lock:
        if fn not in _shared_opt_in:
            cupy.cuda.driver.funcSetAttribute(
                fn.ptr, getattr(cupy.cuda.driver, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8),
                _shared_memory_opt_in_limit(cupy.cuda.runtime.getDevice()))
            _shared_opt_in.add(fn)


def _kernel_error(launch, exc):
    return _cuda_failure(
        f"sepconv_gpu: kernel {launch.name} (grid {launch.grid}, block {launch.block}, "
        f"{launch.shared_bytes} B shared memory) failed: {exc}", exc)


# CUDA errors after which the context is unusable until the process ends (sticky; the same
# numbers in the runtime and the driver API): ECC uncorrectable 214, illegal address 700,
# launch timeout 702, device assert 710, hardware stack error 714, illegal instruction 715,
# misaligned address 716, invalid address space 717, invalid PC 718, launch failure 719
_STICKY_CUDA_ERRORS = frozenset({214, 700, 702, 710, 714, 715, 716, 717, 718, 719})


def _cuda_failure(message, exc):
    """The error to raise for CuPy's CUDA error `exc`: `autotune.DeviceFault` where the
    context is lost (autotuning must stop there), else a RuntimeError."""
    sticky = getattr(exc, "status", None) in _STICKY_CUDA_ERRORS
    return (_autotune.DeviceFault if sticky else RuntimeError)(message)


def _prepared_weights(layout, depthwise, pointwise, bias, device, cache):
    """(depthwise, pointwise, bias) in the kernel's `layout` on `device`
    (`launch.prepare_weights`), ordered before the current stream's next launch. With a
    cache (the layer's immutable weight snapshot owns it) they are prepared once per
    layout and device, on the stream of the first call, and a call on another stream
    waits for that preparation (`_Prepared`); without one (ops-level calls with the user's
    arrays, which may change between calls) on every call, on the caller's stream."""
    key = (layout, device.id)
    entry = None if cache is None else cache.get(key)
    if entry is not None:
        return entry.ordered()
    prepared = prepare_weights(
        cupy, layout, _on_device(depthwise, device), _on_device(pointwise, device),
        None if bias is None else _on_device(bias, device))
    if cache is not None:  # a racing thread may prepare the same arrays: harmless
        cache[key] = _Prepared.record(prepared)
    return prepared


class _Prepared(NamedTuple):
    """Prepared weights shared by the calls of one weight snapshot, which may come from
    any thread and stream: the stream that prepared them and an event recorded there
    right after (device-side ordering; nothing here waits on the host)."""
    weights: tuple
    stream: int        # the preparing stream's handle
    ready: object      # cupy.cuda.Event recorded on it after the preparation

    @classmethod
    def record(cls, weights):
        stream = cupy.cuda.get_current_stream()
        ready = cupy.cuda.Event(disable_timing=True)
        ready.record(stream)
        return cls(weights, stream.ptr, ready)

    def ordered(self):
        """The weights, for a launch on the current stream: on the preparing stream stream
        order suffices (the fast path: one comparison); another stream waits for the
        event on the device. Not while it captures a CUDA graph: CUDA refuses a
        dependency on work outside the capture (cudaErrorStreamCaptureIsolation), and
        the warm-up call that prepared them is done once the capturer synchronizes before
        capturing, as torch.cuda.graph does."""
        stream = cupy.cuda.get_current_stream()
        if stream.ptr != self.stream and not stream.is_capturing():
            stream.wait_event(self.ready)
        return self.weights


def _uploaded(array):
    """`array`, a new weight copied onto the device on the current stream, once the copy
    is done: weights are written rarely (build, set_weights, assign, constraints), then
    read by calls on any stream or thread, which stream order alone would not order after
    an upload on another stream (CuPy copies from the host asynchronously)."""
    cupy.cuda.get_current_stream().synchronize()
    return array


def _on_device(a, device):
    """`a` as a CuPy array on `device` (the current one), without a copy when it is one."""
    view = _device_view(a)
    if view is None:
        return cupy.asarray(np.asarray(a))
    if view.device != device:
        view = cupy.array(view, copy=True)  # made on the current (x's) device
    return view
