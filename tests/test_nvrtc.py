"""Every kernel instantiation compiles through the run-time NVRTC path, without a GPU:
the one compile check, on the very CUBINs the product loads.

`cuda_backend.get_function(name)` builds a kernel with
`kernel_cache.library_kernels((name,), arch)`: our ctypes NVRTC binding, the libnvrtc and
CUDA headers of the nvidia wheels (the `test`, `cuda12` and `cuda13` extras install
them), the library's options (`-ftz=true` included). Here the same function builds every
name expression (`kernel_cache.all_name_expressions()`) for sm_80 and sm_90, and SIMT
kernels of each dtype for sm_75 (Turing runs only those), a few kernels per NVRTC
program, the programs spread over processes (threads did not compile in parallel). Any
compile error, any line in an NVRTC log, a kernel missing from its CUBIN, a stack frame
(register spills, local memory) or more registers than its __launch_bounds__ allows
fails; and the tensor-core kernels' SASS (nvdisasm, from the test extra) must hold the
mma, ldmatrix and cp.async instructions they are written around. One kernel of each
template is also built with NVRTC 12.9 (the cuda12 extra's pin) and checked the same way.

Linux only (the wheels are found by their Linux layout); there, a missing NVRTC wheel is
a failure, not a skip: `pip install ".[test]"` installs it.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import sys
import tempfile
import time

import pytest
from _ci import missing
from _cubin import find_nvdisasm, kernel_resources, sass_opcodes

from sepconv_gpu.backends.cuda import kernel_cache, kernel_common, nvrtc, simt, tc

ARCHS = (80, 90)
SIMT_ONLY_ARCHS = (75,)  # below sm_80 the backend plans no tensor-core kernel (cp.async)
# One program for those: each dtype's SIMT kernel in both layouts, generic and
# specialized extents, and the softmax (the whole SIMT family would cost ~15 CPU-s more)
SIMT_ONLY_NAMES = (
    simt.simt_name("float32", False, (3, 3)),
    simt.simt_name("float16", True, kernel_common.GENERIC_EXTENT),
    simt.simt_name("float64", False, kernel_common.GENERIC_EXTENT),
    simt.softmax_name("float16", True),
)
# ~0.3 s of NVRTC per program (the source's front end), 0.1-1.6 s per kernel (sm_90): the
# names are dealt round-robin to this many programs per architecture, so that the costly
# ones (the tensor-core kernels) spread over the workers
PROGRAMS_PER_ARCH = 3
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

# slow: collected first, so that under pytest-xdist it starts at once (tests/conftest.py)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="the nvidia NVRTC wheels are found by their Linux layout")]


def test_nvrtc_comes_from_the_wheels():
    """CI has a system toolkit in /usr/local/cuda too; the build must not depend on it."""
    toolkit = nvrtc.toolkit()  # NvrtcNotFoundError (a failure) where the wheels are absent
    assert toolkit.from_wheel, (
        f"libnvrtc found at {toolkit.library}, not in an nvidia wheel: install the test "
        "extra (pip install '.[test]'), which brings cuda-toolkit[nvrtc,cudart]")
    assert "-packages" in toolkit.include_dir, toolkit.include_dir
    assert os.path.isfile(os.path.join(toolkit.include_dir, nvrtc.HEADER))
    assert set(ARCHS) <= set(toolkit.archs)


def _chunks(names, count):
    return [tuple(names[i::count]) for i in range(count) if names[i::count]]


def _jobs(source):
    """(name expressions, arch, source) of every NVRTC program the fixture builds."""
    jobs = []
    for arch in ARCHS + SIMT_ONLY_ARCHS:
        if arch in SIMT_ONLY_ARCHS:
            jobs.append((SIMT_ONLY_NAMES, arch, source))
        else:
            names = kernel_cache.all_name_expressions()
            jobs += [(chunk, arch, source) for chunk in _chunks(names, PROGRAMS_PER_ARCH)]
    return jobs


def _cache_dir():
    """$SEPCONV_GPU_CACHE_DIR where set, else one beside the emulator's builds: kept
    between runs, so that an unchanged kernel is read back (its entry keeps NVRTC's log, so
    the checks below read the real build output) and a changed one, whose key changes,
    is compiled."""
    return os.environ.get(kernel_cache.ENV_VAR) or os.path.join(
        tempfile.gettempdir(), "sepconv_gpu_test_kernel_cache")


@pytest.fixture(scope="module")
def all_built():
    """Every instantiation built through the kernel cache (compiled where not there yet),
    then read back from it: names, jobs, first results, read-back results, (first seconds,
    the workers' CPU seconds, read-back seconds)."""
    names = kernel_cache.all_name_expressions()
    jobs = _jobs(kernel_cache.kernel_source())  # one source snapshot for every process
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernel_cache.ENV_VAR, _cache_dir())
        start, children_before = time.monotonic(), _children_cpu_seconds()
        # spawn: workers inherit the environment (the cache directory), not pytest's threads
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
            results = list(pool.map(kernel_cache.library_kernels, *zip(*jobs)))
        cold = time.monotonic() - start
        cpu = _children_cpu_seconds() - children_before
        start = time.monotonic()
        again = [kernel_cache.library_kernels(*job) for job in jobs]
        warm = time.monotonic() - start
    return names, jobs, results, again, (cold, cpu, warm)


