"""Every kernel instantiation the library can request compiles, without a GPU.

One translation unit holds the kernel source exactly as NVRTC receives it plus a table of
pointers to every instantiation (`cuda_kernels.all_name_expressions()`); nvcc builds it
once per architecture (sm_80, sm_90, in parallel) with the ptxas report on. Any error,
any warning, a missing instantiation or a register spill fails the test. Needs nvcc only
(no CuPy, no GPU); skipped where nvcc is absent.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends import cuda_kernels

ARCHS = ("sm_80", "sm_90")


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        candidate = os.path.join(root or "", "bin", "nvcc")
        if root and os.access(candidate, os.X_OK):
            return candidate
    return None


NVCC = _find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def translation_unit(names):
    table = ",\n".join(f"    (void*)&{name}" for name in names)
    return (cuda_kernels.source()
            + "\n// every instantiation the library can request\n"
            + f"void* const sepconv_gpu_instances[] = {{\n{table}\n}};\n")


def parse_ptxas(report):
    """{mangled entry name: (registers, spill store bytes, spill load bytes)}."""
    entries, current = {}, None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            entries[current] = [None, 0, 0]
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            entries[current][1:] = [int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m:
            entries[current][0] = int(m.group(1))
    return {k: tuple(v) for k, v in entries.items()}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    names = cuda_kernels.all_name_expressions()
    workdir = tmp_path_factory.mktemp("nvcc")
    source = workdir / "sepconv_all_instances.cu"
    source.write_text(translation_unit(names))

    def build(arch):
        cmd = [NVCC, "-cubin", f"-arch={arch}", "-std=c++17", "-Xptxas", "-v",
               "-Xptxas", "-warn-spills", "-Xptxas", "-warn-lmem-usage",
               str(source), "-o", str(workdir / f"{arch}.cubin")]
        start = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
        return result, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(len(ARCHS)) as pool:
        results = dict(zip(ARCHS, pool.map(build, ARCHS)))
    return names, results


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_compiles_without_errors_or_warnings(builds, arch):
    _, results = builds
    result, seconds = results[arch]
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"nvcc failed for {arch}:\n{output[-8000:]}"
    warnings = [line for line in output.splitlines() if re.search(r"warning|error", line, re.I)]
    assert not warnings, f"nvcc/ptxas complained for {arch}:\n" + "\n".join(warnings[:40])
    print(f"{arch}: {len(builds[0])} instantiations in {seconds:.1f} s")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_instantiation_built_without_spills(builds, arch):
    names, results = builds
    entries = parse_ptxas(results[arch][0].stdout + results[arch][0].stderr)
    ours = {k: v for k, v in entries.items() if "sepconv" in k}
    assert len(ours) == len(names), f"{len(ours)} kernels built for {len(names)} name expressions"
    spills = {k: v for k, v in ours.items() if v[1] or v[2]}
    assert not spills, f"register spills on {arch}: {spills}"
    assert all(v[0] is not None for v in ours.values())
    # __launch_bounds__(256, 2) caps the fused kernels at 128 registers
    assert max(v[0] for v in ours.values()) <= 128
    print(f"{arch}: max {max(v[0] for v in ours.values())} registers, no spills")


# What the documentation promises is applied to the output after the kernel (activations
# module docstring); every other activation name runs fused or with the last-axis kernel.
APPLIED_AFTER_THE_KERNEL = {"glu", "sparsemax", "tf_keras_hard_sigmoid"}


@pytest.mark.parametrize("dtype", sorted(cuda_kernels.DTYPES))
def test_every_launch_requests_a_built_instantiation(dtype):
    """The planner's requests (what NVRTC compiles at run time) are all among the
    instantiations the nvcc test above builds: any activation, layout, kernel size, path."""
    built = cuda_kernels.all_name_expressions()
    assert len(built) == len(set(built))
    after = set()
    for name in activations.NAMES:
        act = activations.get(name)
        for channels_first, kernel, allow_tf32 in itertools.product(
                (False, True), ((3, 3), (5, 5), (1, 3), (7, 7), (2, 5)), (False, True)):
            shape = (2, 4, 12, 10) if channels_first else (2, 12, 10, 4)
            geom = geometry.make_geometry(2, shape, kernel + (4, 2), (1, 1, 8, 16), (16,), (1, 1),
                                          "same", "channels_first" if channels_first else "channels_last", (1, 1))
            strides = cuda_kernels.input_element_strides(shape, np.zeros(shape, dtype).strides,
                                                         np.dtype(dtype).itemsize, geom)
            launches, apply_after = cuda_kernels.launch_sequence(dtype, geom, act, strides, True,
                                                                 allow_tf32=allow_tf32)
            missing = [launch.name for launch in launches if launch.name not in built]
            assert not missing, (name, missing)
            if apply_after:
                after.add(act.name)
    assert after == APPLIED_AFTER_THE_KERNEL


def test_activation_enum_matches_the_source():
    source = cuda_kernels.source()
    body = re.search(r"enum SepconvActivation \{(.*?)\};", source, re.S).group(1)
    enum = [item.split("=")[0].strip() for item in re.sub(r"//[^\n]*", "", body).split(",")]
    assert [e for e in enum if e] == [cuda_kernels.activation_enum(a)
                                      for a in cuda_kernels.FUSED_ACTIVATIONS]


def test_source_lines_point_at_real_files():
    source = cuda_kernels.source()
    assert source.startswith('#line 1 "kernels/sepconv_fused.cu"')
    assert '#line 1 "kernels/sepconv_common.cuh"' in source
    assert "#include \"" not in source  # local headers are inlined
    for banned in ("<cstdio>", "<cmath>", "<vector>", "<iostream>", "<cstdint>"):
        assert banned not in source, f"host standard header {banned} breaks NVRTC"


# --- NVRTC (what CuPy uses at run time), where libnvrtc can be found -------------------

def _find_nvrtc():
    import ctypes.util
    import glob

    candidates = [os.environ.get("SEPCONV_NVRTC_LIBRARY"), ctypes.util.find_library("nvrtc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates += sorted(glob.glob(os.path.join(root, "lib*", "libnvrtc.so*")))
    try:  # pip wheels (nvidia-cuda-nvrtc), as CuPy finds them
        from cuda.pathfinder import load_nvidia_dynamic_lib

        candidates.append(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:
        pass
    for path in filter(None, candidates):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _nvrtc_compile(lib, names, options):
    import ctypes

    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), cuda_kernels.source().encode(),
                                  b"sepconv_fused.cu", 0, None, None) == 0
    try:
        for name in names:
            assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(max(size.value, 1))
        lib.nvrtcGetProgramLog(prog, log)
        return status, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def test_nvrtc_compiles_with_cupy_like_options():
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (set SEPCONV_NVRTC_LIBRARY to its path)")
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))))
    include = next((os.path.join(r, "include") for r in roots
                    if r and os.path.isfile(os.path.join(r, "include", "cuda_fp16.h"))), None)
    names = [n for n in cuda_kernels.all_name_expressions()
             if "ACT_GELU," in n or "ACT_MISH" in n or "softmax" in n]
    # what CuPy's RawModule adds to ours (CuPy 13/14): default device space, -ftz, the arch
    options = list(cuda_kernels.NVRTC_OPTIONS) + [
        "--device-as-default-execution-space", "-ftz=true", "-arch=compute_80"]
    if include:  # CuPy passes its CUDA include directory the same way
        options.append(f"-I{include}")
    status, log = _nvrtc_compile(lib, names, options)
    assert status == 0, log
    assert "warning" not in log.lower(), log
