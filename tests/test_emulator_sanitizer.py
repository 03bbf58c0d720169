"""compute-sanitizer's racecheck and memcheck on the CPU (tests/_emulator_sanitizer.py).

The CUDA backend's launch sequences run through the host emulator built with
ThreadSanitizer (racecheck) and AddressSanitizer (memcheck), over launches that cover
every kernel template (sepconv_simt, sepconv_softmax_lastaxis, sepconv_tc,
sepconv_tc_reduce) and plan shape: tensor-core warp tiles MT = 1, 2 and 4, position
orders in bands of row segments and as a slab, depthwise strips and the generic loop,
resident A over several filter blocks, channel splits with the reduce launch, float16,
TF32 and bfloat16 operands; SIMT float32 / float64 / float16 / bfloat16 with specialized
and generic extents, the no-halo gather, softmax and log_softmax. Each geometry is found
by asking the planner (the smallest in a search space whose plan has the property, the
`TcPlan` fields checked against what the launch runs), so the cases follow planner
changes; outputs are compared with the float64 reference. These clean runs also show that the
emulator's own machinery (shared memory NaN-poisoned between blocks, cp.async copies
deferred to their wait, shuffle / mma / ldmatrix exchange slots) raises no false report.
Then mutated copies of the kernel source (a barrier removed, a bound widened) must make
the sanitizer fail, naming the kernel; tiny probe kernels check both ends of an array,
the end of shared memory, __syncthreads / __syncwarp as synchronisation, and scalar types.

Emulated: this shows the kernels' shared-memory accesses are ordered by barriers and
collectives as the emulator models them, and their global accesses stay inside the
arrays, for these launches. Only compute-sanitizer on a GPU checks the real thing.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import re

import numpy as np
import pytest

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import kernel_cache, kernel_common, simt, tc
from sepconv_gpu.backends.cuda.launch import (
    input_element_strides, launch_sequence, prepare_weights, round_to_bfloat16_bits)
from sepconv_gpu.backends.cpu.numpy_backend import reference_separable_conv

from _cases import assert_matches, random_case

try:
    import _cuda_host_emulator as emu  # tests/ on sys.path (pytest's default rootdir import)
    import _emulator_sanitizer as sanitizer
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu
    from . import _emulator_sanitizer as sanitizer


# slow: collected first, so that under pytest-xdist it starts early (tests/conftest.py)
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _host_toolchain(emulator_for):
    """The sanitized drivers are built with the host emulator's toolchain: conftest's
    `emulator_for` skips every test here where it is missing."""


CHECKS = ("racecheck", "memcheck")


def template_args(name):
    """'sepconv_tc<__half, 3, 3, 4>' -> ('__half', '3', '3', '4')."""
    return tuple(a.strip() for a in name[name.index("<") + 1:-1].split(","))


def kinds(launches):
    return [launch.kind for launch in launches]


def tc_m_tiles(launches):
    return int(template_args(launches[0].name)[-1]) if launches[0].kind == "tc" else None


def tc_plan_of(case, geom, launches):
    """The planner's `TcPlan` for the case (planned, as the launch sequence plans it, with
    the activation its epilogue runs), checked to be the one its "tc" launch runs."""
    kernel_id = activations.get(case.activation).kernel_id
    epilogue = kernel_id if kernel_id in kernel_common.FUSED_ACTIVATIONS else "linear"
    tp = tc.tc_plan(case.dtype, geom, epilogue == "linear")
    launch = launches[0]
    # the launch's last two scalars are band_h and slab (tc_scalar_args)
    ran = (launch.grid, launch.shared_bytes, tc_m_tiles(launches),
           int(launch.scalars[-2]), bool(launch.scalars[-1]))
    assert ran == (tp.grid, tp.shared_bytes, tp.m_tiles, tp.band_h, tp.slab), (
        f"{case.label}: the launch {ran} is not the plan {tp}: the launch sequence no longer "
        "runs tc_plan's pick; update tc_plan_of in tests/test_emulator_sanitizer.py")
    return tp


def simt_extent(launches):
    return tuple(int(a) for a in template_args(launches[0].name)[-2:])


def simt_uses_halo(geom, dtype):
    return simt.plan(dtype, geom.batch, geom.channels, geom.depth_multiplier,
                     geom.filters, geom.in_size, geom.out_size, geom.kernel,
                     geom.strides, geom.dilation, geom.channels_first).use_halo


@dataclasses.dataclass(frozen=True)
class Case:
    """A plan shape to cover: the first geometry of the search space (batches x spatial
    sizes x channels x filters, smallest work first) whose launches satisfy `wants`."""

    label: str
    dtype: str
    wants: object              # (case, launches, geom) -> bool
    kernel: object = 3
    rank: int = 2
    strides: object = 1
    dilation: object = 1
    padding: str = "same"
    data_format: str = "channels_last"
    multiplier: int = 1
    activation: str = "relu"
    allow_tf32: bool = False
    batches: tuple = (1, 2)
    spatial: tuple = ((4, 4), (6, 7), (8, 8), (12, 12))
    channels: tuple = (16, 32)
    filters: tuple = (16, 40)
    # Run only this many blocks of each launch (first, last, evenly spaced between), for
    # plans that exist only for large grids: the tensor-core planner picks MT = 2 and 4
    # for 100+ tiles (MT = 1 below). Outputs of the blocks run are checked.
    max_blocks: object = None


def _tc(split=False, resident=False, strips=None, after=(), **fields):
    """`fields`: TcPlan field -> the value wanted, or a predicate on it. `split`: channel
    splits (then the reduce launch); `resident`: several filter blocks (A resident)."""
    def wants(case, launches, geom):
        if kinds(launches) != ["tc"] + (["tc_reduce"] if split else []) + list(after):
            return False
        tp = tc_plan_of(case, geom, launches)
        return ((tp.k_splits > 1) == split and (tp.filter_blocks > 1) == resident
                and (strips is None or tc.tc_uses_strips(geom) == strips)
                and all(v(getattr(tp, k)) if callable(v) else getattr(tp, k) == v
                        for k, v in fields.items()))
    return wants


def banded(band_h):
    return band_h > 1


def _simt(extent, halo=True, after=()):
    def wants(case, launches, geom):
        return (kinds(launches) == ["simt"] + list(after) and simt_extent(launches) == extent
                and simt_uses_halo(geom, case.dtype) == halo)
    return wants


CASES = (
    # tensor cores: small grids plan MT = 1; MT = 2 and 4 need 100+ tiles (sampled blocks)
    Case("tc-mt1-generic-extent-slab", "float16", _tc(m_tiles=1, slab=True), kernel=(2, 2)),
    Case("tc-mt1-strips-bands", "float16", _tc(strips=True, m_tiles=1, slab=False, band_h=banded),
         activation="gelu"),
    Case("tc-stride2-resident-filter-blocks", "float16",
         _tc(resident=True, strips=False, a_slots=lambda slots: slots > 1), strides=2,
         activation="linear", channels=(64,), filters=(300,)),
    Case("tc-tf32-split-reduce", "float32", _tc(split=True), allow_tf32=True,
         activation="elu", channels=(64, 128), spatial=((2, 2), (4, 4))),
    # 31 rows: a last band of 7 rows and a last tile of 8 positions (the last block runs)
    Case("tc-mt2-strips", "float16", _tc(strips=True, m_tiles=2), activation="linear",
         batches=(8,), spatial=((31, 127), (32, 128)), channels=(16,), filters=(16,),
         max_blocks=3),
    Case("tc-mt4-generic-extent", "float16", _tc(m_tiles=4), kernel=(2, 2), activation="linear",
         batches=(8,), spatial=((64, 128),), channels=(16,), filters=(16,), max_blocks=3),
    Case("tc-softmax", "float16", _tc(after=["softmax"]), activation="softmax"),
    Case("tc-bfloat16", "bfloat16", _tc(m_tiles=1)),
    Case("simt-float32-3x3", "float32", _simt((3, 3)), channels=(8,), filters=(20,)),
    Case("simt-float64-generic-channels-first", "float64", _simt((0, 0)), kernel=(2, 4),
         strides=2, multiplier=2, data_format="channels_first", activation="selu",
         channels=(5,), filters=(7,)),
    Case("simt-float16-1d-filter-blocks", "float16", _simt((1, 3)), rank=1,
         spatial=((1, 40),), channels=(6,), filters=(70,)),
    Case("simt-float32-no-halo", "float32", _simt((0, 0), halo=False), dilation=40,
         channels=(4,), filters=(8,), spatial=((8, 8),)),
    Case("simt-bfloat16-generic", "bfloat16", _simt((0, 0)), multiplier=2, channels=(5,),
         filters=(9,)),
    Case("simt-float64-log-softmax", "float64", _simt((0, 0), after=["softmax"]),
         kernel=(3, 2), data_format="channels_first", activation="log_softmax",
         channels=(3,), filters=(9,)),
)


def _geometry(case, batch, spatial, channels, filters):
    spatial = spatial[2 - case.rank:]
    strides, padding, data_format, dilation = geometry.normalize_call_args(
        case.rank, case.strides, case.padding, case.data_format, case.dilation)
    kernel = geometry.normalize_tuple(case.kernel, case.rank, "kernel")
    cf = data_format == "channels_first"
    x_shape = (batch,) + ((channels,) + spatial if cf else spatial + (channels,))
    return x_shape, geometry.make_geometry(
        case.rank, x_shape, kernel + (channels, case.multiplier),
        (1,) * case.rank + (channels * case.multiplier, filters), (filters,),
        strides, padding, data_format, dilation)


def _launches(case, geom, x_strides):
    return launch_sequence(case.dtype, geom, activations.get(case.activation),
                           x_strides, True, case.allow_tf32, True)[0]


def find_geometry(case):
    """(x_shape, geometry, launches) of the smallest candidate the planner plans as the
    case wants."""
    candidates = sorted(itertools.product(case.batches, case.spatial, case.channels, case.filters),
                        key=lambda c: c[0] * c[1][0] * c[1][1] * c[2] * c[3])
    for batch, spatial, channels, filters in candidates:
        x_shape, geom = _geometry(case, batch, spatial, channels, filters)
        x_strides = np.cumprod((1,) + x_shape[:0:-1])[::-1]   # contiguous, in elements
        strides = input_element_strides(x_shape, x_strides, 1, geom)
        launches = _launches(case, geom, strides)
        if case.wants(case, launches, geom):
            return x_shape, geom, launches
    raise AssertionError(f"{case.label}: no geometry of the search space is planned that way any "
                         "more; widen the case's search space (the planner changed)")


@pytest.fixture(scope="module")
def planned():
    return {case.label: (case, *find_geometry(case)) for case in CASES}


def build(names, source=None, checks=CHECKS):
    """The driver built with each check, the builds in parallel."""
    with concurrent.futures.ThreadPoolExecutor(len(checks)) as pool:
        builds = {c: pool.submit(sanitizer.SanitizedEmulator, names, c, source) for c in checks}
        return {c: b.result() for c, b in builds.items()}


@pytest.fixture(scope="module")
def drivers(planned):
    names = sorted({launch.name for _, _, _, launches in planned.values() for launch in launches})
    return build(names)


def bfloat16_values(bits):
    """uint16 bfloat16 bit patterns -> their float64 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def separable_conv_bfloat16(emulator, x, dk, pk, b, geom, act):
    """emu.separable_conv for bfloat16, which NumPy lacks: the input and output as bit
    patterns in uint16 arrays (which emu.separable_conv would take for integers), the
    launch sequence planned for "bfloat16". Returns y's values (float64) and the launches."""
    strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    launches, apply_after = launch_sequence("bfloat16", geom, act, strides, True)
    assert not apply_after
    y = np.full(geom.output_shape, 0xFFFF, np.uint16)   # NaN: every output must be written
    emu.run(emulator, launches, x, y, lambda layout: prepare_weights(np, layout, dk, pk, b))
    return bfloat16_values(y), launches


