"""The tensor-core kernel (kernels/sepconv_tc.cu) on the CPU, and the rule that picks it.

The kernel runs in the host emulator (tests/_cuda_host_emulator.py: mma / ldmatrix as warp
collectives with the PTX fragment layouts, cp.async destinations NaN until their wait,
shared memory exactly the planned bytes) through the same kernel choice, weight
preparation and launch sequence as the CUDA backend, and is compared with the float64
NumPy reference. Compiled, emulated on the CPU, never run on a GPU here: the GPU half is
tests/test_tensor_core_gpu.py.

Tolerances (u = 2^-11, the unit roundoff of fp16 and of TF32 with round-to-nearest):
* float16: x and the weights are fp16 already; the depthwise sums in fp32 (error ~taps *
  2^-24, negligible) and is rounded once to the fp16 mma operand (<= u |d_k|); products
  and sums in fp32 (~K * 2^-24); the output is rounded to fp16 (<= u |y|). So
  |y - ref| <= L * u * A + u * |y| + tiny, where A = sum_k |d_k| |P_kf| (computed below as
  the reference on |x|, |D|, |P|) and L bounds the activation's slope (<= 1.76 for selu;
  the others <= 1.2; exponential: e^v, covered by the |y| term's factor because
  e^(v + dv) - e^v ~ e^v dv). We allow 2u (A + |y|): tight enough that a wrong fragment,
  tap or channel (errors ~ A) fails it.
* TF32 (float32 with allow_tf32): both operands of the pointwise mma are rounded to TF32
  (<= u each: 2u A), the depthwise and everything else stay fp32: 2u (A + |y|) again.
A second check compares with a float64 model of exactly those roundings (operands
rounded as the kernel rounds them), to within fp32 accumulation error and one output ulp:
emulator only, which sums an mma exactly and rounds once; tensor cores truncate while
accumulating, so tests/test_tensor_core_gpu.py allows for that instead.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import cost_model, kernel_common, simt, tc
from sepconv_gpu.backends.cuda.launch import (
    _launch_sequence, input_element_strides, launch_sequence, prepare_weights,
    round_to_bfloat16_bits, round_to_tf32, select_kernel, weights_layout)
from sepconv_gpu.backends.cpu.numpy_backend import reference_separable_conv

from _cases import (
    assert_matches, random_case, recorded_kernel_parameters, stable_seed,
    tensor_core_emulator_names)

try:
    import _cuda_host_emulator as emu  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu

U = 2.0 ** -11
LINEAR = activations.get(None)


@pytest.fixture(scope="module")
def emulator_names():
    return tensor_core_emulator_names()


def make_case(rng, rank, x_shape, kernel, filters, strides=1, padding="same", dilation=1,
              activation="relu", dtype="float16", bias=True):
    strides, padding, data_format, dilation = geometry.normalize_call_args(
        rank, strides, padding, "channels_last", dilation)
    x, dk, pk, b = random_case(rng, rank, x_shape, kernel, 1, filters, dtype, bias)
    geom = geometry.make_geometry(rank, x.shape, dk.shape, pk.shape,
                                  None if b is None else b.shape, strides, padding,
                                  data_format, dilation)
    return x, dk, pk, b, geom, activations.get(activation)


def rounding_model(x, dk, pk, b, geom, act):
    """float64 result of the kernel's arithmetic with its roundings: the depthwise output
    and the pointwise weights rounded to the mma operand type (fp16, or TF32 for float32),
    everything else exact. A float16 call whose activation no kernel applies runs the
    float32 (TF32) kernel on a float32 copy of x, the activation in float32 on its result,
    then rounds once (README, "Dtypes")."""
    f64 = np.float64
    in_kernel = act.kernel_id in kernel_common.FUSED_ACTIVATIONS or \
        act.kernel_id in kernel_common.LAST_AXIS_ACTIVATIONS
    channels = geom.channels
    identity = np.eye(channels).reshape((1,) * geom.rank + (channels, channels))
    depthwise_only = dataclasses.replace(geom, filters=channels, use_bias=False)
    d = reference_separable_conv(x.astype(f64), dk.astype(f64), identity, None, depthwise_only,
                                 LINEAR)
    if x.dtype == np.float16 and in_kernel:
        d, p = d.astype(np.float16).astype(f64), pk.astype(np.float16).astype(f64)
    else:
        d = round_to_tf32(np, d.astype(np.float32)).astype(f64)
        p = round_to_tf32(np, pk.astype(np.float32)).astype(f64)
    pointwise_only = dataclasses.replace(geom, kernel=(1, 1), strides=(1, 1), dilation=(1, 1),
                                         pad_before=(0, 0), in_size=geom.out_size)
    one_tap = np.ones((1,) * geom.rank + (channels, 1))
    if act.kernel_id in kernel_common.FUSED_ACTIVATIONS:  # applied in fp32 in the epilogue
        return reference_separable_conv(d, one_tap, p, None if b is None else b.astype(f64),
                                        pointwise_only, act)
    y = reference_separable_conv(d, one_tap, p, None if b is None else b.astype(f64),
                                 pointwise_only, LINEAR)
    if act.kernel_id in kernel_common.LAST_AXIS_ACTIVATIONS:  # the softmax kernel, in fp32
        return np.asarray(act(y.astype(x.dtype).astype(f64)), dtype=f64)
    # any other activation: on the float32 result, then one rounding to x's dtype
    return np.asarray(act(y.astype(np.float32)), dtype=np.float32).astype(x.dtype).astype(f64)


def check(emulator, x, dk, pk, b, geom, act, allow_tf32=False):
    before = x.copy()
    y, launches = emu.separable_conv(emulator, x, dk, pk, b, geom, act, allow_tf32=allow_tf32)
    assert launches[0].name.startswith("sepconv_tc<"), launches[0].name
    np.testing.assert_array_equal(x, before)  # the input is never written
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    assert y.shape == ref.shape and y.dtype == x.dtype
    y64 = y.astype(np.float64)
    magnitude = np.max(reference_separable_conv(
        np.abs(x.astype(np.float64)), np.abs(dk.astype(np.float64)),
        np.abs(pk.astype(np.float64)), None, geom, LINEAR))
    excess = np.abs(y64 - ref) - 2 * U * (magnitude + np.abs(ref))
    assert np.all(excess <= 1e-6), (float(np.max(excess)), launches[0].name, launches[0].scalars)
    # Against the rounding model: fp32 accumulation order and one output ulp only. The
    # kernel's fp32 depthwise and the model's float64 one can round a d_k to different
    # sides of an operand tie (chance ~2^-13 each), so a few elements may miss.
    model = rounding_model(x, dk, pk, b, geom, act)
    ulp = np.spacing(np.abs(model).astype(x.dtype)).astype(np.float64)
    off = np.abs(y64 - model) > ulp + 1e-5 * (magnitude + np.abs(model))
    assert off.sum() <= 1 + off.size // 50, (int(off.sum()), off.size, launches[0].name)
    return launches


# --- the kernel in the emulator -----------------------------------------------------------

GEOMETRIES = [
    # rank, x_shape, kernel, F, strides, padding, dilation
    (2, (1, 6, 6, 8), 3, 8, 1, "same", 1),              # one tile, F one n8 tile
    (2, (2, 9, 11, 16), 3, 20, 2, "same", 1),           # stride 2, ragged tiles
    (2, (1, 7, 9, 24), (2, 3), 70, 1, "same", (2, 1)),  # generic extent, dilation
    (2, (1, 5, 13, 40), 5, 9, (1, 2), "valid", 1),      # K padded 40 -> 64, anisotropic
    (2, (1, 1, 1, 8), 1, 3, 1, "valid", 1),             # 1x1 image, 1x1 kernel
    (2, (1, 3, 70, 8), 3, 7, (2, 1), "same", 1),        # wide image, F < 8
    (2, (1, 4, 4, 16), 3, 300, 1, "same", 1),           # F > 256: two filter blocks
    (2, (1, 6, 5, 72), 3, 33, 1, "same", (1, 3)),       # several channel chunks
    (1, (2, 40, 8), 4, 9, 1, "causal", 2),              # 1D, causal, dilated
    (1, (1, 90, 16), 31, 16, 1, "same", 1),             # 1D long kernel (Conformer-like)
]


@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: f"{c[0]}d-{c[1]}-k{c[2]}-f{c[3]}-s{c[4]}")
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_geometries(emulator, case, mode):
    rank, shape, kernel, f, s, padding, d = case
    dtype = "float16" if mode == "float16" else "float32"
    rng = np.random.default_rng(stable_seed(case, mode))
    check(emulator, *make_case(rng, rank, shape, kernel, f, s, padding, d, "relu", dtype),
          allow_tf32=mode == "tf32")


@pytest.mark.parametrize("shape,strides,dilation,strips", [
    ((1, 8, 16, 16), 1, 1, True),          # sliding-window strips
    ((2, 10, 9, 24), 1, (2, 1), True),     # strips with a dilated height, segments crossed
    ((2, 9, 7, 16), (2, 1), 1, True),      # strips at a height stride
    ((1, 9, 9, 16), 2, 1, False),          # stride 2: one output a thread
    ((1, 8, 12, 16), 1, (1, 2), False),    # dilated width
])
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_depthwise_paths(emulator, shape, strides, dilation, strips, mode):
    dtype = "float16" if mode == "float16" else "float32"
    rng = np.random.default_rng(21)
    case = make_case(rng, 2, shape, 3, 40, strides, "same", dilation, "relu6", dtype)
    geom = case[4]
    tp = tc.tc_plan(dtype, geom, False)
    assert tc.tc_uses_strips(geom) == strips
    check(emulator, *case, allow_tf32=mode == "tf32")


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_channel_splits(emulator, mode, activation):
    """A grid far smaller than the GPU: the planner splits the channels and the reduce
    launch adds the partial sums, the bias and the activation."""
    dtype = "float16" if mode == "float16" else "float32"
    rng = np.random.default_rng(22)
    case = make_case(rng, 2, (2, 7, 7, 256), 3, 40, 1, "same", 1, activation, dtype)
    tp = tc.tc_plan(dtype, case[4], activation is None)
    assert tp.k_splits > 1
    launches = check(emulator, *case, allow_tf32=mode == "tf32")
    assert [launch.kind for launch in launches] == ["tc", "tc_reduce"]
    assert launches[0].partial == tp.k_splits * case[4].output_positions * 40


def run_plan(emulator, dtype, x, weights, y, geom, act, tp):
    """The launches of plan `tp` (launch_sequence's with it: sepconv_tc, and
    sepconv_tc_reduce when the channels are split) on NumPy arrays, on the emulator, the
    partial sums poisoned with NaN."""
    strides_x = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    launches, _ = launch_sequence(dtype, geom, act, strides_x, True, dtype == "float32", plan=tp)
    assert [launch.kind for launch in launches] == ["tc"] + ["tc_reduce"] * (tp.k_splits > 1)
    emu.run(emulator, launches, x, y, lambda layout: weights)


def launch_plan(emulator, x, dk, pk, b, geom, act, tp):
    """The launches of the given plan, checked against the float64 reference with the
    tolerance derived above. The output and the partial sums start as NaN: each must be
    written."""
    dtype = x.dtype.name
    y = np.full(geom.output_shape, np.nan, dtype=x.dtype)
    weights = prepare_weights(np, weights_layout("tc", dtype), dk, pk, b)
    run_plan(emulator, dtype, x, weights, y, geom, act, tp)
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    magnitude = np.max(reference_separable_conv(
        np.abs(x.astype(np.float64)), np.abs(dk.astype(np.float64)),
        np.abs(pk.astype(np.float64)), None, geom, LINEAR))
    assert np.all(np.abs(y.astype(np.float64) - ref) <= 2 * U * (magnitude + np.abs(ref)) + 1e-6), tp


def plan_with(dtype, geom, **want):
    """The cheapest plan the planner considered (any activation, the default device's
    shared memory) with the attributes `want`, e.g. slab=True, band_h=4."""
    every = tc.tc_candidates(dtype, geom, False, count=10**6)
    found = [tp for tp in every if all(getattr(tp, k) == v for k, v in want.items())]
    assert found, f"no candidate with {want} among {len(every)}"
    return found[0]


# (x shape, kernel, F, strides, dilation, plan attributes): every position order and halo
# layout, A double-buffered and resident, with and without channel splits, both warp tiles
PLAN_SHAPES = [
    ((3, 5, 6, 16), 3, 24, 1, 1, dict(slab=True)),                  # slab over 3 images
    ((3, 5, 6, 16), 3, 24, 1, 1, dict(slab=False, band_h=1)),       # row segments, images
    ((2, 9, 11, 16), 3, 20, 1, 1, dict(band_h=2)),                  # bands, strips stacked
    ((2, 9, 11, 16), 3, 20, 1, 1, dict(band_h=4)),                  # last band of 1 row
    ((1, 9, 13, 16), 3, 20, 1, 1, dict(band_h=8, m_tiles=4)),       # tall bands, MT 4
    ((2, 11, 13, 16), (2, 3), 20, 2, 1, dict(band_h=2)),            # generic, stride 2
    ((2, 12, 9, 16), 3, 20, (2, 1), 1, dict(band_h=2)),             # strips at height stride
    ((1, 10, 9, 16), 3, 20, 1, (2, 1), dict(slab=True)),            # slab, dilated height
    ((1, 6, 7, 64), 3, 300, 1, 1, dict(filter_blocks=2, k_splits=1)),   # A resident
    ((1, 6, 7, 64), 3, 300, 1, 1, dict(bn=128, k_splits=2)),        # resident, split
    ((2, 5, 7, 32), 3, 520, 1, 1, dict(m_tiles=4, filter_blocks=3)),    # resident, MT 4
    ((1, 7, 5, 40), 3, 13, 1, 1, dict(k_splits=2, slab=False)),     # split, ragged K and F
    ((2, 6, 7, 32), 3, 300, 1, 1, dict(m_tiles=1, band_h=4)),       # MT 1: BM 32, resident
    ((1, 9, 10, 24), 3, 70, (1, 2), 1, dict(m_tiles=1, slab=True)), # MT 1, slab, stride
]


@pytest.mark.parametrize("case", PLAN_SHAPES, ids=lambda c: "-".join(
    [f"{k}{int(v)}" for k, v in c[-1].items()] + [f"f{c[2]}", "x" + "x".join(map(str, c[0]))]))
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_plan_shapes(emulator, case, mode):
    """Each position order, halo layout and A arrangement the planner can choose, forced
    (whatever the model prefers for this small case), against the float64 reference."""
    shape, kernel, filters, strides, dilation, want = case
    dtype = "float16" if mode == "float16" else "float32"
    rng = np.random.default_rng(31)
    x, dk, pk, b, geom, act = make_case(rng, 2, shape, kernel, filters, strides, "same",
                                        dilation, "relu", dtype)
    tp = plan_with(dtype, geom, **want)
    if tp.filter_blocks > 1:
        assert tp.a_slots == -(-tp.k_pad * x.itemsize // tc.TC_CHUNK_BYTES // tp.k_splits)
    launch_plan(emulator, x, dk, pk, b, geom, act, tp)


@pytest.mark.parametrize("shape,kernel,filters,strides", [
    ((1, 16, 16, 32), 3, 200, 1),     # strips; tiles of 128 valid positions
    ((2, 17, 30, 16), (2, 3), 70, 2), # generic extent, stride 2
])
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_tall_warp_tiles(emulator, shape, kernel, filters, strides, mode):
    """The 64 x 64 warp-tile instantiations (MT = 4), whatever the planner prefers here."""
    dtype = "float16" if mode == "float16" else "float32"
    rng = np.random.default_rng(23)
    x, dk, pk, b, geom, act = make_case(rng, 2, shape, kernel, filters, strides, "same", 1,
                                        "silu", dtype)
    tp = tc.tc_plan(dtype, geom, False, m_tiles=(4,))
    assert tp.m_tiles == 4 and tp.bm * tp.bn == 2 * tc.TC_TILE_ELEMS
    launch_plan(emulator, x, dk, pk, b, geom, act, tp)


@pytest.mark.parametrize("stages", tc.TC_STAGES)
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_every_pipeline_depth(emulator, stages, mode):
    """Both cp.async pipeline depths over more chunks than stages, so every stage is
    reused: the other cases reach 3 stages (the planner's choice when 4 do not fit) only
    with one or two chunks, and the 3-stage wait (wait_group 0) differs from the 4-stage
    one. The emulator performs a copy only at the wait that covers it: a wait that lets
    the chunk about to be read stay in flight leaves NaN in the result."""
    dtype = "float16" if mode == "float16" else "float32"
    rng = np.random.default_rng(24)
    channels = 5 * tc.TC_CHUNK_BYTES // np.dtype(dtype).itemsize   # 5 chunks
    x, dk, pk, b, geom, act = make_case(rng, 2, (1, 6, 7, channels), 3, 24, 1, "same", 1,
                                        "relu", dtype)
    tp = tc.tc_plan(dtype, geom, False, m_tiles=(2,))
    tp = dataclasses.replace(
        tp, stages=stages, k_splits=1, grid=tp.grid // tp.k_splits,
        shared_bytes=tc._tc_shared_bytes(tp.bm, tp.bn, stages, tp.halo_h,
                                         tp.halo_ws * geom.strides[1], 9, tp.a_slots,
                                         tp.filter_blocks))
    assert tp.k_pad // (tc.TC_CHUNK_BYTES // x.itemsize) > stages
    launch_plan(emulator, x, dk, pk, b, geom, act, tp)


def bfloat16_values(bits):
    """uint16 bfloat16 bit patterns -> their float64 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def test_tensor_core_bfloat16_rounding_is_nearest_even():
    one = 2.0 ** -7   # bfloat16 spacing in [1, 2)
    values = np.array([1 + one / 2, 1 + 1.5 * one, -(1 + one / 2), 1 + one / 2 + 2**-20,
                       np.inf, -np.inf, 0.0, 3.0, np.nan], dtype=np.float32)
    out = bfloat16_values(round_to_bfloat16_bits(np, values))
    expected = [1.0, 1 + 2 * one, -1.0, 1 + one, np.inf, -np.inf, 0.0, 3.0, np.nan]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("case", [PLAN_SHAPES[i] for i in (0, 2, 5, 8, 9, 12)],
                         ids=lambda c: "-".join([f"{k}{int(v)}" for k, v in c[-1].items()]))
def test_tensor_core_bfloat16(emulator, case):
    """The bf16 variant (mma.m16n8k16.bf16, fp32 accumulation), with inputs and weights as
    bfloat16 bit patterns (NumPy has no bfloat16), against the float64 reference on the
    bfloat16 values. Tolerance as above with u = 2^-8 (bfloat16's unit roundoff): the
    depthwise result rounded once to the operand, the output once."""
    shape, kernel, filters, strides, dilation, want = case
    rng = np.random.default_rng(41)
    x32, dk, pk, b, geom, act = make_case(rng, 2, shape, kernel, filters, strides, "same",
                                          dilation, "relu", "float32")
    x_bits = round_to_bfloat16_bits(np, x32)
    dk = bfloat16_values(round_to_bfloat16_bits(np, dk))
    pk = bfloat16_values(round_to_bfloat16_bits(np, pk))
    tp = plan_with("bfloat16", geom, **want)
    weights = prepare_weights(np, "tc:bfloat16", dk, pk, b)
    assert weights[0].dtype == weights[1].dtype == np.uint16
    y = np.full(geom.output_shape, 0xFFFF, np.uint16)   # NaN: every element must be written
    run_plan(emulator, "bfloat16", x_bits, weights, y, geom, act, tp)
    x = bfloat16_values(x_bits)
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    magnitude = np.max(reference_separable_conv(np.abs(x), np.abs(dk), np.abs(pk), None, geom,
                                                LINEAR))
    u = 2.0 ** -8
    got = bfloat16_values(y)
    assert np.all(np.abs(got - ref) <= 2 * u * (magnitude + np.abs(ref)) + 1e-6), tp


def _random_geometry(seed):
    """A random small TC-eligible geometry (channels a multiple of 8, any F)."""
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 3))
    kernel = tuple(int(k) for k in rng.integers(1, 6, rank))
    strided = rng.random() < 0.5
    strides = tuple(int(s) for s in rng.integers(1, 3, rank)) if strided else (1,) * rank
    dilation = (1,) * rank if strided else tuple(int(v) for v in rng.integers(1, 3, rank))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    spatial = tuple(int(rng.integers(sp, sp + (12 if rank == 2 else 40))) for sp in span)
    channels = 8 * int(rng.integers(1, 6))
    filters = int(rng.choice([1, 5, 8, 13, 16, 31, 64, 65, 130]))
    padding = str(rng.choice(["valid", "same"] + (["causal"] if rank == 1 else [])))
    batch = int(rng.integers(1, 3))
    return (rank, (batch,) + spatial + (channels,), kernel, filters, strides, padding, dilation,
            seed)


