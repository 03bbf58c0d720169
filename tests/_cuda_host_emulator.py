"""Run the CUDA kernels on the CPU, for tests on machines without a GPU.

The kernel source (exactly what NVRTC compiles) is built with the host C++ compiler
against a shim of the CUDA execution model and of the PTX primitives of
kernels/sepconv_ptx.cuh (tests/_cuda_emulator_runtime.h): every CUDA thread of a block is
a fiber, run in turn on one OS thread; every collective (`__syncthreads`, shuffles, `mma`,
`ldmatrix`) is a barrier that aborts the process with a message as soon as part of a warp
or block skips it (no thread can go on);
dynamic shared memory is exactly the launch's bytes plus a guard zone, all NaN bytes
before every block (a read of an unwritten slot or past the end poisons the result, a
write past the end aborts); `cp.async` leaves NaN in its destination until the wait that
covers it. Launches take their arguments the way
`cuLaunchKernel` does (an array of pointers to each argument), built from the very NumPy
scalars the CUDA backend passes to CuPy, so a mistyped scalar shows up here too.

`separable_conv` runs the CUDA backend itself (`cuda_backend`, bound to the fake CuPy of
benchmarks/fake_cupy.py) with its launches executed here: the stand-in that the emulated
tests and the GPU check's dry run share.

This checks indexing, tiling, halo staging, masks, layouts, epilogues and argument
marshalling. It says nothing about timing, memory-model races or the GPU's math library.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

try:
    import fcntl
except ImportError:  # not Unix: builds are not serialized between processes
    fcntl = None

import numpy as np

from sepconv_gpu.backends.cuda import kernel_cache
from sepconv_gpu.backends.cuda.launch import run_launches

RUNTIME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cuda_emulator_runtime.h")
# Every access checked for its type's alignment (a GPU faults on a misaligned vector
# access, a CPU does not): UBSan's report ends the process, naming the source line and the
# type; the runtime adds the block and thread (SEPCONV_EMU_CHECK_ALIGNMENT).
FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-fsanitize=alignment",
         "-fno-sanitize-recover=alignment", "-DSEPCONV_EMU_CHECK_ALIGNMENT=1")
SMEM_LIMIT = 227 * 1024  # EMU_SMEM_LIMIT in the runtime: the opt-in maximum of sm_90


def compiler():
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def cuda_include_dir():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_fp16.h")):
            return os.path.join(root, "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        inc = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
        if os.path.isfile(os.path.join(inc, "cuda_fp16.h")):
            return inc
    return None


def default_build_dir():
    """Where builds go unless a caller says otherwise: one directory for every process,
    so that a build made once (by content digest) serves them all."""
    return os.path.join(tempfile.gettempdir(), "sepconv_gpu_emulator")


def build_once(target, source, flags, what):
    """Compiles the C++ `source` with `flags` into `target` unless it exists. Processes
    building the same target (pytest-xdist workers) take turns: the first compiles, the
    others find it built. The compiler writes a temporary file renamed over `target`, so a
    reader sees a whole file or none."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with _exclusive(target + ".lock"):
        if os.path.exists(target):
            return
        src = target + ".cpp"
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(source)
        tmp = f"{target}.{os.getpid()}.tmp"
        cmd = [compiler(), *flags, "-I", cuda_include_dir(), "-I", kernel_cache.kernels_dir(),
               "-x", "c++", src, "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{what} of the kernels failed:\n{result.stderr[-6000:]}")
        os.replace(tmp, target)


@contextlib.contextmanager
def _exclusive(lock_path):
    if fcntl is None:
        yield
        return
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


