"""NVRTC through ctypes: CUDA C++ source and name expressions in, a CUBIN out.

Free of CuPy and of any GPU: it needs only the NVRTC library and the CUDA headers, which
the `cuda12` / `cuda13` extras install as wheels (`cuda-toolkit[nvrtc,cudart]`). The CUDA
backend compiles its kernels here (through the disk cache in `kernel_cache.py`) and hands
the CUBIN to CuPy; the tests compile every kernel the same way on machines with no GPU.

Where libnvrtc comes from, first found wins: `SEPCONV_NVRTC_LIBRARY` (a path); the
nvidia wheels in site-packages (through `cuda.pathfinder` when it is installed, as CuPy 14
installs it, else by their known layouts); a system toolkit (`CUDA_HOME`, `CUDA_PATH`,
/usr/local/cuda, the loader's search path). The headers are taken from the same toolkit.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import sys
from dataclasses import dataclass

HEADER = "cuda_fp16.h"  # the one CUDA header the kernels include
# The NVRTC minor the kernels are tuned and checked with (the cuda13 extra pins it):
# 13.0 builds every kernel without a stack frame; a later 13.x was seen to spill.
PINNED_VERSION = (13, 0)


class NvrtcNotFoundError(OSError):
    """No loadable libnvrtc (or no CUDA headers beside it)."""


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the source; the message holds its log."""

    def __init__(self, message, log):
        super().__init__(f"{message}\n{log}")
        self.log = log


@dataclass(frozen=True)
class Toolkit:
    """The NVRTC library in use and the CUDA include directory that goes with it."""

    library: str            # path of libnvrtc
    include_dir: str        # holds cuda_fp16.h
    version: tuple          # (major, minor) of NVRTC
    archs: tuple            # SM versions NVRTC can emit SASS for, e.g. (75, 80, 86, 89, 90, ...)
    from_wheel: bool        # True: an nvidia wheel in site-packages, not a system toolkit


@dataclass(frozen=True)
class Compiled:
    cubin: bytes            # what the driver loads: a CUBIN, or PTX text when `ptx`
    lowered: dict           # name expression -> mangled (lowered) kernel name
    log: str                # NVRTC's log; empty when it had nothing to say
    from_cache: bool = False  # read from the disk cache (kernel_cache), not compiled now
    ptx: bool = False       # PTX for an older architecture, JIT-compiled by the driver


# --- finding the library and its headers -----------------------------------------------

def _wheel_libraries():
    """libnvrtc in nvidia wheels: CUDA 13+ nvidia/cu13/lib, CUDA 12 nvidia/cuda_nvrtc/lib."""
    found = []
    for site in sys.path:
        for pattern in ("nvidia/cu[0-9]*/lib/libnvrtc.so.[0-9]*",
                        "nvidia/cuda_nvrtc/lib/libnvrtc.so.[0-9]*"):
            found += sorted(glob.glob(os.path.join(site or ".", pattern)), reverse=True)
    return found


def _pathfinder_library():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        return load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception:  # not installed, or it found nothing
        return None


