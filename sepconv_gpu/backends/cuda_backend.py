"""CUDA backend: CuPy arrays, one fused kernel launch per separable convolution.

The kernels live in kernels/*.cu (see sepconv_fused.cu for the design). They are read
once and compiled lazily, one instantiation (name expression: dtype, layout, kernel
extent; the activation is a runtime argument) at a time on first use, to SASS for the
device's architecture by our own NVRTC binding (`nvrtc.py`, the wheel's libnvrtc). The
binaries are kept on disk by `kernel_cache.py` (SEPCONV_GPU_CACHE_DIR, default
~/.cache/sepconv_gpu), so a later process loads them instead of compiling, and memoized
per device here. Where our NVRTC cannot serve the device (none found, newer than the
driver, an architecture it does not know) CuPy's `RawModule` compiles instead, said once
in the log. Launches go to CuPy's current stream; nothing here synchronizes.

What is launched is decided by `cuda_kernels.launch_sequence`, which is CuPy-free and
shared with the host-emulation tests.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading

import cupy
import numpy as np

from .._nvtx import annotate
from . import cuda_kernels as _kernels
from . import dlpack_on_cuda, identity
from . import kernel_cache as _kernel_cache
from . import nvrtc as _nvrtc

# SEPCONV_GPU_DEBUG_SYNC=1: synchronize after every launch (debugging, sanitizer runs);
# off by default: the hot path never synchronizes.
_DEBUG_SYNC = os.environ.get("SEPCONV_GPU_DEBUG_SYNC", "") not in ("", "0")
_compile_lock = threading.Lock()
_functions = {}  # (device id, name expression) -> cupy.cuda.function.Function
_logger = logging.getLogger("sepconv_gpu")


def get_function(name):
    """The compiled kernel `name` (a name expression) for the current device: a
    `cupy.cuda.function.Function`, called as fn(grid, block, args, shared_mem=...); its
    `.ptr` is the CUfunction (for cupy.cuda.driver.funcSetAttribute)."""
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
        module = cupy.RawModule(code=_kernels.source(), options=_kernels.NVRTC_OPTIONS,
                                name_expressions=(name,))
        return module.get_function(name).kernel  # the Function, as below
    compiled = _kernel_cache.library_kernels((name,), arch)
    module = cupy.cuda.function.Module()
    module.load(compiled.cubin)
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
        elif arch not in toolkit.archs:
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
        return cupy.from_dlpack(x)
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


class CupyOps:
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
        """Weights onto the device, always a copy (as NumpyOps does)."""
        view = _device_view(a)
        return cupy.array(view if view is not None else np.asarray(a), dtype=dtype, copy=True)

    def to_numpy(self, a):
        view = _device_view(a)
        return cupy.asnumpy(view) if view is not None else np.asarray(a)

    def separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                       weights_cache=None):
        """y = act(bias + pointwise(depthwise(x))) as a CuPy array of x's dtype."""
        with annotate("sepconv_gpu.cuda.separable_conv"):
            x = self.take(x)[0]
            with x.device:
                return self._separable_conv(x, depthwise, pointwise, bias, geom, activation,
                                            allow_tf32, weights_cache)

    def _separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                        weights_cache=None):
        dtype = x.dtype.name
        if dtype not in _kernels.DTYPES:
            raise TypeError(f"sepconv_gpu CUDA backend: unsupported input dtype {dtype}; "
                            f"expected one of {tuple(_kernels.DTYPES)}.")
        y = cupy.empty(geom.output_shape, dtype=x.dtype)
        if y.size == 0:
            return y
        x_strides = _kernels.input_element_strides(x.shape, x.strides, x.itemsize, geom)
        if x_strides is None:  # byte strides that are not whole elements: copy once
            x = cupy.ascontiguousarray(x)
            x_strides = _kernels.input_element_strides(x.shape, x.strides, x.itemsize, geom)
        launches, apply_after = _kernels.launch_sequence(
            dtype, geom, activation, x_strides, bias is not None, allow_tf32,
            x_aligned=x.data.ptr % 16 == 0, smem_limit=_shared_memory_limit(x.device.id))
        weights = partial = None
        for launch in launches:
            if launch.weights and weights is None:
                weights = _prepared_weights(launch.weights, depthwise, pointwise, bias,
                                            x.device, weights_cache)
            if launch.partial:
                partial = cupy.empty(launch.partial, dtype=cupy.float32)
            _launch(launch, _kernels.launch_arrays(launch, x, weights, y, partial))
        if apply_after:  # an activation without a kernel variant (any callable)
            y = activation(y)
            if not isinstance(y, cupy.ndarray) or y.dtype != x.dtype:
                y = cupy.asarray(y, dtype=x.dtype)
        return y


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
    attribute = getattr(cupy.cuda.runtime, "cudaDevAttrMaxSharedMemoryPerBlockOptin", 97)
    return cupy.cuda.runtime.deviceGetAttribute(attribute, device_id)


# Function -> dynamic shared bytes it may use. Keyed by the object, not its CUfunction
# handle: the reference keeps the module loaded, so a handle freed by clearing
# _functions cannot come back for another kernel that never opted in.
_shared_opt_in = {}


def _launch(launch, arrays):
    fn = get_function(launch.name)
    try:
        if launch.shared_bytes > max(_DEFAULT_SHARED_LIMIT, _shared_opt_in.get(fn, 0)):
            # above 48 KB a kernel must opt in (cudaFuncAttributeMaxDynamicSharedMemorySize)
            cupy.cuda.driver.funcSetAttribute(
                fn.ptr, getattr(cupy.cuda.driver, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8),
                launch.shared_bytes)
            _shared_opt_in[fn] = launch.shared_bytes
        fn((launch.grid,), (launch.block,), arrays + launch.scalars,
           shared_mem=launch.shared_bytes)
        if _DEBUG_SYNC:  # surface asynchronous faults at the launch that caused them
            cupy.cuda.get_current_stream().synchronize()
    except (cupy.cuda.driver.CUDADriverError, cupy.cuda.runtime.CUDARuntimeError) as exc:
        # driver: load, opt-in, launch; runtime: the debug synchronize (a fault in the kernel)
        raise RuntimeError(
            f"sepconv_gpu: kernel {launch.name} (grid {launch.grid}, block {launch.block}, "
            f"{launch.shared_bytes} B shared memory) failed: {exc}") from exc


def _prepared_weights(layout, depthwise, pointwise, bias, device, cache):
    """(depthwise, pointwise, bias) in the kernel's `layout` on `device`
    (`cuda_kernels.prepare_weights`). With a cache (the layer's immutable weight snapshot
    owns it) they are prepared once per layout and device; without one (ops-level calls
    with the user's arrays, which may change between calls) on every call."""
    key = (layout, device.id)
    prepared = None if cache is None else cache.get(key)
    if prepared is None:
        prepared = _kernels.prepare_weights(
            cupy, layout, _on_device(depthwise, device), _on_device(pointwise, device),
            None if bias is None else _on_device(bias, device))
        if cache is not None:
            cache[key] = prepared  # a racing thread may prepare the same arrays: harmless
    return prepared


def _on_device(a, device):
    """`a` as a CuPy array on `device` (the current one), without a copy when it is one."""
    view = _device_view(a)
    if view is None:
        return cupy.asarray(np.asarray(a))
    if view.device != device:
        view = cupy.array(view, copy=True)  # made on the current (x's) device
    return view