def _children_cpu_seconds():
    import resource  # Unix only, as this module

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _built(all_built, arch):
    """The jobs and results of `arch`."""
    _, jobs, results, _, _ = all_built
    return [(job, compiled) for job, compiled in zip(jobs, results) if job[1] == arch]


@pytest.mark.parametrize("arch", ARCHS + SIMT_ONLY_ARCHS)
def test_nvrtc_builds_every_instantiation_without_a_word(all_built, arch):
    names = all_built[0] if arch in ARCHS else SIMT_ONLY_NAMES
    built = {}
    for (chunk, _, _), compiled in _built(all_built, arch):
        assert compiled.log == "", f"NVRTC said, for sm_{arch} and {chunk[0]}...:\n{compiled.log}"
        assert compiled.cubin.startswith(b"\x7fELF")
        for name in chunk:
            assert compiled.lowered[name].encode() in compiled.cubin, f"{name} not in the CUBIN"
        built.update(compiled.lowered)
    assert sorted(built) == sorted(names)


@pytest.mark.parametrize("arch", ARCHS + SIMT_ONLY_ARCHS)
def test_nvrtc_kernels_have_no_stack_frame(all_built, arch, capsys):
    """What `ptxas -v` would say (no stack frame: no spills, no local arrays; registers
    within the launch bounds), read from the very CUBINs the run-time path loads."""
    resources = {}
    for _, compiled in _built(all_built, arch):
        found = kernel_resources(compiled.cubin)
        assert set(compiled.lowered.values()) <= set(found), "a kernel without its records"
        resources.update(found)
    framed = {name: frame for name, (_, frame) in resources.items() if frame}
    assert not framed, f"stack frames (spills or local memory) on sm_{arch}: {framed}"
    # __launch_bounds__(256, 2) caps the SIMT and 32 x 64 tensor-core kernels at 128
    # registers; the tensor-core kernel's 64 x 64 warp tiles (MT = 4) run one block an
    # SM: 255
    tall = {k for k in resources if re.search(r"sepconv_tcI.*Li4EEv", k)}
    assert max(regs for k, (regs, _) in resources.items() if k not in tall) <= 128
    assert all(resources[k][0] <= 255 for k in tall)
    registers = sorted(regs for regs, _ in resources.values())
    with capsys.disabled():
        print(f"\n[nvrtc] sm_{arch}: {len(registers)} kernels, no stack frame; registers "
              f"median {registers[len(registers) // 2]}, max {registers[-1]}")


def test_nvrtc_kernel_cache_returns_what_was_built(all_built, capsys):
    _, jobs, results, again, (cold, cpu, warm) = all_built
    assert all(c.from_cache for c in again)
    assert [c.cubin for c in again] == [c.cubin for c in results]
    assert [c.lowered for c in again] == [c.lowered for c in results]
    with capsys.disabled():
        kernels = sum(len(job[0]) for job in jobs)
        print(f"\n[nvrtc] {kernels} kernels ({len(kernel_cache.all_name_expressions())} "
              f"instantiations for sm_{'/'.join(map(str, ARCHS))}, {len(SIMT_ONLY_NAMES)} "
              f"SIMT ones for sm_{'/'.join(map(str, SIMT_ONLY_ARCHS))}) "
              f"(NVRTC {'.'.join(map(str, nvrtc.toolkit().version))}): "
              f"{sum(not c.from_cache for c in results)} of {len(jobs)} programs compiled, "
              f"in {cold:.1f} s on {WORKERS} processes ({cpu:.0f} CPU-s), read back from the "
              f"kernel cache in {warm:.2f} s")


NVDISASM = find_nvdisasm()