class HostEmulator:
    """The given kernel instantiations, compiled for the host; a name launched that is not
    among them is built on its first launch (one more small library)."""

    def __init__(self, names, build_dir=None, *, extra_source=""):
        """`extra_source`: more kernels (e.g. a test's), compiled after the project source;
        it may `#include "sepconv_ptx.cuh"` (or any file of kernels/)."""
        self._build_dir = build_dir or default_build_dir()
        self._extra_source = extra_source
        self._libraries = []   # kept alive: the entries point into them
        self._entries = {}
        self._build(list(dict.fromkeys(names)))

    def _build(self, names):
        """Compile `names` into one shared library (cached by the source's digest) and bind
        their entry points."""
        with open(RUNTIME, encoding="utf-8") as fh:
            runtime = fh.read()
        extra = '#line 1 "extra_source"\n' + self._extra_source if self._extra_source else ""
        source = (runtime + kernel_cache.kernel_source() + extra + "\n" + "".join(
            f'extern "C" void emu_entry_{i}(unsigned g, unsigned b, size_t s, void** a) '
            f"{{ emu_launch(&{name}, g, b, s, a); }}\n" for i, name in enumerate(names)))
        kernels = kernel_cache.kernels_dir()
        headers = "".join(open(os.path.join(kernels, f), encoding="utf-8").read()
                          for f in sorted(os.listdir(kernels)) if f.endswith((".cuh", ".cu")))
        digest = hashlib.sha256("\0".join((source, headers) + FLAGS).encode()).hexdigest()[:16]
        library = os.path.join(self._build_dir, f"emu_{digest}.so")
        build_once(library, source, list(FLAGS), "host build")
        lib = ctypes.CDLL(library)
        self._libraries.append(lib)
        for i, name in enumerate(names):
            fn = getattr(lib, f"emu_entry_{i}")
            fn.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t,
                           ctypes.POINTER(ctypes.c_void_p))
            fn.restype = None
            self._entries[name] = fn

    def launch(self, name, grid, block, args, shared_bytes):
        """Arrays are passed as device pointers are (the address of their first element,
        negative strides included); NumPy scalars by value with their exact type.
        `shared_bytes`: the launch's dynamic shared memory, exactly what the kernel gets."""
        if not 0 <= int(shared_bytes) <= SMEM_LIMIT:
            raise ValueError(f"shared_bytes must be in [0, {SMEM_LIMIT}], got {shared_bytes}")
        keep = []
        pointers = (ctypes.c_void_p * len(args))()
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                holder = np.array([a.__array_interface__["data"][0]], dtype=np.uint64)
            else:
                assert isinstance(a, np.generic), f"argument {i} must be a NumPy scalar, got {type(a)}"
                holder = np.array(a)
            keep.append(holder)
            pointers[i] = holder.ctypes.data
        if name not in self._entries:
            self._build([name])
        self._entries[name](grid, block, int(shared_bytes), pointers)


def stand_in(emulator):
    """(a `cuda_backend` module bound to a fake CuPy whose launches run on `emulator`, that
    fake): benchmarks/fake_cupy.py's stand-in, one per emulator (HostEmulator, or anything
    with its `launch`)."""
    found = _stand_ins.get(emulator)
    if found is None:
        from benchmarks import fake_cupy

        found = _stand_ins[emulator] = fake_cupy.load_backend(emulator=emulator)
    return found


_stand_ins = {}  # emulator -> (backend, fake), for the process (the fake holds its emulator)


@contextlib.contextmanager
def installed(emulator):
    """Within the block the stand-in is this process's CuPy and CUDA backend: `import
    cupy`, `sepconv_gpu.backends.cuda.cuda_backend` and the backend registry's "cuda" give it,
    and `cuda_available()` is True, so code written for a GPU (the `gpu` tests, the device
    run's stages) runs on `emulator`. Yields (backend, fake)."""
    import sepconv_gpu.backends as package
    from benchmarks import fake_cupy

    backend, fake = stand_in(emulator)
    with fake_cupy.installed(fake, backend):
        package.cuda_status.cache_clear()  # answered anew: the stand-in's device
        package._cuda_ops.cache_clear()
        try:
            yield backend, fake
        finally:
            package.cuda_status.cache_clear()
            package._cuda_ops.cache_clear()


def separable_conv(emulator, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                   plan=None):
    """(y, launches): `CupyOps.separable_conv` itself (kernel choice, input copy, weight
    preparation, launch loop, post-activation) on the stand-in, its launches run on
    `emulator`; x is used in place (host memory is the stand-in's device memory), y is
    NumPy. `plan`: launch_sequence's, forced (autotune's candidates)."""
    from benchmarks.gpu_check.correctness import Backend

    backend, cupy = stand_in(emulator)
    del cupy.calls[:]  # the fake's record of this call only (it holds the arrays)
    return Backend(backend, cupy).separable_conv(
        x.view(cupy.ndarray), depthwise, pointwise, bias, geom, activation, allow_tf32,
        plan=plan)


def run(emulator, launches, x, y, prepare):
    """`launches` (of launch_sequence) on the emulator through the backend's launch loop
    (`run_launches`): `prepare(layout)` gives the weights; the partial sums of a split
    start as NaN, poisoned like y, so that every one must be written."""
    run_launches(
        launches, x, y, prepare=prepare,
        empty=lambda n: np.full(n, np.nan, dtype=np.float32),
        launch_one=lambda launch, arrays: emulator.launch(
            launch.name, launch.grid, launch.block, arrays + launch.scalars, launch.shared_bytes))