def run_case(emulator, case, x_shape, geom, seed=0):
    """The case's convolution through `emulator` (the planner's launch sequence), checked
    against the float64 reference; returns its launches. A sampled launch is checked on
    the outputs its blocks that ran own (`written_by_sampled_blocks`), the others must stay
    NaN (poisoned)."""
    rng = np.random.default_rng(seed)
    bf16 = case.dtype == "bfloat16"
    x, dk, pk, b = random_case(rng, case.rank, x_shape, case.kernel, case.multiplier,
                               geom.filters, "float32" if bf16 else case.dtype,
                               channels_first=case.data_format == "channels_first")
    act = activations.get(case.activation)
    if case.max_blocks:
        emulator = emulator.sampling(case.max_blocks)
    if bf16:
        # inputs and weights rounded to bfloat16: the reference sees the values computed with
        x = round_to_bfloat16_bits(np, x)
        dk, pk = (bfloat16_values(round_to_bfloat16_bits(np, w)) for w in (dk, pk))
    before = x.copy()
    if bf16:
        y, launches = separable_conv_bfloat16(emulator, x, dk, pk, b, geom, act)
    else:
        y, launches = emu.separable_conv(emulator, x, dk, pk, b, geom, act, case.allow_tf32)
    np.testing.assert_array_equal(x, before)  # the input is never written
    if bf16:
        x = bfloat16_values(x)
    reference = reference_separable_conv(x, dk, pk, b, geom, act)
    # what the blocks that ran own, from the plan: each of those outputs must be written,
    # and no other (the rest stays poisoned)
    ran = sanitizer.written_by_sampled_blocks(launches, geom, case.max_blocks)
    assert ran.any() and np.isnan(y[~ran]).all()
    if bf16:
        # as tests/test_tensor_core_kernel.py: u = 2^-8, bfloat16's unit roundoff; the
        # depthwise result rounded once (to the mma operand; SIMT: none), the output once
        u, linear = 2.0 ** -8, activations.get("linear")
        magnitude = np.max(reference_separable_conv(np.abs(x), np.abs(dk), np.abs(pk), None,
                                                    geom, linear))
        error = np.abs(y[ran] - reference[ran])
        assert np.all(error <= 2 * u * (magnitude + np.abs(reference[ran])) + 1e-6), error.max()
    else:
        # TF32 operands have float16's 10-bit mantissa: float16's tolerance
        assert_matches(y[ran], reference[ran], dtype="float16" if case.allow_tf32 else case.dtype)
    return launches


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("label", [case.label for case in CASES])
def test_sanitizer_finds_nothing(drivers, planned, check, label):
    case, x_shape, geom, planned_launches = planned[label]
    launches = run_case(drivers[check], case, x_shape, geom)
    assert launches == planned_launches