@pytest.mark.parametrize("geometry_case", [_random_geometry(s) for s in range(12)],
                         ids=lambda c: f"seed{c[-1]}")
def test_tensor_core_random_geometries(emulator, geometry_case):
    rank, shape, kernel, f, s, padding, d, seed = geometry_case
    rng = np.random.default_rng(1000 + seed)
    mode = "tf32" if seed % 3 == 0 else "float16"
    dtype = "float32" if mode == "tf32" else "float16"
    act = activations.NAMES[(7 * seed) % len(activations.NAMES)]
    if act == "glu":
        f += f % 2  # glu halves the last axis: it must be even
    check(emulator, *make_case(rng, rank, shape, kernel, f, s, padding, d, act, dtype,
                               bias=seed % 4 != 1), allow_tf32=mode == "tf32")


@pytest.mark.parametrize("name", activations.NAMES)
def test_tensor_core_every_activation(emulator, name):
    rng = np.random.default_rng(11)
    launches = check(emulator, *make_case(rng, 2, (1, 5, 6, 16), 3, 12, 1, "same", 1, name))
    kernel_id = activations.get(name).kernel_id
    if kernel_id in kernel_common.LAST_AXIS_ACTIVATIONS:
        assert launches[1].kind == "softmax"


KERNEL_PARAMETERS = recorded_kernel_parameters()