def _nvdisasm():
    """nvdisasm, or a skip where it is not installed; CI (CI=true) must have it."""
    if NVDISASM is None:
        missing("nvdisasm not found: pip install '.[test]' brings it "
                "(nvidia-cuda-nvdisasm; on PATH also works)")
    return NVDISASM


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_kernels_use_tensor_cores(all_built, arch):
    """Every sepconv_tc instantiation's SASS has the mma (HMMA), ldmatrix (LDSM) and
    cp.async (LDGSTS) instructions it is written around."""
    nvdisasm = _nvdisasm()
    expected = [n for n in tc.tc_name_expressions()
                if not n.startswith("sepconv_tc_reduce")]
    checked = []
    for _, compiled in _built(all_built, arch):
        names = sorted(set(expected) & set(compiled.lowered))
        sass = sass_opcodes(compiled.cubin, nvdisasm, [compiled.lowered[n] for n in names])
        for name in names:
            opcodes = {op.split(".")[0] for op in sass[compiled.lowered[name]]}
            for opcode in ("HMMA", "LDSM", "LDGSTS"):
                assert opcode in opcodes, f"{opcode} missing from {name} on sm_{arch}"
            checked.append(name)
    assert sorted(checked) == sorted(expected)


def test_sass_reader_sees_each_kernels_instructions():
    """What makes the opcode checks above able to fail: the float and double kernels of
    TINY multiply with FMUL and DMUL respectively (modifiers such as .FTZ aside), and
    neither with the other's."""
    compiled = nvrtc.compile_cubin(TINY, ["scale<float>", "scale<double>"], 80,
                                   kernel_cache.CUPY_OPTIONS)
    sass = sass_opcodes(compiled.cubin, _nvdisasm())
    single, double = ({op.split(".")[0] for op in sass[compiled.lowered[n]]}
                      for n in ("scale<float>", "scale<double>"))
    assert "FMUL" in single and "DMUL" not in single and "EXIT" in single
    assert "DMUL" in double and "FMUL" not in double


# --- the binding reports what NVRTC says ------------------------------------------------

TINY = "template <typename T> __global__ void scale(T* x, T a) { x[threadIdx.x] *= a; }\n"


def test_nvrtc_compile_error_carries_the_log():
    with pytest.raises(nvrtc.NvrtcCompileError) as info:
        nvrtc.compile_cubin(TINY + "__global__ void broken() { undeclared = 1; }\n",
                            ["scale<float>"], 80, kernel_cache.CUPY_OPTIONS)
    assert "undeclared" in info.value.log


def test_nvrtc_warnings_reach_the_log():
    """What makes the empty-log check above able to fail."""
    compiled = nvrtc.compile_cubin(TINY + '#warning "sepconv-test-warning"\n',
                                   ["scale<float>"], 80, kernel_cache.CUPY_OPTIONS)
    assert "sepconv-test-warning" in compiled.log


def test_nvrtc_lowered_names_are_the_instantiations():
    compiled = nvrtc.compile_cubin(TINY, ["scale<float>", "scale<double>"], 90,
                                   kernel_cache.CUPY_OPTIONS)
    assert compiled.log == ""
    lowered = compiled.lowered
    assert set(lowered) == {"scale<float>", "scale<double>"}
    assert lowered["scale<float>"] != lowered["scale<double>"]
    for mangled in lowered.values():  # Itanium C++ ABI names of the two instantiations
        assert mangled.startswith("_Z5scaleI") and mangled.encode() in compiled.cubin


def test_cubin_resources_agree_with_ptxas():
    """tests/_cubin.py reads what ptxas reports: registers, and a stack frame where a
    dynamically indexed local array forces one."""
    source = TINY + ("__global__ void local_array(float* x, int i) { float a[256];\n"
                     "  for (int k = 0; k < 256; ++k) a[k] = x[k * i];\n"
                     "  x[i] = a[x[1] > 0 ? i & 255 : 0]; }\n")
    names = ["scale<float>", "scale<double>", "local_array"]
    compiled = nvrtc.compile_cubin(source, names, 80,
                                   kernel_cache.CUPY_OPTIONS + ("--ptxas-options=-v",))
    reported = {}
    for entry, body in re.findall(r"entry function '(\w+)'(.*?)(?=entry function|$)", compiled.log, re.S):
        frame = int(re.search(r"(\d+) bytes stack frame", body).group(1))
        reported[entry] = (int(re.search(r"Used (\d+) registers", body).group(1)), frame)
    assert kernel_resources(compiled.cubin) == reported
    assert reported[compiled.lowered["local_array"]][1] >= 256 * 4