def test_sanitizer_cases_cover_every_kernel_template(planned):
    """Every __global__ template of the kernel source runs in some case."""
    templates = set(re.findall(r"__global__\s+void\s+(?:__\w+__\([^)]*\)\s+)*(\w+)\s*\(",
                               kernel_cache.kernel_source()))
    ran = {launch.name.split("<")[0] for _, _, _, launches in planned.values() for launch in launches}
    assert len(templates) >= 4 and templates == ran, (templates, ran)


# --- mutations: each must make its sanitizer fail --------------------------------------

def mutate(source, pattern, replacement, what):
    """`source` with the one match of the regex `pattern` replaced."""
    found = len(re.findall(pattern, source))
    assert found == 1, (
        f"mutation '{what}': the kernel source has {found} matches of {pattern!r}, not one; "
        "the kernels changed: update this mutation in tests/test_emulator_sanitizer.py")
    return re.sub(pattern, replacement, source)


def report_of(run, mutation):
    """The SanitizerError message of `run()`, which must fail."""
    try:
        run()
    except sanitizer.SanitizerError as failure:
        return str(failure)
    pytest.fail(f"the sanitizer saw nothing wrong with the mutation '{mutation}': if the kernels "
                "changed so that it is harmless now, update it in tests/test_emulator_sanitizer.py")


