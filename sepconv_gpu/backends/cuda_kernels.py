"""The CUDA kernel catalogue and launch planner, free of CuPy.

Everything here is plain Python so that the compile check (tests/test_nvrtc.py) can
enumerate and build every kernel instantiation through NVRTC on a machine without CuPy or
a GPU, and the host emulator can run them. `cuda_backend.py` uses the same functions to
request kernels.

Kept in step with kernels/sepconv_fused.cu: the SC_* constants, the template parameters
of `sepconv_fused` / `sepconv_softmax_lastaxis`, and the shared-memory layout; with
kernels/sepconv_common.cuh: the activation enum and ACT_SLOTS; and with
kernels/sepconv_tc.cu (the tensor-core kernel): the TC_* constants, `sepconv_tc` /
`sepconv_tc_reduce`, its shared memory (`_tc_shared_bytes`). `select_kernel` is the one
rule that picks between the two kernels; `prepare_weights` lays the weights out for each.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
from dataclasses import dataclass

from ..geometry import INT32_MAX, ConvGeometry

# --- constants mirrored from kernels/sepconv_fused.cu ---------------------------------
THREADS = 256            # SC_THREADS
CHUNK = 16               # SC_BK: depthwise channels per chunk
TILE_ELEMS = 4096        # SC_TILE_ELEMS = BP * BF
DW_SMEM_TAPS = 64        # SC_DW_SMEM_TAPS
FILTER_BLOCKS = (16, 32, 64)   # BF choices (BP = TILE_ELEMS // BF = 256, 128, 64)
SMEM_BUDGET = 48 * 1024  # dynamic shared memory without an opt-in attribute
SOFTMAX_THREADS = 256   # sepconv_softmax_lastaxis block size (8 warps, a row each)
NVRTC_OPTIONS = ("--std=c++17",)

MAIN_SOURCE = "sepconv_fused.cu"

# dtype name -> (C++ type, input itemsize, accumulator itemsize)
DTYPES = {
    "float32": ("float", 4, 4),
    "float16": ("__half", 2, 4),
    "float64": ("double", 8, 8),
    "bfloat16": ("__nv_bfloat16", 2, 4),   # NumPy needs ml_dtypes for it
}

# Activation.kernel_id values fused into the epilogue (enum SepconvActivation, same order),
# passed to the kernels as the runtime argument `act` (the index in this tuple).
ACT_SLOTS = 32           # ACT_SLOTS (sepconv_common.cuh): enum values the runtime switch covers
FUSED_ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "gelu_tanh",
    "sigmoid", "hard_sigmoid", "hard_silu", "silu", "mish", "softplus", "softsign", "tanh",
    "exponential", "hard_tanh", "hard_shrink", "soft_shrink", "log_sigmoid", "sparse_plus",
    "sparse_sigmoid", "squareplus", "tanh_shrink",
)
# Normalizing activations with a kernel: linear fused kernel, then sepconv_softmax_lastaxis.
# Every other kernel_id (glu, sparsemax, ...) is applied to the output afterwards.
LAST_AXIS_ACTIVATIONS = ("softmax", "log_softmax")

# Kernel extents (KH, KW) with a compile-time specialization (fully unrolled taps, weights
# in registers); every other extent runs the generic runtime-extent path (0, 0).
# 3x3 covers Xception / MobileNet, 5x5 EfficientNet-style blocks, (1, 3) the common 1D
# case. Each entry costs 2 instantiations (layouts) per dtype, 2-3 s of NVRTC each (every
# activation's epilogue is in it) on a user's first call, so float64 (rarely a speed
# concern) and bfloat16 only get the generic path.
SPECIALIZED_EXTENTS = {
    "float32": ((3, 3), (5, 5), (1, 3)),
    "float16": ((3, 3), (5, 5), (1, 3)),
    "float64": (),
    "bfloat16": (),
}
GENERIC_EXTENT = (0, 0)


def activation_enum(kernel_id):
    return "ACT_" + kernel_id.upper()


def kernel_extent(dtype, kernel):
    """The (KH, KW) template arguments that serve a kernel of this size."""
    kernel = tuple(int(k) for k in kernel)
    return kernel if kernel in SPECIALIZED_EXTENTS[dtype] else GENERIC_EXTENT


def activation_index(kernel_id):
    """The kernels' runtime `act` argument: the enum SepconvActivation value."""
    return FUSED_ACTIVATIONS.index(kernel_id)


def fused_name(dtype, channels_first, extent):
    """Name expression of one `sepconv_fused` instantiation (every activation)."""
    ctype = DTYPES[dtype][0]
    kh, kw = extent
    layout = "true" if channels_first else "false"
    return f"sepconv_fused<{ctype}, {layout}, {kh}, {kw}>"


def softmax_name(dtype, log):
    return f"sepconv_softmax_lastaxis<{DTYPES[dtype][0]}, {'true' if log else 'false'}>"


def all_name_expressions():
    """Every kernel instantiation the library can request (what the compile test builds)."""
    return simt_name_expressions() + tc_name_expressions()


def simt_name_expressions():
    """The `sepconv_fused` and `sepconv_softmax_lastaxis` instantiations."""
    names = []
    for dtype in DTYPES:
        for extent in (GENERIC_EXTENT,) + tuple(SPECIALIZED_EXTENTS[dtype]):
            for channels_first in (False, True):
                names.append(fused_name(dtype, channels_first, extent))
        for log in (False, True):
            names.append(softmax_name(dtype, log))
    return names


# --- sources ----------------------------------------------------------------------------