@pytest.mark.parametrize("label", sorted(KERNEL_PARAMETERS))
@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_recorded_activation_parameters(emulator, label, mode):
    """The non-default parameters recorded from Keras (ELU's alpha 0.5, ...) reach the
    tensor-core kernel's epilogue."""
    act = KERNEL_PARAMETERS[label]
    rng = np.random.default_rng(stable_seed(label, mode))
    dtype = "float16" if mode == "float16" else "float32"
    launches = check(emulator, *make_case(rng, 2, (1, 5, 6, 16), 3, 12, 1, "same", 1, act, dtype),
                     allow_tf32=mode == "tf32")
    assert launches[0].kind == "tc" and float(launches[0].scalars[26]) == pytest.approx(
        act.kernel_param, rel=1e-6)  # act_param: a float in this kernel's arguments


def test_tensor_core_activation_parameter_and_no_bias(emulator):
    rng = np.random.default_rng(12)
    act = functools.partial(activations.leaky_relu, negative_slope=0.37)
    x, dk, pk, _, geom, resolved = make_case(rng, 2, (1, 6, 6, 8), 3, 10, activation=act, bias=False)
    assert resolved.kernel_param == 0.37
    check(emulator, x, dk, pk, None, geom, resolved)


def test_tensor_core_strided_input_view(emulator):
    # every other column of a wider image: channels stay contiguous, the kernel reads
    # through the strides without a copy
    rng = np.random.default_rng(13)
    x, dk, pk, b, _, act = make_case(rng, 2, (2, 6, 14, 16), 3, 9)
    view = x[:, :, ::2, :]
    geom = geometry.make_geometry(2, view.shape, dk.shape, pk.shape, b.shape, (1, 1), "same",
                                  "channels_last", (1, 1))
    assert not view.flags.c_contiguous
    check(emulator, view, dk, pk, b, geom, act)