def without_barrier_before(marker):
    """Pattern of the last `__syncthreads();` before the line holding `marker`."""
    return r"__syncthreads\(\);(?=(?:(?!__syncthreads)[\s\S])*?" + re.escape(marker) + ")"


RACES = {
    # sepconv_simt: the pointwise stage reads Ds, which other warps' depthwise wrote
    "simt-float32-3x3": "// ---- 3. pointwise: acc",
    # sepconv_tc: the epilogue's Cs reuses the pipeline buffers other warps' mma still read
    "tc-mt1-strips-bands": "// ---- epilogue: Cs",
    # sepconv_simt: its epilogue's Cs reuses Ds and Ws, which other warps' last pointwise
    # still reads; then the activation pass reads values other threads wrote to Cs
    "simt-float64-generic-channels-first": "// this thread's micro-tile: Cs rows",
    "simt-float16-1d-filter-blocks": "// One uniform dispatch around a rolled loop",
    # ... and the stores read values other threads' activation pass wrote
    "simt-bfloat16-generic": "// Quads of 4 row-consecutive values",
}


@pytest.mark.parametrize("label", sorted(RACES))
def test_sanitizer_racecheck_finds_a_removed_barrier(planned, label):
    case, x_shape, geom, launches = planned[label]
    mutation = f"remove the barrier before {RACES[label]}"
    source = mutate(kernel_cache.kernel_source(), without_barrier_before(RACES[label]),
                    "/* barrier removed by the test */", mutation)
    racecheck = build([launches[0].name], source, ["racecheck"])["racecheck"]
    report = report_of(lambda: run_case(racecheck, case, x_shape, geom), mutation)
    assert "ThreadSanitizer: data race" in report and "smem_raw" in report
    assert f"reported in kernel {launches[0].name}, block " in report, report