def _system_libraries():
    found = [ctypes.util.find_library("nvrtc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            found += sorted(glob.glob(os.path.join(root, "lib*", "libnvrtc.so.[0-9]*")), reverse=True)
    return found


def _is_wheel(path):
    return f"{os.sep}nvidia{os.sep}" in path and "-packages" in path


def _include_dir(library):
    """The CUDA include directory of the toolkit `library` belongs to."""
    lib_dir = os.path.dirname(os.path.realpath(library))
    root = os.path.dirname(lib_dir)
    candidates = [os.path.join(root, "include"),                    # cu13 wheel, system
                  os.path.join(os.path.dirname(root), "cuda_runtime", "include"),  # cu12 wheels
                  *sorted(glob.glob(os.path.join(root, "targets", "*", "include")))]
    if not _is_wheel(library):
        candidates += [os.path.join(r, "include") for r in
                       (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if r]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, HEADER)):
            return candidate
    return None


def _load_builtins_beside(library):
    """Load libnvrtc-builtins from libnvrtc's own directory first: libnvrtc opens it by
    soname at compile time, which some wheels' RPATH does not find (13.0: "failed to open
    libnvrtc-builtins.so.13.0"); an already loaded soname is found."""
    directory = os.path.dirname(os.path.realpath(library))
    for builtins in glob.glob(os.path.join(directory, "libnvrtc-builtins.so.*")):
        try:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # then libnvrtc's own search decides, and NVRTC says so if it fails


def _bind(lib):
    """Declare the argument types of the NVRTC calls used here (pointers stay 64-bit)."""
    p, vp, sz = ctypes.POINTER, ctypes.c_void_p, ctypes.c_size_t
    cstr, cstrs = ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)
    signatures = {
        "nvrtcVersion": (p(ctypes.c_int), p(ctypes.c_int)),
        "nvrtcGetNumSupportedArchs": (p(ctypes.c_int),),
        "nvrtcGetSupportedArchs": (p(ctypes.c_int),),
        "nvrtcCreateProgram": (p(vp), cstr, cstr, ctypes.c_int, cstrs, cstrs),
        "nvrtcDestroyProgram": (p(vp),),
        "nvrtcAddNameExpression": (vp, cstr),
        "nvrtcCompileProgram": (vp, ctypes.c_int, cstrs),
        "nvrtcGetProgramLogSize": (vp, p(sz)),
        "nvrtcGetProgramLog": (vp, ctypes.c_char_p),
        "nvrtcGetCUBINSize": (vp, p(sz)),
        "nvrtcGetCUBIN": (vp, ctypes.c_char_p),
        "nvrtcGetPTXSize": (vp, p(sz)),
        "nvrtcGetPTX": (vp, ctypes.c_char_p),
        "nvrtcGetLoweredName": (vp, cstr, p(cstr)),
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    lib.nvrtcGetErrorString.argtypes, lib.nvrtcGetErrorString.restype = (ctypes.c_int,), cstr
    return lib


@functools.lru_cache(maxsize=None)
def _load():
    """(bound ctypes library, Toolkit), found once per process."""
    override = os.environ.get("SEPCONV_NVRTC_LIBRARY")
    if override:
        candidates = [override]
    else:
        candidates = [_pathfinder_library(), *_wheel_libraries(), *_system_libraries()]
    tried = []
    for path in dict.fromkeys(filter(None, candidates)):  # in order, without repeats
        try:
            _load_builtins_beside(path)
            lib = _bind(ctypes.CDLL(path))
        except (OSError, AttributeError) as exc:
            tried.append(f"{path}: {exc}")
            continue
        include = _include_dir(path)
        if include is None:
            tried.append(f"{path}: no {HEADER} in its toolkit")
            continue
        major, minor = ctypes.c_int(), ctypes.c_int()
        _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        count = ctypes.c_int()
        _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
        archs = (ctypes.c_int * count.value)()
        _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
        return lib, Toolkit(library=os.path.realpath(path), include_dir=include,
                            version=(major.value, minor.value), archs=tuple(archs),
                            from_wheel=_is_wheel(os.path.realpath(path)))
    detail = "; ".join(tried) or "no candidate library"
    raise NvrtcNotFoundError(
        "sepconv_gpu: no usable NVRTC library with CUDA headers "
        f"({detail}). Install the extra (pip install 'sepconv_gpu[cuda13]' or '[cuda12]') "
        "or set SEPCONV_NVRTC_LIBRARY to a libnvrtc path.")


def toolkit():
    """The Toolkit in use; NvrtcNotFoundError where there is none."""
    return _load()[1]


def _check(lib, status, call):
    if status != 0:
        message = lib.nvrtcGetErrorString(status).decode(errors="replace")
        raise NvrtcCompileError(f"sepconv_gpu: {call} failed: {message}", "")


# --- compiling ------------------------------------------------------------------------

_logger = logging.getLogger("sepconv_gpu")
_ptx_said = set()


# SM versions are major·10 + minor (sm_90: 9.0, sm_121: 12.1). The highest major version is
# 12 today: this bound keeps the PTX path for GPUs newer than NVRTC for many generations,
# while refusing what can only be a typo (900 is major version 90).
MAX_SM_MAJOR = 29


def target(arch):
    """(architecture NVRTC compiles for, whether as PTX) for a device of SM version `arch`:
    SASS for sm_`arch` where NVRTC knows it; for a device newer than every architecture
    NVRTC knows, PTX for the newest one (the driver JIT-compiles it, said once per
    architecture in the log); ValueError for an older or unknown one, and for a number no
    NVIDIA GPU's SM version can be (900, a typo for 90)."""
    if not 10 <= arch < 10 * (MAX_SM_MAJOR + 1):
        raise ValueError(f"sepconv_gpu: sm_{arch} is not an NVIDIA GPU architecture (SM "
                         "versions are major·10 + minor, e.g. 90 for compute capability 9.0)")
    tk = toolkit()
    if arch in tk.archs:
        return arch, False
    newest = max(tk.archs)
    if arch > newest:
        if arch not in _ptx_said:
            _ptx_said.add(arch)
            _logger.warning("sepconv_gpu: NVRTC %d.%d cannot emit SASS for sm_%d (newest: sm_%d); "
                            "compiling PTX for compute_%d, which the driver JIT-compiles",
                            tk.version[0], tk.version[1], arch, newest, newest)
        return newest, True
    raise ValueError(f"sepconv_gpu: NVRTC {tk.version[0]}.{tk.version[1]} cannot emit "
                     f"SASS for sm_{arch}; it supports {tk.archs}.")


def arch_option(arch):
    """The -arch option that serves a device of SM version `arch` (see `target`)."""
    emitted, ptx = target(arch)
    return f"-arch={'compute' if ptx else 'sm'}_{emitted}"


def compile_options(arch, options):
    """The complete NVRTC option list: `options`, the target for sm_`arch`, the CUDA headers."""
    return (*options, arch_option(arch), f"-I{toolkit().include_dir}")


def compile_cubin(source, name_expressions, arch, options=(), filename="kernels.cu"):
    """Compile `source` for a device of SM version `arch` with every name expression
    instantiated: SASS, or PTX for a device newer than NVRTC knows (`target`).

    Returns Compiled(cubin, {name expression: lowered name}, log, ptx=...);
    NvrtcCompileError (with the log) on a compile error.
    """
    lib, _ = _load()
    full_options = [o.encode() for o in compile_options(int(arch), options)]
    ptx = target(int(arch))[1]
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(),
                                       0, None, None), "nvrtcCreateProgram")
    try:
        for name in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, name.encode()), "nvrtcAddNameExpression")
        status = lib.nvrtcCompileProgram(prog, len(full_options),
                                         (ctypes.c_char_p * len(full_options))(*full_options))
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(max(size.value, 1))
        _check(lib, lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log = log.value.decode(errors="replace").strip()
        if status != 0:
            message = lib.nvrtcGetErrorString(status).decode(errors="replace")
            raise NvrtcCompileError(f"sepconv_gpu: NVRTC failed ({message}) for sm_{arch}:", log)
        kind = "PTX" if ptx else "CUBIN"
        _check(lib, getattr(lib, f"nvrtcGet{kind}Size")(prog, ctypes.byref(size)), f"nvrtcGet{kind}Size")
        image = ctypes.create_string_buffer(size.value)
        _check(lib, getattr(lib, f"nvrtcGet{kind}")(prog, image), f"nvrtcGet{kind}")
        lowered = {}
        for name in name_expressions:
            mangled = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(mangled)),
                   "nvrtcGetLoweredName")
            lowered[name] = mangled.value.decode()
        # PTX keeps its terminating NUL: cuModuleLoadData reads it as a C string
        return Compiled(cubin=image.raw, lowered=lowered, log=log, ptx=ptx)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
