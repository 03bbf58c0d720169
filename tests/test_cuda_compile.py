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
    # __launch_bounds__(256, 2) caps the fused kernels at 128 registers; the tensor-core
    # kernel's 64 x 64 warp tiles (MT = 4) run one block an SM: 255
    tall = {k for k in ours if re.search(r"sepconv_tcI.*Li4EEv", k)}
    assert max(v[0] for k, v in ours.items() if k not in tall) <= 128
    assert all(ours[k][0] <= 255 for k in tall)
    print(f"{arch}: max {max(v[0] for v in ours.values())} registers, no spills")


def _find_cuobjdump():
    for candidate in (shutil.which("cuobjdump"),
                      os.path.join(os.path.dirname(os.path.realpath(NVCC or "")), "cuobjdump")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_kernels_use_tensor_cores(builds, arch, tmp_path_factory):
    """Every sepconv_tc instantiation's SASS has the mma (HMMA), ldmatrix (LDSM) and
    cp.async (LDGSTS) instructions it is written around."""
    cuobjdump = _find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found")
    names, results = builds
    assert results[arch][0].returncode == 0
    cubin = next(tmp_path_factory.getbasetemp().glob(f"nvcc*/{arch}.cubin"))
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    functions = re.split(r"\n\s*Function : ", sass)[1:]
    tc = {f.split("\n", 1)[0].strip(): f for f in functions
          if "sepconv_tc" in f.split("\n", 1)[0] and "reduce" not in f.split("\n", 1)[0]}
    assert len(tc) == len([n for n in cuda_kernels.tc_name_expressions() if "reduce" not in n])
    for name, body in tc.items():
        for opcode in ("HMMA", "LDSM", "LDGSTS"):
            assert opcode in body, f"{opcode} missing from {name} on {arch}"


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


# The run-time NVRTC build of every instantiation (the wheels' libnvrtc, the exact
# options) is tests/test_nvrtc.py.