def kernels_dir():
    """kernels/ in an installed wheel (sepconv_gpu/kernels) or in a source checkout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(package, "kernels"),
                      os.path.join(os.path.dirname(package), "kernels")):
        if os.path.isfile(os.path.join(candidate, MAIN_SOURCE)):
            return candidate
    raise FileNotFoundError(
        f"sepconv_gpu: CUDA sources ({MAIN_SOURCE}) found neither in the installed package "
        f"({os.path.join(package, 'kernels')}) nor in a source checkout.")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _inline(directory, filename, seen):
    """The file's text with `#line` markers, local `#include "..."` files inlined.

    Inlining (rather than an -I option) makes the text the kernel cache hashes
    (kernel_cache.py) cover the headers too, and keeps NVRTC error locations pointing at
    the real files.
    """
    tag = f"kernels/{filename}"
    with open(os.path.join(directory, filename), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out = [f'#line 1 "{tag}"']
    for number, line in enumerate(lines, start=1):
        match = _INCLUDE.match(line)
        if match and os.path.isfile(os.path.join(directory, match.group(1))):
            if match.group(1) not in seen:
                seen.add(match.group(1))
                out.append(_inline(directory, match.group(1), seen))
            out.append(f'#line {number + 1} "{tag}"')
        else:
            out.append(line)
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def source():
    """The complete kernel source as NVRTC compiles it (read once): the SIMT kernels,
    then the tensor-core kernel (sharing the inlined headers)."""
    seen = set()
    return "\n".join(_inline(kernels_dir(), name, seen) for name in (MAIN_SOURCE, TC_SOURCE)) + "\n"


# --- launch planning --------------------------------------------------------------------

@dataclass(frozen=True)
class KernelPlan:
    """Tile shape and derived sizes of one launch (see the top of sepconv_fused.cu)."""

    bf: int            # filters per block
    bp: int            # output positions per block
    tw: int            # tile width (positions); tile height = bp // tw
    tiles_w: int
    tiles_img: int     # tiles per image
    filter_blocks: int
    halo_h: int
    halo_w: int
    pitch: int         # halo row stride in shared memory (elements, >= the row's footprint)
    plane: int         # halo channel plane stride (elements, odd)
    use_halo: bool
    shared_bytes: int
    grid: int          # blocks
    predicted_us: float = 0.0   # cost_model.predict (H100 constants; contiguous input)

    @property
    def th(self):
        return self.bp // self.tw


def _halo_extent(tile, stride, dilation, k):
    return (tile - 1) * stride + (k - 1) * dilation + 1


def _tile_widths(bp, out_w, out_h):
    if out_h == 1:
        return (bp,)  # 1D (or a single row): the whole tile along the width
    widths = []
    tw = 1
    while tw <= bp:
        widths.append(tw)
        tw *= 2
    return tuple(widths)


def halo_split(itemsize, stride_w):
    """Whether halo rows are stored even columns first (halo_split in the kernel): at
    stride 2 a warp then reads consecutive words; 2-byte types already do."""
    return stride_w == 2 and itemsize >= 4


def _row_pitch(footprint, tw, stride_h, col_step, itemsize):
    """Smallest halo row pitch >= footprint at which the rows a warp's depthwise reads
    touch start on disjoint shared-memory banks, or footprint if there is none.

    Lanes take consecutive positions, TW per tile row, col_step elements apart, so one
    row's lanes cover TW * col_step elements and the next row starts stride_h * pitch
    later: the rows tile the 128-byte bank window without overlap when that distance is
    an odd multiple of the span. Nothing to do when one row's lanes fill the window.
    """
    lane_bytes = col_step * itemsize
    span = tw * col_step
    if lane_bytes > 8 or tw * lane_bytes >= 128:
        return footprint
    for pitch in range(footprint, footprint + 2 * span * stride_h + 1):
        if _rows_disjoint(pitch, tw, stride_h, col_step, itemsize):
            return pitch
    return footprint  # e.g. single-column tiles at an even row stride


def _rows_disjoint(pitch, tw, stride_h, col_step, itemsize):
    """Whether a warp's depthwise reads of one tap hit every bank at most once."""
    lane_bytes = col_step * itemsize
    span = tw * col_step
    if lane_bytes > 8 or tw * lane_bytes >= 128:
        return lane_bytes <= 8
    step = stride_h * pitch
    return step % span == 0 and (step // span) % 2 == 1


@functools.lru_cache(maxsize=4096)
def plan(dtype, batch, channels, multiplier, filters, in_size, out_size, kernel, strides,
         dilation, channels_first=False):
    """Pick the filter block, tile shape, halo layout and halo mode for one convolution:
    the candidate the cost model (`cost_model.simt_fused_work`, H100 constants) predicts
    fastest, assuming a contiguous input.

    Candidates: BF in FILTER_BLOCKS x every power-of-two tile width, each with the
    bank-conflict-free halo row pitch if its shared memory fits SMEM_BUDGET, else the
    tight pitch. The model prices staging (halo and weights re-staged per block and chunk:
    the depthwise recompute of FB > 1), the depthwise and pointwise issue, shared-memory
    wavefronts, L2 and DRAM bytes, occupancy and waves, so ragged tiles and filter blocks
    pay for their waste. If no halo fits (huge dilated extents) the kernel gathers the
    depthwise input from global memory (use_halo=False) with the cheapest tile.
    """
    from . import cost_model

    _, in_isz, acc_isz = DTYPES[dtype]
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = out_size, kernel, strides, dilation
    taps = kh * kw
    dw_bytes = taps * CHUNK * acc_isz if taps <= DW_SMEM_TAPS else 0
    halo_channels = cost_model.simt_halo_channels(channels, multiplier, CHUNK)
    split = halo_split(in_isz, sw)
    specialized = kernel_extent(dtype, kernel) != GENERIC_EXTENT
    geom = ConvGeometry(rank=2, channels_first=channels_first, batch=batch, channels=channels,
                        depth_multiplier=multiplier, filters=filters, in_size=tuple(in_size),
                        kernel=tuple(kernel), strides=tuple(strides), dilation=tuple(dilation),
                        pad_before=(0, 0), out_size=tuple(out_size), use_bias=True)

    def priced(candidate, bank_ways):
        work = cost_model.simt_fused_work(geom, candidate, in_isz, acc_isz, CHUNK, THREADS,
                                          specialized=specialized, bank_ways=bank_ways)
        return dataclasses.replace(candidate, predicted_us=cost_model.predict(work).us)

    best, fallback = None, None
    for bf in FILTER_BLOCKS:
        bp = TILE_ELEMS // bf
        blocks_f = -(-filters // bf)
        fixed = CHUNK * (bp + 2 * bf) * acc_isz + dw_bytes   # Ds, Ws pair, Wd
        for tw in _tile_widths(bp, ow, oh):
            tiles_w, tiles_h = -(-ow // tw), -(-oh // (bp // tw))
            hh, hw = _halo_extent(bp // tw, sh, dh, kh), _halo_extent(tw, sw, dw, kw)
            footprint = hw + (hw & 1) if split else hw
            col_step = 1 if split else sw
            tile = dict(bf=bf, bp=bp, tw=tw, tiles_w=tiles_w, tiles_img=tiles_w * tiles_h,
                        filter_blocks=blocks_f, grid=batch * tiles_w * tiles_h * blocks_f)
            for pitch in dict.fromkeys((_row_pitch(footprint, tw, sh, col_step, in_isz), footprint)):
                plane = hh * pitch | 1  # odd: conflict-free channel-strided smem stores
                shared = fixed + halo_channels * plane * in_isz
                if shared > SMEM_BUDGET:
                    continue
                ways = 1 if _rows_disjoint(pitch, tw, sh, col_step, in_isz) else 2
                candidate = priced(KernelPlan(**tile, halo_h=hh, halo_w=hw, pitch=pitch,
                                              plane=plane, use_halo=True, shared_bytes=shared),
                                   ways)
                if best is None or candidate.predicted_us < best.predicted_us:
                    best = candidate
                break
            if best is None:
                candidate = priced(KernelPlan(**tile, halo_h=1, halo_w=1, pitch=1, plane=1,
                                              use_halo=False, shared_bytes=fixed), 1)
                if fallback is None or candidate.predicted_us < fallback.predicted_us:
                    fallback = candidate
    return best or fallback


def check_launchable(geom, kernel_plan):
    """Sizes the kernel indexes with 32-bit ints. Whole tensors may pass 2^31 elements
    (offsets are 64-bit); single axes, channel counts and the grid may not."""
    dims = {
        "batch": geom.batch, "channels": geom.channels,
        "channels * depth_multiplier": geom.intermediate_channels, "filters": geom.filters,
        "grid blocks (batch * tiles * filter blocks)": kernel_plan.grid,
    }
    tile = (kernel_plan.th, kernel_plan.tw)
    for axis, label in enumerate(("height", "width")):
        # the furthest input coordinate a tile touches, padding and ragged tiles included
        dims[f"input {label} reach"] = (
            geom.in_size[axis] + (geom.out_size[axis] + tile[axis]) * geom.strides[axis]
            + (geom.kernel[axis] - 1) * geom.dilation[axis])
    too_big = {k: v for k, v in dims.items() if v > INT32_MAX}
    if too_big:
        raise ValueError(
            "sepconv_gpu CUDA backend: these sizes exceed 2^31 - 1, which the kernel "
            f"indexes with 32-bit integers: {too_big}. Split the batch or the input.")


# --- launch arguments (the scalar tail of each kernel's parameter list) -----------------

def fused_scalar_args(geom, kernel_plan, x_strides, has_bias, kernel_id, act_param):
    """Scalars of `sepconv_fused` after its five pointers, typed as the kernel declares
    them (CuPy passes NumPy scalars by their exact type and does not check)."""
    import numpy as np

    i32 = np.int32
    (h, w), (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (
        geom.in_size, geom.kernel, geom.strides, geom.dilation, geom.pad_before)
    (oh, ow) = geom.out_size
    p = kernel_plan
    return (
        *(np.int64(s) for s in x_strides),
        i32(geom.channels), i32(h), i32(w), i32(geom.depth_multiplier), i32(geom.filters),
        i32(oh), i32(ow),
        i32(kh), i32(kw), i32(sh), i32(sw), i32(dh), i32(dw), i32(ph), i32(pw),
        i32(p.bf), i32(p.tw.bit_length() - 1), i32(p.tiles_w), i32(p.tiles_img),
        i32(p.filter_blocks),
        i32(p.halo_h), i32(p.halo_w), i32(p.pitch), i32(p.plane), i32(p.use_halo),
        i32(bool(has_bias)), i32(activation_index(kernel_id)),
        np.float64(act_param),  # double: exact for the float64 kernels too
    )


def input_element_strides(shape, strides, itemsize, geom):
    """(n, c, h, w) element strides of an input array in the user's layout, or None when
    a byte stride is not a whole number of elements (then copy the input first)."""
    if any(s % itemsize for s in strides):
        return None
    st = [s // itemsize for s in strides]
    if geom.channels_first:
        n, c, *spatial = st
    else:
        n, *spatial, c = st
    if geom.rank == 1:
        spatial = [0] + spatial
    return (n, c, spatial[0], spatial[1])


def softmax_launch(rows, length):
    """(grid, scalar args) of `sepconv_softmax_lastaxis` over a contiguous (rows, length)."""
    import numpy as np

    if length > INT32_MAX:
        raise ValueError(f"sepconv_gpu CUDA backend: softmax axis of {length} elements exceeds 2^31 - 1.")
    warps = SOFTMAX_THREADS // 32
    grid = max(1, min(-(-rows // warps), 1 << 20))  # grid-stride beyond that
    return grid, (np.int64(rows), np.int32(length))


@dataclass(frozen=True)
class Launch:
    """One kernel launch: `kind` "fused" takes (x, depthwise, pointwise, bias, y) before
    `scalars`, the weights prepared in layout `weights` (`prepare_weights`); "tc" the same
    and then `partial`, a float32 buffer of `partial` elements (any valid pointer when 0);
    "tc_reduce" takes (partial, bias, y); "softmax" takes (y,). `predicted_us`: the cost
    model's time for the launch (0 where there is none; a split TC launch carries the
    time of both)."""

    kind: str
    name: str
    grid: int
    block: int
    shared_bytes: int
    scalars: tuple
    weights: str = ""
    predicted_us: float = 0.0
    partial: int = 0


def launch_arrays(launch, x, weights, y, partial):
    """The array arguments of `launch` by its kind (see `Launch`), for CuPy or NumPy
    arrays alike: `weights` from `prepare_weights` in the launch's layout, `partial` the
    float32 buffer of `launch.partial` elements a split "tc" launch and its "tc_reduce"
    share (None otherwise)."""
    if launch.kind == "softmax":
        return (y,)
    dk, pk, b = weights
    bias = pk if b is None else b  # has_bias = 0 never reads it, but it must be valid
    if launch.kind == "fused":
        return (x, dk, pk, bias, y)
    if launch.kind == "tc":
        return (x, dk, pk, bias, y, y if partial is None else partial)
    return (partial, bias, y)      # tc_reduce


def launch_sequence(dtype, geom, activation, x_strides, has_bias, allow_tf32=False,
                    x_aligned=True, smem_limit=None, plan=None, sms=None):
    """The launches computing one separable convolution, and whether `activation(y)` must
    still be applied afterwards (activations without a kernel variant).

    `allow_tf32`: float32 may run on the tensor-core kernel with TF32 operands;
    `x_aligned`: the input's base address is 16-byte aligned (see `select_kernel`);
    `smem_limit`: the device's opt-in dynamic shared memory per block (None:
    TC_SMEM_LIMIT); `plan`: the plan to launch, a `TcPlan` (of `tc_candidates`, for a
    call the tensor-core kernel may serve) or a `KernelPlan` (of `simt_plan`): the
    autotuner's pick (autotune.py); None: the cost model's choice; `sms`: the device's SM
    count (None: the cost model's device), which sizes the grid of sepconv_tc_reduce.

    Array-agnostic: the CUDA backend runs it with CuPy arrays; the host-emulation test runs
    the very same sequence with NumPy arrays. Memoized: a layer called again with the same
    geometry pays a dictionary lookup, not the planning.
    """
    return _launch_sequence(dtype, geom, activation.kernel_id, activation.kernel_param,
                            tuple(int(s) for s in x_strides), bool(has_bias),
                            bool(allow_tf32), bool(x_aligned),
                            TC_SMEM_LIMIT if smem_limit is None else int(smem_limit), plan,
                            None if sms is None else int(sms))


@functools.lru_cache(maxsize=1024)
def _launch_sequence(dtype, geom, kernel_id, kernel_param, x_strides, has_bias, allow_tf32,
                     x_aligned, smem_limit, chosen, sms):
    if dtype not in DTYPES:
        raise TypeError(f"sepconv_gpu CUDA backend: unsupported dtype {dtype}; expected one of {tuple(DTYPES)}.")
    fused = kernel_id in FUSED_ACTIVATIONS
    normalize = kernel_id in LAST_AXIS_ACTIVATIONS
    act = kernel_id if fused else "linear"
    param = kernel_param if fused else 0.0
    tc_allowed = select_kernel(dtype, geom, allow_tf32, x_strides, x_aligned, smem_limit,
                               act == "linear") == "tc"
    if isinstance(chosen, TcPlan) and not (
            tc_allowed and chosen.shared_bytes <= smem_limit and tc_fits_int32(geom, chosen)):
        raise ValueError(f"sepconv_gpu: plan {chosen} cannot serve this call on the "
                         "tensor-core kernel")
    if chosen is None and tc_allowed:
        chosen = tc_plan(dtype, geom, act == "linear", smem_limit)
    if isinstance(chosen, TcPlan):
        tp = chosen
        partial = tp.k_splits * geom.output_positions * geom.filters if tp.k_splits > 1 else 0
        launches = [Launch("tc", tc_name(dtype, tc_extent(geom.kernel), tp.m_tiles), tp.grid,
                           TC_THREADS, tp.shared_bytes,
                           tc_scalar_args(geom, tp, x_strides, has_bias, act, param),
                           weights_layout("tc", dtype), tp.predicted_us, partial)]
        if partial:
            grid, block = tc_reduce_grid(geom, sms)
            launches.append(Launch("tc_reduce", tc_reduce_name(dtype), grid, block, 0,
                                   tc_reduce_scalar_args(geom, tp, has_bias, act, param),
                                   weights_layout("tc", dtype)))
    else:
        launches = [_simt_launch(dtype, geom, act, x_strides, has_bias, param, chosen)]
    if normalize:
        shape = geom.output_shape
        grid, args = softmax_launch(math.prod(shape) // shape[-1], shape[-1])
        launches.append(Launch("softmax", softmax_name(dtype, kernel_id == "log_softmax"),
                               grid, SOFTMAX_THREADS, 0, args))
    return tuple(launches), not (fused or normalize)


def simt_plan(dtype, geom):
    """The SIMT kernel's `KernelPlan` for this call (`plan`)."""
    return plan(dtype, geom.batch, geom.channels, geom.depth_multiplier, geom.filters,
                geom.in_size, geom.out_size, geom.kernel, geom.strides, geom.dilation,
                geom.channels_first)


def _simt_launch(dtype, geom, kernel_id, x_strides, has_bias, act_param, kp=None):
    kp = kp or simt_plan(dtype, geom)
    check_launchable(geom, kp)
    # The specialized extents assume a shared-memory halo; without one, use the generic path.
    extent = kernel_extent(dtype, geom.kernel) if kp.use_halo else GENERIC_EXTENT
    name = fused_name(dtype, geom.channels_first, extent)
    scalars = fused_scalar_args(geom, kp, x_strides, has_bias, kernel_id, act_param)
    return Launch("fused", name, kp.grid, THREADS, kp.shared_bytes, scalars,
                  weights_layout("simt", dtype), kp.predicted_us)


# --- tensor-core kernel (kernels/sepconv_tc.cu) ----------------------------------------
# Constants mirrored from kernels/sepconv_tc.cu (tests/test_kernel_constants.py).
TC_THREADS = 256         # TC_THREADS
TC_WARPS = 8             # TC_WARPS
TC_WARP_M = 32           # TC_WARP_M: positions a warp multiplies
TC_WARP_N = 64           # TC_WARP_N: filters a warp multiplies
TC_TILE_ELEMS = 16384    # TC_TILE_ELEMS = BM * BN
TC_CHUNK_BYTES = 64      # TC_CHUNK_BYTES: one position's channel chunk
TC_ROW_BYTES = 80        # TC_ROW_BYTES: shared pitch of an A / B row
TC_OUT_PAD = 4           # TC_OUT_PAD: extra floats per epilogue row
TC_ACT_SLOTS = 32        # TC_ACT_SLOTS: activation enum values the runtime switch covers
TC_FILTER_BLOCKS = (64, 128, 256)   # BN choices (multiples of TC_WARP_N, <= 8 warps)
TC_STAGES = (4, 3)       # cp.async pipeline depths, deepest first (the kernel needs >= 3)
TC_K_ALIGN = 32          # prepared weights: channels zero-padded to a multiple of this
TC_SPLITS = (1, 2, 4, 8) # channel splits (powers of two) for grids too small for the GPU
# m16 tiles per warp (template MT): 2 = 32 x 64 warp tiles, 64 accumulators, capped at
# TC_MT2_REGISTERS registers (2 blocks an SM where shared memory allows); 1 = 16 x 64,
# the same cap, half the positions a tile (more tiles for small layers, a smaller
# resident A); 4 = 64 x 64, twice the tile per block (half the weight traffic per
# output), up to 255 registers, one block an SM.
TC_M_TILES = (1, 2, 4)
TC_MT2_REGISTERS = 128   # TC_MT2_REGISTERS: __maxnreg__ of the MT <= 2 instantiations
# Dynamic shared memory a block may opt in to on the planner's default device (H100/H200,
# sm_90); the CUDA backend passes its device's own limit (A100 163 KB, sm_86/89 99 KB).
TC_SMEM_LIMIT = 227 * 1024
TC_SOURCE = "sepconv_tc.cu"
# dtype -> C++ type. float32 runs only with allow_tf32 (mma.m16n8k8.tf32). bfloat16
# (mma.m16n8k16.bf16) is planned and compiled; the Python side does not route it yet
# (launch_sequence takes the DTYPES only).
TC_DTYPES = {"float16": "__half", "float32": "float", "bfloat16": "__nv_bfloat16"}
TC_ITEMSIZE = {"float16": 2, "float32": 4, "bfloat16": 2}
# Specialized extents (weights in registers, taps unrolled); others: generic (0, 0).
# Measured with nvcc 13.0 -arch=sm_90 (a loaded 2-core machine): ~0.5 s per TC
# instantiation (SIMT: ~0.3 s), so 2 dtypes x (generic, 3x3) x 2 warp tiles = 8 kernels
# add ~4 s per architecture to the compile test; a template activation (as sepconv_fused
# has) would make them 8 x len(FUSED_ACTIVATIONS) (~200: ~100 s more per architecture),
# hence the runtime activation switch in the TC epilogue.
TC_EXTENTS = ((3, 3),)


def tc_name(dtype, extent, m_tiles=2):
    """Name expression of one `sepconv_tc` instantiation."""
    kh, kw = extent
    return f"sepconv_tc<{TC_DTYPES[dtype]}, {kh}, {kw}, {m_tiles}>"


def tc_reduce_name(dtype):
    return f"sepconv_tc_reduce<{TC_DTYPES[dtype]}>"


def tc_name_expressions():
    return [tc_name(dtype, extent, m_tiles) for dtype in TC_DTYPES for m_tiles in TC_M_TILES
            for extent in (GENERIC_EXTENT,) + TC_EXTENTS] + [tc_reduce_name(d) for d in TC_DTYPES]


def tc_extent(kernel):
    kernel = tuple(int(k) for k in kernel)
    return kernel if kernel in TC_EXTENTS else GENERIC_EXTENT


@dataclass(frozen=True)
class TcPlan:
    """Tiles, pipeline and shared memory of one `sepconv_tc` launch (see the top of
    sepconv_tc.cu), and what the cost model predicts for it."""

    bn: int              # filters per filter block (64, 128, 256)
    bm: int              # output positions per tile (TC_TILE_ELEMS // 2 * m_tiles // bn),
                         # consecutive in the flattened N x OH x OW space
    tiles: int           # ceil(N * OH * OW / bm)
    filter_blocks: int   # ceil(F / bn), run one after the other by every block
    halo_h: int          # most staged input rows of a tile: (KH - 1) * d_h + 1 for row
                         # segments, more for a slab of whole rows
    halo_w: int          # most staged input columns of a tile (segments side by side, or
                         # a whole row for a slab)
    halo_ws: int         # halo columns per stride residue (row pitch = halo_ws * stride_w)
    stages: int
    k_pad: int           # channels rounded up to TC_K_ALIGN (the prepared weights' K)
    shared_bytes: int
    grid: int            # tiles x k_splits
    predicted_us: float  # cost_model.predict on the default device (H100 constants), both
                         # launches when split
    k_splits: int = 1    # channel splits (then sepconv_tc_reduce finishes the sum)
    m_tiles: int = 2     # m16 tiles per warp (the MT template argument)
    a_slots: int = 2     # A slots: 2 (double-buffered), or a block's chunks (resident, FB > 1)
    band_h: int = 1      # position order: bands of this many output rows, a band column
                         # by column (1: row-major)
    slab: bool = False   # halo of whole input rows (small images; band_h 1), else segments
    blocks_per_sm: int = 1       # resident blocks an SM (registers and shared memory)
    # what the model charges (whole launch; `python -m benchmarks --predict` prints them)
    issued_flops: float = 0.0    # tensor-core FLOPs issued, padding included
    useful_flops: float = 0.0    # 2 x N*OH*OW x C x F
    staged_bytes: float = 0.0    # halo + depthwise weights cp.async'ed (L2 -> shared)
    l2_weight_bytes: float = 0.0  # pointwise rows streamed through L2
    recompute: float = 1.0       # depthwise evaluations per (position, channel)


def tc_layout(bm, bn, stages, halo_h, halo_pitch, taps, a_slots, filter_blocks):
    """Byte offsets of `sepconv_tc`'s shared memory (the carve-up at the top of
    sepconv_tc.cu; the kernel takes them as arguments) and its size: (as_at, ring_at,
    stage_bytes, halo_bytes, b_at, shared_bytes). The column / position tables come
    first, then the A slots (2, or the block's chunks when filter_blocks > 1: A stays
    resident), then the cp.async stages (halo, depthwise weights at halo_bytes,
    pointwise rows at b_at); the epilogue's Cs lies over the stages (and over A with a
    single filter block)."""
    as_at = -(-(bm * 8 + (halo_pitch + halo_h) * 12) // 16) * 16 + 16   # + the tile's halo size
    halo = halo_h * halo_pitch * TC_CHUNK_BYTES
    b_at = halo + taps * TC_CHUNK_BYTES
    stage = b_at + bn * TC_ROW_BYTES
    ring_at = as_at + a_slots * bm * TC_ROW_BYTES
    epilogue = bm * (bn + TC_OUT_PAD) * 4
    end = max(ring_at + stages * stage, (ring_at if filter_blocks > 1 else as_at) + epilogue)
    return as_at, ring_at, stage, halo, b_at, end


def _tc_shared_bytes(bm, bn, stages, halo_h, halo_pitch, taps, a_slots, filter_blocks):
    """Dynamic shared memory of `sepconv_tc` (see `tc_layout`)."""
    return tc_layout(bm, bn, stages, halo_h, halo_pitch, taps, a_slots, filter_blocks)[-1]


def tc_halo_extent(geom, bm, slab, band_h=1):
    """(rows, columns) of the largest halo a tile of `bm` positions stages (sepconv_tc's
    tables). Segments: one a band of `band_h` output rows the tile touches,
    (band_h - 1) s_h + (KH - 1) d_h + 1 rows of the columns its positions read, side by
    side, each rounded up to a multiple of the width stride. Slab (band_h 1): whole rows
    (OW - 1) s_w + (KW - 1) d_w + 1, rounded so, each input row once: (R - 1) s_h +
    (KH - 1) d_h + 1 for R output rows, plus (KH - 1) d_h + 1 - s_h for every image
    boundary crossed."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = geom.out_size, geom.kernel, geom.strides, geom.dilation
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    round_s = lambda v: -(-v // sw) * sw
    bands = -(-oh // band_h)
    low = oh - (bands - 1) * band_h          # rows of an image's last band
    # segments (bands) a tile touches: bm - 1 positions after the first one's band
    segments = min(-(-(bm - 1) // (low * ow)) + 1, geom.batch * bands, bm)
    if not slab:
        # a band's positions of one segment span at most ceil(count / height) + 1 columns
        columns = min(bm // low + 2 * segments, segments * ow)
        return ((band_h - 1) * sh + span_h,
                min((columns - segments) * sw + segments * round_s(span_w),
                    segments * round_s((ow - 1) * sw + span_w)))
    crossings = min(-(-(segments - 1) // oh), geom.batch - 1)
    return ((segments - 1) * sh + span_h + crossings * max(0, span_h - sh),
            round_s((ow - 1) * sw + span_w))


TC_BANDS = (1, 2, 4, 8)   # band heights (position orders) the planner considers


def tc_candidates(dtype, geom, linear_activation=True, smem_limit=TC_SMEM_LIMIT, count=4,
                  m_tiles=TC_M_TILES):
    """The `count` cheapest `TcPlan`s by the cost model, cheapest first (empty when no
    tile fits `smem_limit` bytes of shared memory); `tc_plan` is the first.

    Candidates: BN in TC_FILTER_BLOCKS (only those holding all F when F <= 256), MT in
    `m_tiles`, the position orders (bands of TC_BANDS rows, staged as segments; row-major
    staged as a slab), TC_STAGES, TC_SPLITS. Each is priced by `cost_model.tc_fused_work`:
    compulsory DRAM bytes; L2 bytes (the staged halo and depthwise weights once per
    tile and chunk, the pointwise rows once per tile, chunk and filter block); shared-
    memory bytes and SIMT issue of the depthwise (sliding-window strips where they
    apply); tensor FLOPs as issued (padded to the mma granularity); resident blocks
    (registers and shared memory) and waves. Each plan carries its prediction, blocks an
    SM and those charges.
    """
    return _tc_candidates(dtype, geom, bool(linear_activation), int(smem_limit),
                          tuple(m_tiles))[:count]


@functools.lru_cache(maxsize=4096)
def _tc_candidates(dtype, geom, linear_activation, smem_limit, m_tiles):
    from . import cost_model

    itemsize = TC_ITEMSIZE[dtype]
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilation
    taps = kh * kw
    k_pad = -(-geom.channels // TC_K_ALIGN) * TC_K_ALIGN
    chunks = k_pad * itemsize // TC_CHUNK_BYTES
    positions = geom.output_positions
    strips = tc_uses_strips(geom)
    found = []
    for bn, mt in itertools.product(TC_FILTER_BLOCKS, m_tiles):
        bm = TC_TILE_ELEMS // 2 * mt // bn
        blocks_f = -(-geom.filters // bn)
        if blocks_f > 1 and geom.filters <= max(TC_FILTER_BLOCKS):
            continue  # one filter block holds F: A double-buffered, not resident
        tiles = -(-positions // bm)
        layouts = [(band, False) for band in TC_BANDS if band <= geom.out_size[0]] + [(1, True)]
        for (band, slab), stages, splits in itertools.product(layouts, TC_STAGES, TC_SPLITS):
            hh, hw = tc_halo_extent(geom, bm, slab, band)
            hws = -(-hw // sw)
            if band > 1 and sw == 1:
                hws |= 1   # odd row pitch: vertically adjacent strips on distinct banks
            per_split = -(-chunks // splits)
            if (splits - 1) * per_split >= chunks:
                continue  # a split without channels
            a_slots = per_split if blocks_f > 1 else 2
            shared = _tc_shared_bytes(bm, bn, stages, hh, hws * sw, taps, a_slots, blocks_f)
            if shared > smem_limit:
                continue
            candidate = TcPlan(
                bn=bn, bm=bm, tiles=tiles, filter_blocks=blocks_f, halo_h=hh, halo_w=hw,
                halo_ws=hws, stages=stages, k_pad=k_pad, shared_bytes=shared,
                k_splits=splits, m_tiles=mt, a_slots=a_slots, band_h=band, slab=slab,
                predicted_us=0.0,
                grid=tiles * splits)
            work = cost_model.tc_fused_work(geom, candidate, itemsize, linear_activation,
                                            strips=strips)
            prediction = cost_model.predict(work)
            us = prediction.us
            if splits > 1:
                us += cost_model.predict(cost_model.tc_reduce_work(
                    geom, splits, itemsize, *tc_reduce_grid(geom))).us
            found.append(dataclasses.replace(
                candidate, predicted_us=us, blocks_per_sm=prediction.blocks_per_sm,
                **cost_model.tc_plan_charges(geom, candidate, itemsize)))
    # cheapest first; ties keep the enumeration order (sorted is stable)
    return tuple(sorted(found, key=lambda c: c.predicted_us))


def tc_plan(dtype, geom, linear_activation=True, smem_limit=TC_SMEM_LIMIT, m_tiles=TC_M_TILES):
    """The cheapest `TcPlan` by the cost model (the first of `tc_candidates`), or None
    when no tile fits `smem_limit` bytes of shared memory. `m_tiles`: the warp-tile
    heights to consider. `linear_activation`: the epilogue applies no activation (the
    launch plans with the activation it runs: see `select_kernel`)."""
    found = tc_candidates(dtype, geom, linear_activation, smem_limit, 1, m_tiles)
    return found[0] if found else None


def tc_reduce_grid(geom, sms=None):
    """(grid, block) of sepconv_tc_reduce: a grid-stride loop over the outputs, at most 8
    blocks an SM (`sms`: the device's SM count; default: the cost model's device)."""
    from . import cost_model

    sms = cost_model.DEFAULT_DEVICE.sms if sms is None else int(sms)
    count = geom.output_positions * geom.filters
    return max(1, min(-(-count // TC_THREADS), 8 * sms)), TC_THREADS


def tc_uses_strips(geom):
    """Whether sepconv_tc's depthwise runs sliding-window strips of 4 outputs (the
    kernel's `strips` condition): a specialized extent, unit stride and dilation along
    the width. Groups of 4 that cross a row segment run output by output."""
    return (tc_extent(geom.kernel) != GENERIC_EXTENT and geom.strides[1] == 1
            and geom.dilation[1] == 1)


def select_kernel(dtype, geom, allow_tf32, x_strides, x_aligned, smem_limit=TC_SMEM_LIMIT,
                  linear_activation=True):
    """"tc" (sepconv_tc) or "simt" (sepconv_fused): the one rule that picks the kernel.

    The tensor-core kernel needs: float16, or float32 with allow_tf32 (default: exact
    FP32 on the SIMT kernel); channels_last; depth_multiplier 1; 16-byte cp.async of the
    input: contiguous channels, C and every other element stride (`x_strides`, (n, c, h,
    w)) a multiple of 16 bytes, a 16-byte aligned base (`x_aligned`, which the memoized
    planner cannot see in the strides); sizes within 32-bit indexing; a tile that fits
    the device's `smem_limit`. Everything else runs the SIMT kernel. The checks are made
    on the plan that launches: the one for `linear_activation` (whether the epilogue
    runs an activation, which the model prices).
    """
    if dtype not in TC_DTYPES or (dtype == "float32" and not allow_tf32):
        return "simt"
    if geom.channels_first or geom.depth_multiplier != 1 or not x_aligned:
        return "simt"
    vec = 16 // TC_ITEMSIZE[dtype]
    n_stride, c_stride, h_stride, w_stride = (int(s) for s in x_strides)
    if c_stride != 1 or any(s % vec for s in (geom.channels, n_stride, h_stride, w_stride)):
        return "simt"
    tp = tc_plan(dtype, geom, linear_activation, smem_limit)
    return "tc" if tp is not None and tc_fits_int32(geom, tp) else "simt"


def tc_fits_int32(geom, tp):
    """Whether the sizes sepconv_tc indexes with 32-bit ints stay below 2^31 under `tp`:
    the furthest input coordinate a position's taps reach, the flattened position index
    of the last tile (positions past the end included), the grid, the weight offsets."""
    (oh, ow), (sh, sw), (dh, dw), (kh, kw) = geom.out_size, geom.strides, geom.dilation, geom.kernel
    reach = max(oh * sh + (kh - 1) * dh, ow * sw + (kw - 1) * dw) + max(geom.in_size)
    return max(tp.grid, reach, tp.tiles * tp.bm, tp.k_pad * max(geom.filters, kh * kw)) <= INT32_MAX


def tc_scalar_args(geom, tp, x_strides, has_bias, kernel_id, act_param):
    """Scalars of `sepconv_tc` after its six pointers, typed as the kernel declares them."""
    import numpy as np

    i32 = np.int32
    (h, w), (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (
        geom.in_size, geom.kernel, geom.strides, geom.dilation, geom.pad_before)
    (oh, ow) = geom.out_size
    n_stride, _, h_stride, w_stride = x_strides
    return (
        np.int64(n_stride), np.int64(h_stride), np.int64(w_stride),
        i32(geom.batch), i32(geom.channels), i32(h), i32(w), i32(geom.filters), i32(oh),
        i32(ow), i32(kh), i32(kw), i32(sh), i32(sw), i32(dh), i32(dw), i32(ph), i32(pw),
        i32(tp.bn), i32(tp.filter_blocks), i32(tp.halo_h), i32(tp.halo_ws),
        i32(tp.stages), i32(tp.k_pad), i32(bool(has_bias)),
        i32(FUSED_ACTIVATIONS.index(kernel_id)), np.float32(act_param),
        i32(tp.k_splits.bit_length() - 1),
        *(i32(v) for v in tc_layout(tp.bm, tp.bn, tp.stages, tp.halo_h, tp.halo_ws * sw,
                                    kh * kw, tp.a_slots, tp.filter_blocks)[:5]),
        i32(tp.band_h), i32(tp.slab),
    )


def tc_reduce_scalar_args(geom, tp, has_bias, kernel_id, act_param):
    """Scalars of `sepconv_tc_reduce` after its three pointers."""
    import numpy as np

    return (np.int64(geom.output_positions * geom.filters), np.int32(geom.filters),
            np.int32(tp.k_splits), np.int32(bool(has_bias)),
            np.int32(FUSED_ACTIVATIONS.index(kernel_id)), np.float32(act_param))


# --- weights in each kernel's layout ------------------------------------------------------

def weights_layout(kind, dtype):
    """Key of the weight layout a kernel reads: "simt:<accumulator dtype>",
    "tc:float16", "tc:bfloat16" or "tc:tf32" (also the key under which a layer caches
    them)."""
    if kind == "tc":
        return "tc:tf32" if dtype == "float32" else "tc:" + dtype
    return "simt:" + ("float64" if dtype == "float64" else "float32")


def round_to_tf32(xp, a):
    """float32 -> the nearest TF32 value (ties away from zero, as cvt.rna.tf32.f32), kept
    as float32 with the low 13 mantissa bits zero. Inf and NaN pass unchanged."""
    a = xp.ascontiguousarray(a, dtype=xp.float32)
    bits = a.view(xp.uint32)
    rounded = ((bits + xp.uint32(0x1000)) & xp.uint32(0xFFFFE000)).view(xp.float32)
    return xp.where(xp.isfinite(a), rounded, a)


def round_to_bfloat16_bits(xp, a):
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even as
    __float2bfloat16_rn; NaN stays NaN (quiet)."""
    bits = xp.ascontiguousarray(a, dtype=xp.float32).view(xp.uint32)
    rounded = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) >> 16
    return xp.where(xp.isnan(a), xp.uint32(0x7FC0), rounded).astype(xp.uint16)


def prepare_weights(xp, layout, depthwise, pointwise, bias):
    """(depthwise, pointwise, bias) in the layout `layout` (see `weights_layout`), as new
    contiguous `xp` arrays (xp = numpy or cupy); bias None stays None.

    simt: depthwise [taps][C*M], pointwise [C*M][F], bias [F], in the accumulator dtype.
    tc:   depthwise [taps][K_pad] and pointwise [F][K_pad] (transposed: ldmatrix reads
          filter rows), channels zero-padded to K_pad = TC_K_ALIGN multiple, in half
          ("tc:float16"), bfloat16 bit patterns as uint16 ("tc:bfloat16", rounded to
          nearest even) or float32 ("tc:tf32", pointwise rounded to TF32; depthwise stays
          exact FP32 for the FFMA stage); bias float32.
    """
    kind, fmt = layout.split(":")
    depthwise, pointwise = xp.asarray(depthwise), xp.asarray(pointwise)
    k, filters = pointwise.shape[-2], pointwise.shape[-1]
    taps = depthwise.size // k
    if kind == "simt":
        acc = xp.float64 if fmt == "float64" else xp.float32
        return (xp.ascontiguousarray(depthwise.reshape(taps, k), dtype=acc),
                xp.ascontiguousarray(pointwise.reshape(k, filters), dtype=acc),
                None if bias is None else xp.ascontiguousarray(xp.asarray(bias), dtype=acc))
    operand = {"float16": xp.float16, "bfloat16": xp.float32}.get(fmt, xp.float32)
    k_pad = -(-k // TC_K_ALIGN) * TC_K_ALIGN
    dw = xp.zeros((taps, k_pad), dtype=operand)
    dw[:, :k] = depthwise.reshape(taps, k).astype(operand)
    pw = xp.zeros((filters, k_pad), dtype=operand)
    pw[:, :k] = pointwise.reshape(k, filters).T.astype(operand)
    if fmt == "tf32":
        pw = round_to_tf32(xp, pw)
    elif fmt == "bfloat16":   # bit patterns: NumPy and CuPy have no bfloat16 dtype
        dw, pw = round_to_bfloat16_bits(xp, dw), round_to_bfloat16_bits(xp, pw)
    b = None if bias is None else xp.ascontiguousarray(xp.asarray(bias), dtype=xp.float32)
    return dw, pw, b
