"""The CUDA kernels' logic, checked on the CPU against the float64 reference.

The kernel source is compiled for the host with a shim of the CUDA execution model
(tests/_cuda_host_emulator.py) and launched by the CUDA backend itself (`emu.separable_conv`:
`cuda_backend` on the stand-in, benchmarks/fake_cupy.py's fake CuPy whose launches the
emulator executes). No GPU, no CuPy: needs a C++20 compiler and the CUDA headers
(cuda_fp16.h). Timing, races and GPU math-library
accuracy are left to the GPU tests (tests/test_cuda_backend.py).
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import kernel_common, simt
from sepconv_gpu.backends.cuda.launch import (
    input_element_strides, launch_sequence, prepare_weights)
from sepconv_gpu.backends.cpu.numpy_backend import reference_separable_conv

from _cases import (
    assert_matches, conv_configs, examples, input_shape, random_case, recorded_kernel_parameters,
    stable_seed, tensor_core_emulator_names)

try:
    import _cuda_host_emulator as emu  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu


@pytest.fixture(scope="module")
def emulator_names():
    # the SIMT and softmax kernels these cases launch (a few CPU-seconds of host
    # compilation); a case planned onto the tensor-core kernel builds it on first launch
    return simt.simt_name_expressions()


def make_case(rng, rank, x_shape, kernel, multiplier, filters, strides=1, padding="valid",
              data_format="channels_last", dilation=1, activation=None, dtype="float32",
              bias=True):
    strides, padding, data_format, dilation = geometry.normalize_call_args(
        rank, strides, padding, data_format, dilation)
    x, dk, pk, b = random_case(rng, rank, x_shape, kernel, multiplier, filters, dtype, bias,
                               channels_first=data_format == "channels_first")
    geom = geometry.make_geometry(rank, x.shape, dk.shape, pk.shape, None if b is None else b.shape,
                                  strides, padding, data_format, dilation)
    return x, dk, pk, b, geom, activations.get(activation)


def check(emulator, x, dk, pk, b, geom, act, allow_tf32=False):
    before = x.copy()
    y, launches = emu.separable_conv(emulator, x, dk, pk, b, geom, act, allow_tf32)
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(x, before)  # the input is never written
    # TF32 operands have float16's 10-bit mantissa: float16's tolerance
    assert_matches(y, ref, dtype="float16" if allow_tf32 else None)
    return launches


CASES = [
    # rank, x_shape, kernel, M, F, strides, padding, data_format, dilation
    (2, (2, 9, 11, 5), 3, 1, 7, 1, "same", "channels_last", 1),
    (2, (2, 5, 9, 11), 3, 2, 7, 2, "same", "channels_first", 1),
    (2, (1, 12, 10, 3), (3, 5), 3, 9, (2, 1), "valid", "channels_last", 1),
    (2, (1, 3, 12, 10), (2, 4), 1, 70, 1, "same", "channels_first", (2, 3)),
    (2, (3, 7, 7, 20), 5, 1, 33, 1, "same", "channels_last", 1),
    (2, (1, 1, 1, 4), 1, 2, 3, 1, "valid", "channels_last", 1),
    (2, (2, 6, 17, 17), 3, 1, 130, 3, "same", "channels_first", 1),
    (1, (2, 40, 5), 4, 3, 9, 1, "causal", "channels_last", 2),
    (1, (2, 5, 40), 3, 1, 9, 2, "same", "channels_first", 1),
    (1, (1, 700, 8), 31, 1, 16, 1, "same", "channels_last", 1),
    (1, (2, 3, 33), 3, 17, 5, 1, "valid", "channels_first", 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-{c[1]}-k{c[2]}-{c[7]}")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_layouts_ranks_paddings(emulator, case, dtype):
    rank, shape, kernel, m, f, s, padding, df, d = case
    rng = np.random.default_rng(stable_seed(case, dtype))
    check(emulator, *make_case(rng, rank, shape, kernel, m, f, s, padding, df, d, "relu", dtype))


@pytest.mark.parametrize("name", activations.NAMES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_every_activation(emulator, name, data_format, dtype):
    """Each activation in the epilogue of each dtype's kernel (float64's math in float64:
    a float64 erf computed in float32 is 1e-7 off)."""
    rng = np.random.default_rng(7)
    shape = (2, 6, 7, 5) if data_format == "channels_last" else (2, 5, 6, 8)  # glu: even last axis
    check(emulator, *make_case(rng, 2, shape, 3, 2, 6, 1, "same", data_format, 1, name, dtype))


KERNEL_PARAMETERS = recorded_kernel_parameters()


@pytest.mark.parametrize("label", sorted(KERNEL_PARAMETERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_recorded_activation_parameters(emulator, label, dtype):
    """The non-default parameters recorded from Keras (ELU's alpha 0.5, ...) reach the
    SIMT kernel's epilogue: the launch carries it and the output is the reference's."""
    act = KERNEL_PARAMETERS[label]
    rng = np.random.default_rng(stable_seed(label, dtype))
    x, dk, pk, b, geom, resolved = make_case(rng, 2, (2, 6, 7, 5), 3, 1, 6, 1, "same",
                                             activation=act, dtype=dtype)
    launches = check(emulator, x, dk, pk, b, geom, resolved)
    assert launches[0].kind == "simt" and launches[0].scalars[-1] == act.kernel_param


def test_unfusable_activation_is_applied_after(emulator):
    rng = np.random.default_rng(3)
    launches = check(emulator, *make_case(rng, 2, (1, 5, 5, 3), 3, 1, 4, activation=lambda t: t * 3 - 1))
    assert launches[0].scalars[-2] == kernel_common.activation_index("linear") and len(launches) == 1


def test_activation_parameter_is_passed(emulator):
    rng = np.random.default_rng(4)
    import functools

    act = functools.partial(activations.leaky_relu, negative_slope=0.37)
    x, dk, pk, b, geom, resolved = make_case(rng, 1, (2, 30, 4), 3, 1, 5, activation=act, dtype="float64")
    assert resolved.kernel_param == 0.37
    check(emulator, x, dk, pk, b, geom, resolved)


def test_without_halo_fallback(emulator):
    # a 3x3 kernel dilated by 40: no tile's halo fits shared memory -> global gather path
    rng = np.random.default_rng(5)
    case = make_case(rng, 2, (1, 90, 85, 20), 3, 1, 10, 1, "same", "channels_last", 40)
    launches = check(emulator, *case)
    plan = simt.plan("float32", 1, 20, 1, 10, (90, 85), (90, 85), (3, 3), (1, 1), (40, 40))
    assert not plan.use_halo and launches[0].name.endswith("0, 0>")


def test_many_blocks_and_filter_blocks(emulator):
    rng = np.random.default_rng(6)
    launches = check(emulator, *make_case(rng, 2, (4, 19, 21, 18), 3, 1, 150, 1, "same"))
    assert launches[0].grid >= 4 * 9 * 3


@pytest.mark.parametrize("view", ["negative", "every_other_channel", "transposed", "odd_byte_strides"])
def test_strided_inputs(emulator, view):
    """Views the kernel reads through their strides, and one whose rows are not a whole
    number of elements apart, which the backend copies first (`_CallPlan.copy_input`)."""
    rng = np.random.default_rng(8)
    x, dk, pk, b, geom, act = make_case(rng, 2, (2, 8, 9, 6), 3, 2, 5, 1, "same", "channels_last")
    if view == "odd_byte_strides":  # rows 2 bytes longer than their 9 x 6 elements
        n, h, w, c = x.shape
        row = w * c * x.itemsize + 2
        odd = np.ndarray(x.shape, x.dtype, np.zeros(n * h * row, np.uint8), 0,
                         (h * row, row, c * x.itemsize, x.itemsize))
        odd[...] = x
        assert input_element_strides(odd.shape, odd.strides, odd.itemsize, geom) is None
        x = odd
    elif view == "negative":
        x = np.ascontiguousarray(x[:, ::-1, ::-1])[:, ::-1, ::-1]
    elif view == "every_other_channel":
        wide = np.zeros(x.shape[:-1] + (12,), x.dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    else:  # channels_last view of channels_first storage
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    assert not x.flags.c_contiguous
    check(emulator, x, dk, pk, b, geom, act)


def test_softmax_over_the_last_axis_as_laid_out(emulator):
    rng = np.random.default_rng(9)
    for data_format, shape in (("channels_last", (2, 5, 6, 3)), ("channels_first", (2, 3, 5, 6))):
        for name in ("softmax", "log_softmax"):
            launches = check(emulator, *make_case(rng, 2, shape, 3, 1, 40, 1, "same", data_format, 1, name))
            assert launches[1].kind == "softmax"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_softmax_kernel_on_nan_and_inf_rows_as_the_activation(emulator, dtype):
    """sepconv_softmax_lastaxis on rows holding NaN / +-inf gives what
    activations.softmax / log_softmax give (issue 18: Keras's [nan, inf, -inf, 0, 1e30,
    -1e30] -> [nan, nan, 0, 0, 0, 0]), NaN where they are NaN; ordinary rows are
    checked by the tests above. Rows longer than a warp (70) test the lanes' merge."""
    inf, nan = np.inf, np.nan
    rows = [[nan, inf, -inf, 0, 1e30, -1e30], [nan, 0, 1, 2, -inf, 3], [inf, 1, 2, -inf, 0, 5],
            [nan, -inf, -inf, nan, -inf, -inf], [-inf] * 6, [inf, inf, 0, 1, 2, 3],
            [0.5, -1, 2, 3, -inf, 1]]
    big = np.random.default_rng(4).normal(size=(3, 70))
    big[0, 37], big[1, 5], big[1, 64], big[2, 40] = nan, inf, -inf, -inf
    for log in (False, True):
        for table in (np.array(rows), big):
            with np.errstate(all="ignore"):
                x = np.where(np.abs(table) > 6e4, table * (dtype != "float16"), table)
                x = x.astype(dtype)  # 1e30 only where the dtype holds it
                expected = (activations.log_softmax if log else activations.softmax)(
                    x.astype(np.float64))
            y = x.copy()
            grid, scalars = simt.softmax_launch(*y.shape)
            emulator.launch(simt.softmax_name(dtype, log), grid,
                            simt.SOFTMAX_THREADS, [y, *scalars], 0)
            y = y.astype(np.float64)
            np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
            finite = ~np.isnan(expected)
            np.testing.assert_allclose(y[finite], expected[finite], rtol=4e-3 if dtype == "float16" else 1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tc_emulator(emulator_for):
    """The tensor-core kernels, built as tests/test_tensor_core_kernel.py builds them (the
    same names: one shared host build)."""
    return emulator_for(tensor_core_emulator_names())


class _Families:
    """An emulator for any launch sequence: the tensor-core kernels from `tc`, the rest from
    `simt`, without building either's kernels again."""

    def __init__(self, simt_emulator, tc_emulator):
        self.simt, self.tc = simt_emulator, tc_emulator

    def launch(self, name, *args):
        return (self.tc if name.startswith("sepconv_tc") else self.simt).launch(name, *args)


def tensor_core_eligible(c):
    """A `conv_configs` case made one the tensor-core kernel may serve: channels_last,
    depth multiplier 1, channels in whole 16-byte groups (8 per group: float16, or float32
    under TF32, which takes 4)."""
    return {**c, "data_format": "channels_last", "multiplier": 1, "channels": 8 * c["channels"]}


def test_random_configurations(emulator, tc_emulator):
    """Random geometries through whichever kernel the dispatch picks, half of them drawn
    where the tensor-core kernel may run (float16, or float32 with TF32): both families must
    be reached."""
    families = _Families(emulator, tc_emulator)
    kinds = set()

    @settings(max_examples=examples(40), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(c=conv_configs(slack=(90, 24), channels=(1, 20), multiplier=(1, 4), filters=(1, 80)),
           tc_case=st.one_of(st.none(), conv_configs(
               slack=(40, 12), channels=(1, 3), multiplier=(1, 1), filters=(1, 40),
               dtypes=("float16", "float32")).map(tensor_core_eligible)))
    def run(c, tc_case):
        c = tc_case or c
        allow_tf32 = tc_case is not None and c["dtype"] == "float32"
        rng = np.random.default_rng(c["seed"])
        launches = check(families, *make_case(
            rng, c["rank"], input_shape(c), c["kernel"], c["multiplier"], c["filters"],
            c["strides"], c["padding"], c["data_format"], c["dilation"], c["activation"],
            c["dtype"], c["use_bias"]), allow_tf32=allow_tf32)
        kinds.add(launches[0].kind)

    run()
    assert kinds == {"simt", "tc"}, kinds


@settings(max_examples=examples(300), deadline=None)
@given(
    dtype=st.sampled_from(sorted(kernel_common.DTYPES)),
    channels=st.integers(1, 3000), multiplier=st.integers(1, 50), filters=st.integers(1, 5000),
    out=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    kernel=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    strides=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dilation=st.tuples(st.integers(1, 30), st.integers(1, 30)),
)
def test_plan_fits_shared_memory_and_covers_the_output(dtype, channels, multiplier, filters, out,
                                                        kernel, strides, dilation):
    p = simt.plan(dtype, 2, channels, multiplier, filters, (500, 500), out, kernel,
                  strides, dilation)
    assert p.bf in simt.FILTER_BLOCKS and p.bp * p.bf == simt.TILE_ELEMS
    assert p.tw & (p.tw - 1) == 0 and p.bp % p.tw == 0
    assert p.shared_bytes <= simt.SMEM_BUDGET
    assert p.tiles_w * p.tw >= out[1] and (p.tiles_img // p.tiles_w) * p.th >= out[0]
    assert p.filter_blocks * p.bf >= filters
    if p.use_halo:  # the halo holds every input a tile position reads
        assert p.halo_h == (p.th - 1) * strides[0] + (kernel[0] - 1) * dilation[0] + 1
        assert p.halo_w == (p.tw - 1) * strides[1] + (kernel[1] - 1) * dilation[1] + 1
        assert p.plane % 2 == 1 and p.plane >= p.halo_h * p.halo_w


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("layout", ["vector", "ragged_channels", "misaligned", "stride2"])
def test_halo_staging_paths(emulator, dtype, layout):
    # channels_last with unit channel stride stages 16 bytes of channels per load when the
    # pixels are 16-byte aligned and the chunk's channels fill whole vectors; anything
    # else (a last chunk of 4 channels, a base address off by one element) stages element
    # by element. Stride 2 stores 4- and 8-byte halos even columns first.
    rng = np.random.default_rng(11)
    channels = 20 if layout == "ragged_channels" else 32
    strides = 2 if layout == "stride2" else 1
    x, dk, pk, b, geom, act = make_case(rng, 2, (2, 9, 10, channels), 3, 1, 20, strides, "same",
                                        "channels_last", 1, "relu", dtype)
    if layout == "misaligned":
        shifted = np.empty(x.size + 1, x.dtype)[1:].reshape(x.shape)
        shifted[...] = x
        x = shifted
        assert x.ctypes.data % 16 != 0
    check(emulator, x, dk, pk, b, geom, act)


def _warp_bank_conflicts(plan, itemsize, strides):
    """Most distinct words one shared-memory bank serves in one depthwise read (tap 0) of
    any warp, simulated from the kernel's halo layout (sepconv_simt.cu, Shared memory)."""
    sh, sw = strides
    split = simt.halo_split(itemsize, sw)
    wsub = (plan.halo_w + 1) // 2
    lanes_per_pass = 16 if itemsize == 8 else 32   # 8-byte loads: a half-warp per pass
    worst = 1
    for first in range(0, plan.bp, lanes_per_pass):
        banks = {}
        for p in range(first, first + lanes_per_pass):
            row, col = divmod(p, plan.tw)
            q = col * sw
            slot = (q & 1) * wsub + (q >> 1) if split else q
            word = (row * sh * plan.pitch + slot) * itemsize // 4
            banks.setdefault(word % 32, set()).add(word)
        worst = max(worst, max(len(words) for words in banks.values()))
    return worst


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("size, stride", [(112, 1), (112, 2), (56, 1), (28, 2), (14, 1), (7, 1),
                                          (19, 1), (37, 1), (10, 2)])
def test_halo_pitch_makes_depthwise_reads_conflict_free(dtype, size, stride):
    out = -(-size // stride)
    itemsize = kernel_common.DTYPES[dtype][1]
    p = simt.plan(dtype, 8, 64, 1, 128, (size, size), (out, out), (3, 3),
                  (stride, stride), (1, 1))
    if dtype == "float64" and stride == 2:
        # no 8-byte stride-2 halo of 16 channels fits 48 KB: gathered from global memory
        assert not p.use_halo
        return
    assert p.use_halo and p.pitch >= p.halo_w
    ways = _warp_bank_conflicts(p, itemsize, (stride, stride))
    # the planner's own belief (what its cost model prices) matches the simulated banks
    col_step = 1 if simt.halo_split(itemsize, stride) else stride
    assert (ways == 1) == simt._rows_disjoint(p.pitch, p.tw, stride, col_step, itemsize), p
    if dtype != "float64":
        # float16 / float32: the planner always lands on a conflict-free pitch for these
        # layers (float64 may trade a 2-way conflict for occupancy where the model says so)
        assert ways == 1, p


def geometry_of(batch, c, m, f, size_in, size_out, kernel, strides, dilation, cf):
    return geometry.ConvGeometry(rank=2, channels_first=cf, batch=batch, channels=c,
                                 depth_multiplier=m, filters=f, in_size=size_in, kernel=kernel,
                                 strides=strides, dilation=dilation, pad_before=(0, 0),
                                 out_size=size_out, use_bias=True)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape", [
    # batch, C, M, F, in, out, kernel, strides, dilation, channels_first
    (32, 128, 1, 128, (56, 56), (56, 56), (3, 3), (1, 1), (1, 1), False),
    (32, 728, 1, 1024, (19, 19), (19, 19), (3, 3), (1, 1), (1, 1), False),
    (8, 256, 1, 256, (1, 1024), (1, 1024), (1, 31), (1, 1), (1, 1), False),
    (4, 24, 3, 40, (30, 30), (15, 15), (5, 5), (2, 2), (1, 1), True),
])
def test_plumbing_plan_carries_the_cost_model_s_price(dtype, shape):
    """Plumbing, not a test of the model (only GPU data tests it): the SIMT planner's
    predicted time (what launches and the benchmark record carry) is the cost model's,
    recomputed with its own functions, for the chosen plan: layout, specialization and
    bank conflicts."""
    from sepconv_gpu.backends.cuda import cost_model

    batch, c, m, f, size_in, size_out, kernel, strides, dilation, cf = shape
    p = simt.plan(dtype, batch, c, m, f, size_in, size_out, kernel, strides, dilation, cf)
    geom = geometry_of(batch, c, m, f, size_in, size_out, kernel, strides, dilation, cf)
    _, in_isz, acc_isz = kernel_common.DTYPES[dtype]
    specialized = simt.kernel_extent(dtype, kernel) != kernel_common.GENERIC_EXTENT
    ways = 1 if simt._rows_disjoint(
        p.pitch, p.tw, strides[0], 1 if simt.halo_split(in_isz, strides[1]) else strides[1],
        in_isz) else 2
    work = cost_model.simt_fused_work(geom, p, in_isz, acc_isz, specialized=specialized,
                                      bank_ways=ways)
    assert p.predicted_us == pytest.approx(cost_model.predict(work).us)
    assert cost_model.DEFAULT_DEVICE.launch_us < p.predicted_us < 1e6


# -- an inf depthwise weight meets `same` padding (issue 18) ---------------------------------
# (rank, x_shape, data_format, dtype, dilation): the SIMT kernel with its shared-memory
# halo in both layouts, the tensor-core kernel (float16, channels_last, C = 8), and the
# SIMT kernel's no-halo path (dilation 40: no halo fits).
INF_CASES = {
    "simt_halo_channels_last": (2, (1, 6, 7, 4), "channels_last", "float32", 1),
    "simt_halo_channels_first": (2, (1, 4, 6, 7), "channels_first", "float64", 1),
    "simt_halo_1d": (1, (2, 9, 3), "channels_last", "float32", 1),
    "tensor_core": (2, (1, 6, 7, 8), "channels_last", "float16", 1),
    "simt_no_halo": (2, (1, 90, 85, 4), "channels_last", "float32", 40),
}


def _inf_case(name):
    rank, shape, data_format, dtype, dilation = INF_CASES[name]
    rng = np.random.default_rng(12)
    x, dk, pk, _ = random_case(rng, rank, shape, 3, 1, 5, dtype, False,
                               channels_first=data_format == "channels_first")
    x, dk, pk = np.abs(x) + 1, np.abs(dk) + 0.5, np.abs(pk) + 0.5  # every product positive
    dk[(0,) * rank + (0, 0)] = np.inf  # the first tap of channel 0
    strides, padding, data_format, dilation = geometry.normalize_call_args(
        rank, 1, "same", data_format, dilation)
    geom = geometry.make_geometry(rank, x.shape, dk.shape, pk.shape, None, strides, padding,
                                  data_format, dilation)
    return x, dk, pk, geom


@pytest.fixture(scope="module")
def inf_emulator(emulator_for):
    """Only the instantiations these cases launch (a few seconds of host compilation)."""
    names = []
    for case in INF_CASES:
        x, dk, pk, geom = _inf_case(case)
        strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
        launches, _ = launch_sequence(x.dtype.name, geom, activations.get(None), strides, False)
        names += [launch.name for launch in launches]
    return emulator_for(names)


@pytest.mark.parametrize("case", sorted(INF_CASES))
def test_inf_depthwise_weight_with_same_padding(inf_emulator, case):
    """The chosen semantics (README, Semantics): zero padding that the taps multiply, so
    outputs whose inf tap falls in the padding are NaN (0 * inf), as the NumPy backend
    and the reference give; Keras (TF's CPU kernel) skips padded taps and keeps them
    finite. The exception, documented: the SIMT kernel's no-halo path (very large dilated
    extents) gathers from global memory and skips padded taps, so there they are finite."""
    x, dk, pk, geom = _inf_case(case)
    with np.errstate(invalid="ignore", over="ignore"):
        y, launches = emu.separable_conv(inf_emulator, x, dk, pk, None, geom, activations.get(None))
        ref = reference_separable_conv(x, dk, pk, None, geom, activations.get(None))
    assert launches[0].name.startswith("sepconv_tc" if case == "tensor_core" else "sepconv_simt")
    padded_tap = np.isnan(ref)  # where tap (0, 0) of channel 0 reads the padding
    assert padded_tap.any() and (np.isposinf(ref) | padded_tap).all()
    if case == "simt_no_halo":
        assert np.isposinf(y[~padded_tap]).all() and np.isfinite(y[padded_tap]).all()
    else:
        np.testing.assert_array_equal(np.isnan(y), padded_tap)
        assert np.isposinf(y[~padded_tap]).all()
# --- bfloat16 (kernel side only: the layers and ops do not take it yet) -----------------

def bfloat16_bits(a):
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even; finite input."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16_bits(b):
    return (np.ascontiguousarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def test_bfloat16_bit_patterns_are_ml_dtypes_rounding():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.random.default_rng(1).normal(size=4096).astype(np.float32)
    a[:4] = (0.0, -0.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8)  # exact ties round to even
    np.testing.assert_array_equal(bfloat16_bits(a), a.astype(ml_dtypes.bfloat16).view(np.uint16))


@pytest.mark.parametrize("activation", ["gelu", "softmax"])
@pytest.mark.parametrize("rank, shape, data_format", [
    (2, (2, 9, 11, 16), "channels_last"),     # 16-byte halo loads
    (2, (2, 5, 9, 11), "channels_first"),
    (1, (2, 40, 5), "channels_last"),
])
def test_bfloat16_kernels(emulator, rank, shape, data_format, activation):
    """The SIMT and softmax kernels on bfloat16 input and output (bit patterns in uint16
    arrays; fp32 accumulation), against the float64 reference on the same rounded input:
    within bfloat16's output rounding (2^-9 relative), and for softmax also the rounding
    of its logits, the first kernel's bfloat16 output (|logit| <= 3 here: an error of up
    to 3 * 2^-9 inside exp, twice that relative to a softmax output)."""
    rng = np.random.default_rng(11)
    x, dk, pk, b, geom, act = make_case(rng, rank, shape, 3, 1, 13, 1, "same", data_format,
                                        activation=activation)
    x_bits = bfloat16_bits(x)
    strides = input_element_strides(x_bits.shape, x_bits.strides, 2, geom)
    # x_aligned=False keeps the channels_last case on the SIMT kernel: an aligned one takes
    # the tensor-core kernel (tests/test_tensor_core_kernel.py::test_tensor_core_bfloat16)
    launches, apply_after = launch_sequence("bfloat16", geom, act, strides, True,
                                            x_aligned=False)
    assert not apply_after and launches[0].name.startswith("sepconv_simt<__nv_bfloat16,")
    y_bits = np.full(geom.output_shape, 0xFFFF, np.uint16)   # NaN: every output written
    emu.run(emulator, launches, x_bits, y_bits,
            lambda layout: prepare_weights(np, layout, dk, pk, b))
    x_rounded = from_bfloat16_bits(x_bits)
    logits = reference_separable_conv(x_rounded, dk, pk, b, geom, activations.get(None))
    assert np.abs(logits).max() <= 3
    ref = reference_separable_conv(x_rounded, dk, pk, b, geom, act)
    rtol = 2.0 ** -8 if activation != "softmax" else 2.0 ** -8 + 2 * 3 * 2.0 ** -9
    np.testing.assert_allclose(from_bfloat16_bits(y_bits), ref, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_gelu_kernel_keeps_its_negative_tail(emulator, dtype, rtol):
    """The fused gelu (erfc form) on pre-activations from -9 to -4, relative to float64
    math.erfc: the sum 1 + erf(x/√2) would be 0 in float32 from about -6 on (a relative
    error of 1) and 4% off at -5. A 1x1 convolution of weight 1 passes x through exactly.
    float32's bound: erfc's argument rounded by 2^-24 moves the result by z² times that
    relatively (z = |x|/√2 ≤ 6.4)."""
    import math

    x = np.linspace(-9, -4, 41).astype(dtype).reshape(1, 41, 1)
    ones = np.ones((1, 1, 1), dtype)
    geom = geometry.make_geometry(1, x.shape, ones.shape, ones.shape, None,
                                  *geometry.normalize_call_args(1, 1, "valid", "channels_last", 1))
    y, launches = emu.separable_conv(emulator, x, ones, ones, None, geom, activations.get("gelu"))
    assert launches[0].scalars[-2] == kernel_common.activation_index("gelu")  # fused
    want = [0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.ravel().astype(np.float64)]
    np.testing.assert_allclose(y.ravel(), want, rtol=rtol, atol=0)