def test_tensor_core_misaligned_input_runs_the_simt_kernel(emulator):
    """An input 2 bytes past a 16-byte boundary cannot feed the tensor-core kernel's
    16-byte cp.async: the backend reads the address (its alignment flag) and launches the
    SIMT kernel, which computes the same convolution."""
    rng = np.random.default_rng(15)
    x, dk, pk, b, geom, act = make_case(rng, 2, (1, 6, 7, 16), 3, 12)
    buffer = np.empty(x.size + 16, x.dtype)
    start = (-buffer.ctypes.data % 16) // x.itemsize  # the first 16-byte boundary

    def placed(offset):  # x copied `offset` elements past that boundary
        placed = buffer[start + offset:start + offset + x.size].reshape(x.shape)
        placed[...] = x
        return placed

    # what the backend launches, asked of the fake CuPy that only records (an emulated
    # tensor-core launch on this input aborts the process: cp.async's alignment check)
    from benchmarks import fake_cupy

    backend, recording = fake_cupy.load_backend()
    backend.CupyOps().separable_conv(placed(1).view(recording.ndarray), dk, pk, b, geom, act)
    launched = [c[1] for c in recording.calls if c[0] == "launch"]
    assert [name.split("<")[0] for name in launched] == ["sepconv_simt"], launched
    y, launches = emu.separable_conv(emulator, placed(1), dk, pk, b, geom, act)
    assert [launch.kind for launch in launches] == ["simt"], launches[0].name
    assert_matches(y, reference_separable_conv(x, dk, pk, b, geom, act))
    # the same input aligned takes the tensor-core kernel
    assert emu.separable_conv(emulator, placed(0), dk, pk, b, geom, act)[1][0].kind == "tc"