def test_nvrtc_rejects_an_architecture_it_cannot_emit():
    with pytest.raises(ValueError, match="sm_1"):
        nvrtc.compile_cubin(TINY, ["scale<float>"], 1, ())


def test_nvrtc_library_override_is_obeyed(monkeypatch):
    monkeypatch.setenv("SEPCONV_NVRTC_LIBRARY", "/nonexistent/libnvrtc.so.13")
    nvrtc._load.cache_clear()
    try:
        with pytest.raises(nvrtc.NvrtcNotFoundError, match="/nonexistent/libnvrtc.so.13"):
            nvrtc.toolkit()
    finally:
        monkeypatch.undo()
        nvrtc._load.cache_clear()
    assert nvrtc.toolkit().version  # found again without the override


# --- NVRTC 12.9, the cuda12 extra's pin (the only route on a CUDA 12 driver) ----------------

# One kernel of each template, in one program for sm_90 (~5 CPU-s, against ~2 CPU-min for
# the 13.0 build above): the bfloat16 tensor-core tile under its __maxnreg__ cap, the
# reduction, a specialized SIMT kernel and the softmax.
NVRTC12_NAMES = (simt.simt_name("float32", False, (3, 3)), tc.tc_name("bfloat16", (3, 3), 2),
                 tc.tc_reduce_name("float16"), simt.softmax_name("float32", False))


def _nvrtc12_library():
    """libnvrtc.so.12 of the nvidia-cuda-nvrtc-cu12 wheel, which the test extra installs
    beside CUDA 13's (nvidia/cuda_nvrtc/lib, its headers in nvidia/cuda_runtime/include;
    the default search takes nvidia/cu13 first)."""
    found = [p for p in nvrtc._wheel_libraries() if p.endswith(".so.12")]
    assert found, ("no NVRTC 12 wheel: pip install '.[test]' brings nvidia-cuda-nvrtc-cu12 "
                   "and nvidia-cuda-runtime-cu12 (12.9)")
    return found[0]


def _build_with_the_nvrtc_in_use(names, arch, source):
    """(NVRTC version, nvrtc.Compiled) in a process whose environment picked the NVRTC."""
    return nvrtc.toolkit().version, kernel_cache.library_kernels(names, arch, source)


def test_nvrtc_12_9_builds_one_kernel_of_each_template_without_a_stack_frame(tmp_path):
    """SEPCONV_NVRTC_LIBRARY selects the 12.9 wheel (its headers found beside it), in a
    fresh process (the library is chosen once a process); what it builds is checked as
    the 13.0 build is: no word in the log, no stack frame, registers within the caps."""
    env = {"SEPCONV_NVRTC_LIBRARY": _nvrtc12_library(), kernel_cache.ENV_VAR: str(tmp_path)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)  # the spawned worker inherits them
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            version, compiled = pool.submit(_build_with_the_nvrtc_in_use, NVRTC12_NAMES, 90,
                                            kernel_cache.kernel_source()).result()
    assert version == (12, 9)
    assert compiled.log == "", compiled.log
    resources = kernel_resources(compiled.cubin)
    for name in NVRTC12_NAMES:
        registers, frame = resources[compiled.lowered[name]]
        assert frame == 0, f"{name}: {frame} bytes of stack frame with NVRTC 12.9"
        cap = tc.TC_MT2_REGISTERS if name.startswith("sepconv_tc<") else 128
        assert registers <= cap, (name, registers)


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_tensor_core_kernels_within_their_register_cap(all_built, arch):
    """The tensor-core instantiations of the build above: the MT <= 2 warp tiles within
    TC_MT2_REGISTERS, their __maxnreg__ (two blocks an SM where shared memory allows),
    and no stack frame. (By hand, the tensor-core kernels alone build in seconds:
    `kernel_cache.library_kernels(tuple(tc.tc_name_expressions()), 90, kernel_cache.kernel_source())`.)"""
    names = tc.tc_name_expressions()
    found, lowered = {}, {}
    for _, compiled in _built(all_built, arch):
        found.update(kernel_resources(compiled.cubin))
        lowered.update(compiled.lowered)
    for name in names:
        registers, frame = found[lowered[name]]
        assert frame == 0, f"{name}: {frame} bytes of stack frame on sm_{arch}"
        if name.endswith((", 1>", ", 2>")):
            assert registers <= tc.TC_MT2_REGISTERS, (name, registers)
