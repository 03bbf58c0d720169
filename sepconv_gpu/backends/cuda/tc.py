"""The tensor-core kernel family, paired with kernels/sepconv_tc.cu: its constants (TC_*,
tests/test_kernel_constants.py checks them), its instantiation names, the planner
(`tc_candidates` / `tc_plan` -> `TcPlan`, priced by the cost model), the shared-memory
carve-up (`tc_layout`), the halo extent, the 32-bit check (`tc_fits_int32`), and the
scalar arguments of `sepconv_tc` and of `sepconv_tc_reduce` (which finishes a
channel-split launch, `tc_reduce_grid`).

Plain Python, free of CuPy. `launch.select_kernel` decides when this family runs.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

from ...geometry import INT32_MAX
from .kernel_common import GENERIC_EXTENT, activation_index

# Constants mirrored from kernels/sepconv_tc.cu (tests/test_kernel_constants.py).
TC_THREADS = 256         # TC_THREADS
TC_WARPS = 8             # TC_WARPS
TC_WARP_M = 32           # TC_WARP_M: positions a warp multiplies
TC_WARP_N = 64           # TC_WARP_N: filters a warp multiplies
TC_TILE_ELEMS = 16384    # TC_TILE_ELEMS = BM * BN
TC_CHUNK_BYTES = 64      # TC_CHUNK_BYTES: one position's channel chunk
TC_ROW_BYTES = 80        # TC_ROW_BYTES: shared pitch of an A / B row
TC_OUT_PAD = 4           # TC_OUT_PAD: extra floats per epilogue row
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
# dtype -> C++ type. float32 runs only with allow_tf32 (mma.m16n8k8.tf32); bfloat16
# (mma.m16n8k16.bf16) and float16 whenever `launch.select_kernel` finds the call fits.
TC_DTYPES = {"float16": "__half", "float32": "float", "bfloat16": "__nv_bfloat16"}
TC_ITEMSIZE = {"float16": 2, "float32": 4, "bfloat16": 2}
# Specialized extents (weights in registers, taps unrolled); others: generic (0, 0).
# Each one listed costs 3 dtypes x 3 warp tiles = 9 more instantiations, ~1.1-1.6 CPU-s of
# NVRTC each (sm_90, measured on a 2-core machine): what users compile on a first call and
# the compile test builds per architecture. The activation is a runtime switch for the
# same reason (a template one would multiply them by len(FUSED_ACTIVATIONS)).
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
    (kh, kw), sw = geom.kernel, geom.strides[1]
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
    launch plans with the activation it runs: see `launch.select_kernel`)."""
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
        i32(activation_index(kernel_id)), np.float32(act_param),
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
            np.int32(activation_index(kernel_id)), np.float32(act_param))
