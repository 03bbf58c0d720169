"""The SIMT kernel family, paired with kernels/sepconv_simt.cu: its constants (SC_*,
tests/test_kernel_constants.py checks them), its instantiation names, the planner
(`plan` -> `KernelPlan`, `simt_plan`), the 32-bit launch check and the scalar arguments
of `sepconv_simt`; and the softmax kernel that lives in the same source
(`sepconv_softmax_lastaxis`: its name and launch).

Plain Python, free of CuPy. `launch.py` turns a plan into a `Launch`.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from ...geometry import INT32_MAX, ConvGeometry
from .kernel_common import DTYPES, GENERIC_EXTENT, activation_index

SOURCE = "sepconv_simt.cu"

# --- constants mirrored from kernels/sepconv_simt.cu -----------------------------------
THREADS = 256            # SC_THREADS
CHUNK = 16               # SC_BK: depthwise channels per chunk
TILE_ELEMS = 4096        # SC_TILE_ELEMS = BP * BF
DW_SMEM_TAPS = 64        # SC_DW_SMEM_TAPS
CS_PAD = 4               # SC_CS_PAD: accumulators a row of the epilogue tile has past its data
FILTER_BLOCKS = (16, 32, 64)   # BF choices (BP = TILE_ELEMS // BF = 256, 128, 64)
SMEM_BUDGET = 48 * 1024  # dynamic shared memory without an opt-in attribute
SOFTMAX_THREADS = 256   # sepconv_softmax_lastaxis block size (8 warps, a row each)

# Kernel extents (KH, KW) with a compile-time specialization (fully unrolled taps, weights
# in registers); every other extent runs the generic runtime-extent path (0, 0).
# 3x3 covers Xception / MobileNet, 5x5 EfficientNet-style blocks, (1, 3) the common 1D
# case. Each entry costs 2 instantiations (layouts) per dtype, ~1 s of NVRTC each (sm_90)
# on a user's first call, so float64 (rarely a speed concern) and bfloat16 only get the
# generic path.
SPECIALIZED_EXTENTS = {
    "float32": ((3, 3), (5, 5), (1, 3)),
    "float16": ((3, 3), (5, 5), (1, 3)),
    "float64": (),
    "bfloat16": (),
}


def kernel_extent(dtype, kernel):
    """The (KH, KW) template arguments that serve a kernel of this size."""
    kernel = tuple(int(k) for k in kernel)
    return kernel if kernel in SPECIALIZED_EXTENTS[dtype] else GENERIC_EXTENT



def simt_name(dtype, channels_first, extent):
    """Name expression of one `sepconv_simt` instantiation (every activation)."""
    ctype = DTYPES[dtype][0]
    kh, kw = extent
    layout = "true" if channels_first else "false"
    return f"sepconv_simt<{ctype}, {layout}, {kh}, {kw}>"


def softmax_name(dtype, log):
    return f"sepconv_softmax_lastaxis<{DTYPES[dtype][0]}, {'true' if log else 'false'}>"



def simt_name_expressions():
    """The `sepconv_simt` and `sepconv_softmax_lastaxis` instantiations."""
    names = []
    for dtype in DTYPES:
        for extent in (GENERIC_EXTENT,) + tuple(SPECIALIZED_EXTENTS[dtype]):
            for channels_first in (False, True):
                names.append(simt_name(dtype, channels_first, extent))
        for log in (False, True):
            names.append(softmax_name(dtype, log))
    return names



# --- planning ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelPlan:
    """Tile shape and derived sizes of one launch (see the top of sepconv_simt.cu)."""

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
    shared_bytes: int  # dynamic shared memory: the mainloop's or the epilogue tile's, the larger
    grid: int          # blocks
    predicted_us: float = 0.0   # cost_model.predict (H100 constants; contiguous input)

    @property
    def th(self):
        return self.bp // self.tw


def epilogue_bytes(bf, channels_first, acc_itemsize):
    """Shared bytes of the epilogue tile Cs, which reuses the mainloop's: rows along the
    output's contiguous axis (BF filters for channels_last, BP positions for
    channels_first) CS_PAD accumulators apart, the last row's padding not needed."""
    bp = TILE_ELEMS // bf
    rows, row_len = (bf, bp) if channels_first else (bp, bf)
    return ((rows - 1) * (row_len + CS_PAD) + row_len) * acc_itemsize


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
        epilogue = epilogue_bytes(bf, channels_first, acc_isz)
        for tw in _tile_widths(bp, ow, oh):
            tiles_w, tiles_h = -(-ow // tw), -(-oh // (bp // tw))
            hh, hw = _halo_extent(bp // tw, sh, dh, kh), _halo_extent(tw, sw, dw, kw)
            footprint = hw + (hw & 1) if split else hw
            col_step = 1 if split else sw
            tile = dict(bf=bf, bp=bp, tw=tw, tiles_w=tiles_w, tiles_img=tiles_w * tiles_h,
                        filter_blocks=blocks_f, grid=batch * tiles_w * tiles_h * blocks_f)
            for pitch in dict.fromkeys((_row_pitch(footprint, tw, sh, col_step, in_isz), footprint)):
                plane = hh * pitch | 1  # odd: conflict-free channel-strided smem stores
                shared = max(fixed + halo_channels * plane * in_isz, epilogue)
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
                                              use_halo=False,
                                              shared_bytes=max(fixed, epilogue)), 1)
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


def simt_plan(dtype, geom):
    """The SIMT kernel's `KernelPlan` for this call (`plan`)."""
    return plan(dtype, geom.batch, geom.channels, geom.depth_multiplier, geom.filters,
                geom.in_size, geom.out_size, geom.kernel, geom.strides, geom.dilation,
                geom.channels_first)



# --- launch arguments (the scalar tail of the kernels' parameter lists) -----------------

def simt_scalar_args(geom, kernel_plan, x_strides, has_bias, kernel_id, act_param):
    """Scalars of `sepconv_simt` after its five pointers, typed as the kernel declares
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


def softmax_launch(rows, length):
    """(grid, scalar args) of `sepconv_softmax_lastaxis` over a contiguous (rows, length)."""
    import numpy as np

    if length > INT32_MAX:
        raise ValueError(f"sepconv_gpu CUDA backend: softmax axis of {length} elements exceeds 2^31 - 1.")
    warps = SOFTMAX_THREADS // 32
    grid = max(1, min(-(-rows // warps), 1 << 20))  # grid-stride beyond that
    return grid, (np.int64(rows), np.int32(length))