def test_sanitizer_memcheck_finds_a_load_past_the_end(planned):
    """sepconv_simt stages the depthwise weights of channel slot k == K too: it reads one
    element past the end of the weights (their last tap) and never uses it, so the result
    is still right (the plain build passes) while memcheck fails."""
    case, x_shape, geom, launches = planned["simt-float32-3x3"]
    assert geom.intermediate_channels % 16, "the mutation needs a chunk with a slot past K"
    mutation = "widen the depthwise-weight bound"
    source = mutate(kernel_cache.kernel_source(), r"(Wd\[i\] = k )<( K \? load_ro\(dwk)", r"\1<=\2",
                    mutation)
    builds = build([launches[0].name], source, ["memcheck", "plain"])
    run_case(builds["plain"], case, x_shape, geom)
    report = report_of(lambda: run_case(builds["memcheck"], case, x_shape, geom), mutation)
    assert "AddressSanitizer: heap-buffer-overflow" in report and "READ of size 4" in report
    assert "0 bytes past the end of argument 1 " in report, report  # dwk
    assert f"reported in kernel {launches[0].name}, block 0, thread " in report, report


# --- sepconv_simt's epilogue tile: within the planned shared memory ---------------------

def _simt_filter_block(bf):
    def wants(case, launches, geom):
        return kinds(launches) == ["simt"] and simt.simt_plan(case.dtype, geom).bf == bf
    return wants


EPILOGUE_DTYPES = ("float32", "float64")   # 4- and 8-byte accumulators


@pytest.fixture(scope="module")
def epilogue_memcheck():
    """One memcheck driver with the generic-extent SIMT kernel of each dtype and layout."""
    names = [simt.simt_name(dtype, cf, kernel_common.GENERIC_EXTENT)
             for dtype in EPILOGUE_DTYPES for cf in (False, True)]
    return build(names, checks=["memcheck"])["memcheck"].sampling(2)