def test_tensor_core_float32_without_tf32_stays_exact_on_simt(emulator):
    rng = np.random.default_rng(14)
    x, dk, pk, b, geom, act = make_case(rng, 2, (1, 6, 6, 8), 3, 8, dtype="float32")
    strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    launches, _ = launch_sequence("float32", geom, act, strides, True)
    assert launches[0].name.startswith("sepconv_simt<float,")
    assert launches[0].weights == "simt:float32"


# --- the selection rule ---------------------------------------------------------------------

def _geom(shape=(2, 8, 8, 16), kernel=3, filters=24, multiplier=1, data_format="channels_last",
          strides=1, dilation=1):
    channels = shape[1] if data_format == "channels_first" else shape[-1]
    return geometry.make_geometry(2, shape, (kernel, kernel, channels, multiplier),
                                  (1, 1, channels * multiplier, filters), None,
                                  (strides,) * 2, "same", data_format, (dilation,) * 2)


def _contiguous_strides(geom):
    shape = geom.input_shape
    strides = np.cumprod((1,) + shape[::-1][:-1])[::-1] * 2
    return input_element_strides(shape, tuple(int(s) for s in strides), 2, geom)


@pytest.mark.parametrize("dtype,allow_tf32,expected", [
    ("float16", False, "tc"), ("float16", True, "tc"), ("float32", False, "simt"),
    ("float32", True, "tc"), ("float64", True, "simt")])
