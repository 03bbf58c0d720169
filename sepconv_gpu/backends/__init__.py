"""Backend objects (`Ops`: `NumpyOps`, `CupyOps`) and the rule that picks one.

Selection, strongest first: an explicit `backend=` argument, `use_backend(...)`,
`set_backend(...)`, the `SEPCONV_GPU_BACKEND` environment variable, then "auto"
(CUDA when CuPy imports and a device answers, else NumPy, said once).

On the NumPy backend, the CPU kernel: "numba" (compiled, fused, multi-core:
cpu/numba_kernel.py) where Numba imports, else "numpy" (cpu/numpy_backend.py's tiled NumPy
code, said once); either by name with `set_cpu_kernel` or `SEPCONV_GPU_CPU_KERNEL`. The
compiled kernel runs on as many threads as Numba's setting says (all cores unless
`numba.set_num_threads` or NUMBA_NUM_THREADS says fewer), threads of its own.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
import warnings

BACKEND_NAMES = ("auto", "numpy", "cuda")
ENV_VAR = "SEPCONV_GPU_BACKEND"
CPU_KERNEL_NAMES = ("auto", "numba", "numpy")
CPU_KERNEL_ENV_VAR = "SEPCONV_GPU_CPU_KERNEL"

logger = logging.getLogger("sepconv_gpu")


_NO_SCOPE = contextlib.nullcontext()  # reusable


class Ops:
    """What every backend has (Thinc's `Ops` / `CupyOps` pattern): `NumpyOps` in
    cpu/numpy_backend.py, `CupyOps` in cuda/cuda_backend.py. `ops.py` checks a call once and takes
    its arrays onto the backend with `take`; `separable_conv` receives arrays the backend
    owns and does not take them again."""

    name = None  # "numpy" | "cuda"
    xp = None  # the array module: numpy | cupy

    def owns(self, x):
        """True when x already lives on this backend (no copy needed)."""
        raise NotImplementedError

    def take(self, x):
        """(x as this backend's array, a function turning a result back into x's kind);
        no copy when x already lives here."""
        raise NotImplementedError

    def asarray(self, a, dtype=None):
        """Weights onto this backend, always a copy."""
        raise NotImplementedError

    def to_numpy(self, a):
        """`a` as a host NumPy array."""
        raise NotImplementedError

    def stream_scope(self, x):
        """The context of one call with input x (CUDA: the caller's stream); none here."""
        return _NO_SCOPE

    def separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                       weights_cache=None, unrounded=False):
        """y = activation(bias + pointwise(depthwise(x))): this backend's array of x's dtype.

        x, depthwise, pointwise, bias (or None): this backend's arrays, checked against
        `geom` (their ConvGeometry) by ops.py. activation: one with `by_rows` set (ops
        applies any other callable to the whole output). allow_tf32: float32 may use TF32
        tensor cores (CUDA only). weights_cache: None, or a dict to keep forms derived
        from these weights in (a layer's weights snapshot owns it). unrounded: a float16 or
        bfloat16 x gives its float32 result, not yet rounded to x's dtype (for an
        activation ops applies to the whole output before the one rounding).
        """
        raise NotImplementedError


class BackendUnavailableError(RuntimeError):
    """The CUDA backend was asked for where it cannot run."""


class NumpyFallbackWarning(UserWarning):
    """Backend "auto" found no usable CUDA device and runs on NumPy."""


class NumbaFallbackWarning(UserWarning):
    """CPU kernel "auto" found no Numba and runs the NumPy code."""


_global_choice = None
_context_choice = contextvars.ContextVar("sepconv_gpu_backend", default=None)
_lock = threading.Lock()
_fallback_said = False
_cpu_kernel_choice = None
_numba_fallback_said = False


def _check_name(name, where, names=BACKEND_NAMES):
    if not isinstance(name, str) or name.lower() not in names:
        raise ValueError(f"{where} must be one of {names}; received {name!r}")
    return name.lower()


@functools.lru_cache(maxsize=None)
def numba_status():
    """(available, reason): Numba imports."""
    try:
        import numba  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (llvmlite) raising anything
        return False, f"Numba is not importable ({type(exc).__name__}: {exc})"
    return True, ""


def set_cpu_kernel(name):
    """The NumPy backend's kernel: "auto" (Numba where it imports), "numba" or "numpy";
    None clears the choice (then SEPCONV_GPU_CPU_KERNEL, then "auto")."""
    global _cpu_kernel_choice
    choice = None if name is None else _check_name(name, "cpu_kernel", CPU_KERNEL_NAMES)
    if choice == "numba" and not numba_status()[0]:
        raise BackendUnavailableError(f"The 'numba' CPU kernel was requested: {numba_status()[1]}.")
    _cpu_kernel_choice = choice


def cpu_kernel():
    """The CPU kernel the NumPy backend runs now: "numba" or "numpy"."""
    choice = _cpu_kernel_choice
    if choice is None:
        env = os.environ.get(CPU_KERNEL_ENV_VAR)
        choice = _check_name(env, f"environment variable {CPU_KERNEL_ENV_VAR}", CPU_KERNEL_NAMES) if env else "auto"
    ok, reason = numba_status()
    if choice == "numba" and not ok:
        raise BackendUnavailableError(f"{CPU_KERNEL_ENV_VAR}=numba, but {reason}.")
    if choice != "auto":
        return choice
    if ok:
        return "numba"
    global _numba_fallback_said
    with _lock:
        said, _numba_fallback_said = _numba_fallback_said, True
    if not said:
        message = f"sepconv_gpu: the CPU kernel runs on NumPy alone: {reason}."
        logger.info(message)
        warnings.warn(message, NumbaFallbackWarning, stacklevel=3)
    return "numpy"


@functools.lru_cache(maxsize=None)
def cuda_status():
    """(available, reason): CuPy imports and at least one CUDA device answers."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising anything
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return False, "CuPy found no CUDA device"
        cupy.cuda.Device(0).compute_capability  # touches the driver
    except Exception as exc:
        return False, f"no CUDA device answers ({type(exc).__name__}: {exc})"
    return True, ""


def cuda_available():
    return cuda_status()[0]


@functools.lru_cache(maxsize=None)
def _numpy_ops():
    from .cpu.numpy_backend import NumpyOps

    return NumpyOps()


@functools.lru_cache(maxsize=None)
def _cuda_ops():
    ok, reason = cuda_status()
    if not ok:
        raise BackendUnavailableError(f"The 'cuda' backend was requested but cannot run here: {reason}.")
    from .cuda.cuda_backend import CupyOps

    return CupyOps()


def get_ops(name):
    """The backend object for "numpy", "cuda" or "auto" (resolved now)."""
    name = _check_name(name, "backend")
    if name == "numpy":
        return _numpy_ops()
    if name == "cuda":
        return _cuda_ops()
    if cuda_available():
        return _cuda_ops()
    _say_fallback_once()
    return _numpy_ops()


def _say_fallback_once():
    global _fallback_said
    with _lock:
        if _fallback_said:
            return
        _fallback_said = True
    reason = cuda_status()[1]
    message = f"sepconv_gpu: backend 'auto' runs on NumPy: {reason}."
    logger.info(message)
    warnings.warn(message, NumpyFallbackWarning, stacklevel=3)


def requested_backend(explicit=None):
    """The backend name the rule selects, before "auto" is resolved."""
    if explicit is not None:
        return explicit.name if isinstance(explicit, Ops) else _check_name(explicit, "backend")
    for choice in (_context_choice.get(), _global_choice):
        if choice is not None:
            return choice
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env, f"environment variable {ENV_VAR}")
    return "auto"


def resolve(explicit=None):
    """The backend object for this call, by the selection rule."""
    if isinstance(explicit, Ops):
        return explicit
    return get_ops(requested_backend(explicit))


def get_backend():
    """Name of the backend a new layer would use now: "numpy" or "cuda"."""
    return resolve().name


def set_backend(name):
    """Set the process-wide default ("auto", "numpy" or "cuda"); None clears it."""
    global _global_choice
    choice = None if name is None else _check_name(name, "backend")
    if choice == "cuda":
        _cuda_ops()  # fail now, clearly, rather than at the first call; a failed set changes nothing
    _global_choice = choice


@contextlib.contextmanager
def use_backend(name):
    """Within the block, layers made default to `name` (ops compute where `x` lives).

    A context variable: it holds for this thread or async task only. Threads of a pool
    (`concurrent.futures`, dask) do not see it, even when started inside the block: make
    the layers here, or pass `backend=` / use `set_backend`.
    """
    name = _check_name(name, "backend")
    if name == "cuda":
        _cuda_ops()
    token = _context_choice.set(name)
    try:
        yield resolve()
    finally:
        _context_choice.reset(token)


def identity(a):
    """What a backend gives back when the result is already of the caller's kind."""
    return a


def dlpack_on_cuda(x):
    """True when x exports DLPack from CUDA device or managed memory: what cupy.from_dlpack
    imports (it refuses pinned host memory, kDLCUDAHost, which is read as host data)."""
    try:
        return int(x.__dlpack_device__()[0]) in (2, 13)  # kDLCUDA, kDLCUDAManaged
    except Exception:
        return False


def lives_on_device(x):
    """True for CuPy arrays, torch CUDA tensors and other CUDA array-likes."""
    return hasattr(x, "__cuda_array_interface__") or dlpack_on_cuda(x)


def ops_for_array(x, explicit=None):
    """Ops compute where x lives, unless a backend is named explicitly."""
    if explicit is not None:
        return resolve(explicit)
    return get_ops("cuda") if lives_on_device(x) else get_ops("numpy")