@pytest.mark.parametrize("dtype", EPILOGUE_DTYPES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_simt_epilogue_tile_fits_the_planned_shared_memory(epilogue_memcheck, dtype, data_format):
    """The epilogue's tile Cs reuses the mainloop's shared memory and, with little halo (a
    1x1 kernel over few channels), outgrows it. For each filter block the planner picks
    for some geometry, memcheck runs two blocks (each block's Cs covers the same bytes)
    clean; where the planner reckons the tile the larger use, one byte less shared memory
    must fail: the planned bytes are what the kernel's tile indexing needs, no fewer."""
    cf = data_format == "channels_first"
    name = simt.simt_name(dtype, cf, kernel_common.GENERIC_EXTENT)
    memcheck = epilogue_memcheck
    acc_itemsize = kernel_common.DTYPES[dtype][2]
    tile_binds = 0
    for bf in simt.FILTER_BLOCKS:
        case = Case(f"simt-{dtype}-{data_format}-bf{bf}", dtype, _simt_filter_block(bf),
                    kernel=1, data_format=data_format, spatial=((4, 4), (112, 112)),
                    channels=(1, 4), filters=(4,), max_blocks=2)
        x_shape, geom, launches = find_geometry(case)
        assert [launch.name for launch in launches] == [name]
        run_case(memcheck, case, x_shape, geom)
        if launches[0].shared_bytes == simt.epilogue_bytes(bf, cf, acc_itemsize):
            tile_binds += 1
            short = [dataclasses.replace(launches[0], shared_bytes=launches[0].shared_bytes - 1)]
            x, dk, pk, b = random_case(np.random.default_rng(0), 2, x_shape, 1, 1, geom.filters,
                                       dtype, channels_first=cf)
            y = np.empty(geom.output_shape, x.dtype)
            mutation = f"one byte less shared memory than planned ({case.label})"
            report = report_of(lambda: emu.run(memcheck, short, x, y, lambda layout: prepare_weights(
                np, layout, dk, pk, b)), mutation)
            assert "smem_raw" in report and f"reported in kernel {name}, block 0, thread " in report, report
    assert tile_binds, "no plan here needs more shared memory for its tile than its mainloop"


# --- the driver on tiny kernels: both ends of an array, barriers and warp collectives ------

PROBES = r"""
// b[i] = a[i + shift] for i < n: shift -1 reads before a, +1 past its end
__global__ void probe_copy(const float* a, float* b, int n, int shift) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) b[i] = a[i + shift];
}

// Every thread writes its shared slot and reads its neighbour's in the next warp (mode 0:
// no barrier, 1: __syncthreads), or the next lane's in its own warp after __syncwarp (2).
__global__ void probe_exchange(float* out, int mode) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* s = reinterpret_cast<float*>(smem_raw);
    const unsigned t = threadIdx.x, n = blockDim.x;
    s[t] = float(t + 1000 * blockIdx.x);
    if (mode == 1) __syncthreads();
    if (mode == 2) __syncwarp();
    const unsigned other = mode == 2 ? (t & ~31u) | ((t + 1) & 31u) : (t + 32) % n;
    out[blockIdx.x * n + t] = s[other];
}

// Thread 0 reads the float at byte `at` of the dynamic shared memory.
__global__ void probe_shared_read(float* out, int at) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (threadIdx.x == 0) out[0] = *reinterpret_cast<const float*>(smem_raw + at);
}
"""
PROBE_NAMES = ["probe_copy", "probe_exchange", "probe_shared_read"]


@pytest.fixture(scope="module")
def probes():
    return build(PROBE_NAMES, PROBES)


@pytest.mark.parametrize("shift, where", [(-1, "4 bytes before argument 0"),
                                          (1, "0 bytes past the end of argument 0")])
def test_sanitizer_memcheck_sees_both_ends_of_an_array(probes, shift, where):
    a = np.arange(64, dtype=np.float32)
    b = np.zeros(64, np.float32)
    args = (a, b, np.int32(64), np.int32(0))
    probes["memcheck"].launch("probe_copy", 2, 32, args, 0)  # in bounds: no report
    np.testing.assert_array_equal(b, a)
    with pytest.raises(sanitizer.SanitizerError) as failure:
        probes["memcheck"].launch("probe_copy", 2, 32, args[:3] + (np.int32(shift),), 0)
    report = str(failure.value)
    thread = "block 0, thread 0 " if shift < 0 else "block 1, thread 31 "
    assert "reported in kernel probe_copy, " + thread in report and where in report, report


def test_sanitizer_memcheck_sees_a_read_past_the_shared_memory(probes):
    out = np.zeros(1, np.float32)
    probes["memcheck"].launch("probe_shared_read", 1, 32, (out, np.int32(252)), 256)
    assert np.isnan(out[0])  # the last float: never written, NaN-poisoned
    with pytest.raises(sanitizer.SanitizerError) as failure:
        probes["memcheck"].launch("probe_shared_read", 1, 32, (out, np.int32(256)), 256)
    report = str(failure.value)
    assert "smem_raw" in report and "reported in kernel probe_shared_read, block 0, thread 0 " in report, report


@pytest.mark.parametrize("mode, race", [(0, True), (1, False), (2, False)])
def test_sanitizer_racecheck_sees_unordered_shared_memory(probes, mode, race):
    out = np.zeros(2 * 64, np.float32)
    run = lambda: probes["racecheck"].launch("probe_exchange", 2, 64, (out, np.int32(mode)), 256)
    if race:
        with pytest.raises(sanitizer.SanitizerError) as failure:
            run()
        assert "data race" in str(failure.value) and "kernel probe_exchange" in str(failure.value)
    else:
        run()
        t = np.arange(64)
        other = (t & ~31) | ((t + 1) & 31) if mode == 2 else (t + 32) % 64
        np.testing.assert_array_equal(out, np.concatenate([other + 1000 * b for b in (0, 1)]))


def test_sanitizer_driver_refuses_a_mistyped_scalar(probes):
    a, b = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(sanitizer.SanitizerError, match="argument 2 is of kind 'f', the parameter of kind 'i'"):
        probes["memcheck"].launch("probe_copy", 1, 32, (a, b, np.float32(4), np.int32(0)), 0)
    with pytest.raises(sanitizer.SanitizerError, match="argument 3 has 8 bytes, the parameter 4"):
        probes["memcheck"].launch("probe_copy", 1, 32, (a, b, np.int32(4), np.int64(0)), 0)