def test_tensor_core_selection_by_dtype(dtype, allow_tf32, expected):
    geom = _geom()
    assert select_kernel(dtype, geom, allow_tf32, _contiguous_strides(geom), True) == expected


def test_tensor_core_selection_needs_layout_multiplier_and_alignment():
    geom = _geom()
    strides = _contiguous_strides(geom)
    assert select_kernel("float16", geom, False, strides, True) == "tc"
    assert select_kernel("float16", geom, False, strides, False) == "simt"
    cf = _geom((2, 16, 8, 8), data_format="channels_first")
    assert select_kernel("float16", cf, False, _contiguous_strides(cf), True) == "simt"
    m2 = _geom(multiplier=2)
    assert select_kernel("float16", m2, False, _contiguous_strides(m2), True) == "simt"
    n, c, h, w = strides
    assert select_kernel("float16", geom, False, (n, 2, h, w), True) == "simt"
    assert select_kernel("float16", geom, False, (n, c, h, w + 4), True) == "simt"
    assert select_kernel("float16", geom, False, (n, c, h, w + 8), True) == "tc"
    assert select_kernel("float16", geom, False, (-n, c, -h, -w), True) == "tc"
    # 12 channels: 24 bytes a pixel in half (no 16-byte granules), 48 in float
    odd = _geom((1, 8, 8, 12))
    assert select_kernel("float16", odd, False, (768, 1, 96, 12), True) == "simt"
    assert select_kernel("float32", odd, True, (768, 1, 96, 12), True) == "tc"


def test_tensor_core_selection_falls_back_when_no_tile_fits():
    huge = _geom((1, 200, 200, 16), kernel=3, dilation=60)
    assert tc.tc_plan("float16", huge) is None
    assert select_kernel("float16", huge, False, _contiguous_strides(huge), True) == "simt"


# --- the planner ----------------------------------------------------------------------------

SUITE_LIKE = [
    ((32, 147, 147, 64), 128, 1), ((32, 74, 74, 256), 256, 1), ((32, 19, 19, 728), 728, 1),
    ((32, 10, 10, 1536), 2048, 1), ((32, 112, 112, 32), 64, 1), ((32, 112, 112, 64), 128, 2),
    ((32, 28, 28, 192), 32, 1), ((32, 7, 7, 960), 320, 1), ((8, 5, 5, 16), 3, 1),
]


@pytest.mark.parametrize("shape,filters,stride", SUITE_LIKE)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_tensor_core_plan_is_consistent_and_plumbs_the_model_s_price(shape, filters, stride,
                                                                     dtype):
    """The plan's tiles cover the output once; its predicted time is the cost model's,
    recomputed with the model's own functions (plumbing: only GPU data tests the model)."""
    geom = _geom(shape, 3, filters, strides=stride)
    tp = tc.tc_plan(dtype, geom)
    (oh, ow) = geom.out_size
    assert tp.bm * tp.bn == tc.TC_TILE_ELEMS * tp.m_tiles // 2
    assert tp.bn in tc.TC_FILTER_BLOCKS and tp.m_tiles in tc.TC_M_TILES
    assert tp.tiles * tp.bm >= geom.output_positions > (tp.tiles - 1) * tp.bm
    assert tp.grid == tp.tiles * tp.k_splits
    assert tp.k_splits in tc.TC_SPLITS
    assert tp.shared_bytes <= tc.TC_SMEM_LIMIT
    # no depthwise recompute while the filters fit one block
    assert tp.filter_blocks == -(-filters // tp.bn)
    if filters <= max(tc.TC_FILTER_BLOCKS):
        assert tp.filter_blocks == 1
    itemsize = 2 if dtype == "float16" else 4
    work = cost_model.tc_fused_work(geom, tp, itemsize,
                                    strips=tc.tc_uses_strips(geom))
    predicted = cost_model.predict(work).us
    if tp.k_splits > 1:
        predicted += cost_model.predict(cost_model.tc_reduce_work(
            geom, tp.k_splits, itemsize, *tc.tc_reduce_grid(geom))).us
    assert tp.predicted_us == pytest.approx(predicted)
    assert tp.predicted_us > cost_model.DEFAULT_DEVICE.launch_us
    assert work.tensor_flops >= 2 * geom.output_positions * geom.channels * geom.filters


def _suite_layers():
    from benchmarks import suites

    return [layer for name in suites.DEFAULT_SUITES for layer in suites.SUITES[name]]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_tensor_core_plans_waste_no_tensor_work_on_the_suites(batch, dtype):
    """Tiles over flattened positions: what the chosen plan issues is at most 1.15x the
    useful FLOPs at batch 8 and 32, and at batch 1 exactly the mma granularity's padding
    (positions to 16, filters to 8, channels to the mma's k); the depthwise is computed
    once (recompute 1) for every layer, whatever F."""
    k_step = 16 if dtype == "float16" else 8
    up = lambda v, g: -(-v // g) * g
    for layer in _suite_layers():
        geom = layer.geometry(batch)
        tp = tc.tc_plan(dtype, geom, layer.activation is None)
        p, c, f = geom.output_positions, geom.channels, geom.filters
        assert tp.useful_flops == 2.0 * p * c * f
        assert tp.issued_flops == 2.0 * up(p, 16) * up(f, 8) * up(c, k_step), layer.key
        if batch > 1:
            assert tp.issued_flops <= 1.15 * tp.useful_flops, (layer.key, tp)
        assert tp.recompute == 1.0
        itemsize = 2 if dtype == "float16" else 4
        work = cost_model.tc_fused_work(geom, tp, itemsize, layer.activation is None,
                                        strips=tc.tc_uses_strips(geom))
        assert work.tensor_flops == tp.issued_flops
        # staged bytes: the halo and depthwise weights once a tile and chunk (filter block
        # 0 only), the pointwise rows once a tile, chunk and filter block
        y = (tp.k_splits * 4 if tp.k_splits > 1 else itemsize) * p * f
        assert work.l2_bytes == pytest.approx(tp.staged_bytes + tp.l2_weight_bytes + y)


@pytest.mark.parametrize("shape,filters,stride", SUITE_LIKE)
def test_plumbing_tensor_core_plan_states_its_occupancy(shape, filters, stride):
    """Plumbing (the model's own blocks_per_sm, recomputed): blocks an SM as registers (the instantiation's cap) and shared memory allow, for
    every candidate: the launch bound promises nothing more (MT <= 2: two blocks only
    where the shared memory leaves room)."""
    geom = _geom(shape, 3, filters, strides=stride)
    device = cost_model.DEFAULT_DEVICE
    for tp in tc.tc_candidates("float16", geom, count=50):
        expected = cost_model.blocks_per_sm(tc.TC_THREADS,
                                            cost_model.TC_REGISTERS[tp.m_tiles],
                                            tp.shared_bytes, device)
        assert tp.blocks_per_sm == expected >= 1
        fits_two = 2 * (tp.shared_bytes + device.smem_reserved_per_block) <= device.smem_per_sm
        assert (tp.blocks_per_sm >= 2) == (tp.m_tiles <= 2 and fits_two)


def test_tensor_core_candidates_are_sorted_and_plan_is_the_first():
    geom = _geom((8, 19, 19, 728), 3, 728)
    found = tc.tc_candidates("float16", geom, False)
    assert 1 < len(found) <= 4
    assert [c.predicted_us for c in found] == sorted(c.predicted_us for c in found)
    assert found[0] == tc.tc_plan("float16", geom, False)
    assert len(tc.tc_candidates("float16", geom, False, count=2)) == 2
    assert tc.tc_candidates("float16", geom, smem_limit=1024) == ()


def test_tensor_core_reduce_grid_follows_the_device():
    geom = _geom((32, 56, 56, 64), 3, 64)
    assert tc.tc_reduce_grid(geom) == (8 * cost_model.DEFAULT_DEVICE.sms,
                                       tc.TC_THREADS)
    assert tc.tc_reduce_grid(geom, sms=10) == (80, tc.TC_THREADS)
    small = _geom((1, 2, 2, 16), 3, 8)
    assert tc.tc_reduce_grid(small, sms=10) == (1, tc.TC_THREADS)


def test_tensor_core_selection_checks_the_plan_that_launches(monkeypatch):
    """select_kernel's 32-bit and reach checks run on the plan of the activation the
    launch uses (a non-linear epilogue is priced differently, so the two plans can
    differ): every plan consulted is for that activation, and the launch is its plan."""
    geom = _geom((8, 7, 7, 960), 3, 320)
    gelu, linear = activations.get("gelu"), activations.get(None)
    plans = [tc.tc_plan("float16", geom, linear_activation) for linear_activation in (False, True)]
    assert plans[0].shared_bytes != plans[1].shared_bytes   # the case where it matters
    asked = []
    real = tc.tc_plan

    def recording(dtype, g, linear_activation=True, *args, **kwargs):
        asked.append(linear_activation)
        return real(dtype, g, linear_activation, *args, **kwargs)

    monkeypatch.setattr(tc, "tc_plan", recording)
    for act in (gelu, linear):
        _launch_sequence.cache_clear()
        asked.clear()
        launches, _ = launch_sequence("float16", geom, act,
                                      _contiguous_strides(geom), True)
        is_linear = act.kernel_id == "linear"
        assert asked and all(flag == is_linear for flag in asked), (act.kernel_id, asked)
        tp = real("float16", geom, is_linear)
        assert (launches[0].grid, launches[0].shared_bytes) == (tp.grid, tp.shared_bytes)
    _launch_sequence.cache_clear()


def test_tensor_core_launch_reports_predicted_time():
    geom = _geom((4, 16, 16, 32), 3, 48)
    launches, _ = launch_sequence("float16", geom, activations.get("relu"),
                                  _contiguous_strides(geom), False)
    assert launches[0].predicted_us == tc.tc_plan("float16", geom, False).predicted_us > 0


# --- weights in the kernel's layout ---------------------------------------------------------

def test_tensor_core_weights_layout():
    rng = np.random.default_rng(15)
    dk = rng.standard_normal((3, 3, 20, 1)).astype(np.float32)
    pk = rng.standard_normal((1, 1, 20, 7)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    dw, pw, bias = prepare_weights(np, "tc:float16", dk, pk, b)
    assert dw.dtype == pw.dtype == np.float16 and bias.dtype == np.float32
    assert dw.shape == (9, 32) and pw.shape == (7, 32)
    np.testing.assert_array_equal(dw[:, :20], dk.reshape(9, 20).astype(np.float16))
    np.testing.assert_array_equal(pw[:, :20], pk.reshape(20, 7).T.astype(np.float16))
    assert not dw[:, 20:].any() and not pw[:, 20:].any()
    dw, pw, _ = prepare_weights(np, "tc:tf32", dk, pk, None)
    np.testing.assert_array_equal(dw[:, :20], dk.reshape(9, 20))   # depthwise stays FP32
    assert not (pw.view(np.uint32) & 0x1FFF).any()
    np.testing.assert_allclose(pw[:, :20], pk.reshape(20, 7).T, rtol=U, atol=0)
    dw, pw, bias = prepare_weights(np, "simt:float64", dk, pk, b)
    assert dw.shape == (9, 20) and pw.shape == (20, 7) and bias.dtype == np.float64


def test_tensor_core_tf32_rounding_is_nearest_ties_away():
    step = 2.0 ** -10  # TF32 spacing in [1, 2)
    values = np.array([1 + step / 2, -(1 + step / 2), 1 + step / 2 - 2**-23, 1 + 1.5 * step,
                       np.inf, -np.inf, np.nan, 0.0, 3.0], dtype=np.float32)
    out = round_to_tf32(np, values)
    expected = np.array([1 + step, -(1 + step), 1.0, 1 + 2 * step, np.inf, -np.inf, np.nan,
                         0.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)


def _tile_halo(geom, bm, band_h, slab, tile):
    """(rows, columns) of the halo sepconv_tc stages for `tile`: its table arithmetic,
    written again in Python."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = geom.out_size, geom.kernel, geom.strides, geom.dilation
    p_total = geom.output_positions
    bands = -(-oh // band_h)
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    round_s = lambda v: -(-v // sw) * sw

    def locate(p):
        n, q = divmod(p, oh * ow)
        b = q // (band_h * ow)
        hb = min(band_h, oh - b * band_h)
        col = (q - b * band_h * ow) // hb
        return n * bands + b, col, q - b * band_h * ow - col * hb

    p0, last = tile * bm, min(tile * bm + bm, p_total) - 1
    (gb_a, ow_a, r_a), (gb_b, ow_b, _) = locate(p0), locate(last)
    wf = round_s((ow - 1) * sw + span_w)
    if slab:
        n_a, oh_a = divmod(gb_a, oh)
        n_b, oh_b = divmod(gb_b, oh)
        first_rows, img_rows = (oh - 1 - oh_a) * sh + span_h, (oh - 1) * sh + span_h
        slot = (oh_b - oh_a) * sh if n_b == n_a else first_rows + (n_b - n_a - 1) * img_rows + oh_b * sh
        return slot + span_h, wf
    w0 = round_s(((ow - 1 if gb_b > gb_a else ow_b) - ow_a) * sw + span_w)
    width = w0 + (gb_b - gb_a - 1) * wf + round_s(ow_b * sw + span_w) if gb_b > gb_a else w0
    return (band_h - 1) * sh + span_h, width


@pytest.mark.parametrize("shape,kernel,strides,dilation", [
    ((3, 5, 6, 16), 3, 1, 1), ((2, 9, 11, 16), 3, 1, 1), ((2, 11, 13, 16), (2, 3), 2, 1),
    ((2, 12, 9, 16), 3, (2, 1), 1), ((1, 10, 9, 16), 3, 1, (2, 1)), ((4, 7, 7, 16), 5, 1, 1),
    ((3, 19, 19, 16), 3, 1, 1), ((2, 1, 40, 16), (1, 4), 1, (1, 2)), ((2, 17, 30, 16), 4, 3, 1),
])
def test_tensor_core_halo_extent_bounds_every_tile(shape, kernel, strides, dilation):
    """The planner sizes the halo (and so the shared memory) by tc_halo_extent: no tile
    of any position order may stage more rows or columns than that."""
    geom = geometry.make_geometry(2, shape, tuple(np.broadcast_to(kernel, 2)) + (shape[-1], 1),
                                  (1, 1, shape[-1], 8), None, tuple(np.broadcast_to(strides, 2)),
                                  "same", "channels_last", tuple(np.broadcast_to(dilation, 2)))
    for bm in (32, 64, 128, 256, 512):
        tiles = -(-geom.output_positions // bm)
        for band_h, slab in [(b, False) for b in tc.TC_BANDS if b <= geom.out_size[0]] + [(1, True)]:
            rows, cols = tc.tc_halo_extent(geom, bm, slab, band_h)
            for tile in range(tiles):
                r, c = _tile_halo(geom, bm, band_h, slab, tile)
                assert r <= rows and c <= cols, (bm, band_h, slab, tile, (r, c), (rows, cols))
