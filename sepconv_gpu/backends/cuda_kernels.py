"""The CUDA kernel catalogue and launch planner, free of CuPy.

Everything here is plain Python so that the compile check (tests/test_cuda_compile.py)
can enumerate and build every kernel instantiation with nvcc on a machine without CuPy or
a GPU. `cuda_backend.py` uses the same functions to request kernels through NVRTC.

Kept in step with kernels/sepconv_fused.cu: the SC_* constants, the template parameters
of `sepconv_fused` / `sepconv_softmax_lastaxis`, and the shared-memory layout.
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

from ..geometry import INT32_MAX

# --- constants mirrored from kernels/sepconv_fused.cu ---------------------------------
THREADS = 256            # SC_THREADS
CHUNK = 16               # SC_BK: depthwise channels per chunk
TILE_ELEMS = 4096        # SC_TILE_ELEMS = BP * BF
MAX_POSITIONS = 256      # largest BP = TILE_ELEMS // min(FILTER_BLOCKS) (Python only)
DW_SMEM_TAPS = 64        # SC_DW_SMEM_TAPS
FILTER_BLOCKS = (16, 32, 64)   # BF choices (BP = TILE_ELEMS // BF = 256, 128, 64)
SMEM_BUDGET = 48 * 1024  # dynamic shared memory without an opt-in attribute
SECTOR_COST = 64         # planner: one 32-byte global sector ~ this many FMAs (L2 bandwidth)
STAGE_COST = 8           # planner: staging one halo element (index math, smem store)
SOFTMAX_THREADS = 256   # sepconv_softmax_lastaxis block size (8 warps, a row each)
NVRTC_OPTIONS = ("--std=c++17",)

MAIN_SOURCE = "sepconv_fused.cu"

# dtype name -> (C++ type, input itemsize, accumulator itemsize)
DTYPES = {
    "float32": ("float", 4, 4),
    "float16": ("__half", 2, 4),
    "float64": ("double", 8, 8),
}

# Activation.kernel_id values fused into the epilogue (enum SepconvActivation, same order).
FUSED_ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "gelu_tanh",
    "sigmoid", "hard_sigmoid", "hard_silu", "silu", "mish", "softplus", "softsign", "tanh",
    "exponential",
)
# Normalizing activations: linear fused kernel, then sepconv_softmax_lastaxis.
LAST_AXIS_ACTIVATIONS = ("softmax", "log_softmax")

# Kernel extents (KH, KW) with a compile-time specialization (fully unrolled taps, weights
# in registers); every other extent runs the generic runtime-extent path (0, 0).
# 3x3 covers Xception / MobileNet, 5x5 EfficientNet-style blocks, (1, 3) the common 1D
# case. Each entry costs len(FUSED_ACTIVATIONS) * 2 layouts instantiations per dtype, so
# float64 (rarely a speed concern) only gets the generic path.
SPECIALIZED_EXTENTS = {
    "float32": ((3, 3), (5, 5), (1, 3)),
    "float16": ((3, 3), (5, 5), (1, 3)),
    "float64": (),
}
GENERIC_EXTENT = (0, 0)


def activation_enum(kernel_id):
    return "ACT_" + kernel_id.upper()


def kernel_extent(dtype, kernel):
    """The (KH, KW) template arguments that serve a kernel of this size."""
    kernel = tuple(int(k) for k in kernel)
    return kernel if kernel in SPECIALIZED_EXTENTS[dtype] else GENERIC_EXTENT


def fused_name(dtype, kernel_id, channels_first, extent):
    """Name expression of one `sepconv_fused` instantiation."""
    ctype = DTYPES[dtype][0]
    kh, kw = extent
    layout = "true" if channels_first else "false"
    return f"sepconv_fused<{ctype}, {activation_enum(kernel_id)}, {layout}, {kh}, {kw}>"


def softmax_name(dtype, log):
    return f"sepconv_softmax_lastaxis<{DTYPES[dtype][0]}, {'true' if log else 'false'}>"


def all_name_expressions():
    """Every kernel instantiation the library can request (what the compile test builds)."""
    names = []
    for dtype in DTYPES:
        for extent in (GENERIC_EXTENT,) + tuple(SPECIALIZED_EXTENTS[dtype]):
            for channels_first in (False, True):
                for kernel_id in FUSED_ACTIVATIONS:
                    names.append(fused_name(dtype, kernel_id, channels_first, extent))
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

    Inlining (rather than an -I option) makes the text CuPy hashes for its on-disk cache
    cover the headers too, and keeps NVRTC error locations pointing at the real files.
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
    """The complete kernel source as NVRTC compiles it (read once)."""
    return _inline(kernels_dir(), MAIN_SOURCE, set()) + "\n"


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
    plane: int         # halo channel plane stride (elements, odd)
    use_halo: bool
    shared_bytes: int
    grid: int          # blocks

    @property
    def th(self):
        return self.bp // self.tw


def _halo_channels(channels, multiplier):
    """Most input channels one chunk of CHUNK depthwise channels reads."""
    if multiplier == 1:
        return min(channels, CHUNK)
    return min(channels, (CHUNK - 1) // multiplier + 2)


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


@functools.lru_cache(maxsize=4096)
def plan(dtype, batch, channels, multiplier, filters, in_size, out_size, kernel, strides,
         dilation, channels_first=False):
    """Pick the filter block, tile shape and halo mode for one convolution.

    Cost of a candidate (BF, tile width), per block and channel chunk, in FMA-equivalents:
    BP depthwise outputs (taps FMAs each) and BP x BF pointwise outputs, plus the halo:
    SECTOR_COST per 32-byte sector loaded (runs are contiguous along the channels for
    channels_last, along the width for channels_first) and STAGE_COST per element staged.
    Ragged tiles and filter blocks waste work. Only candidates whose shared memory fits
    SMEM_BUDGET qualify; if none does (huge dilated extents) the kernel gathers the
    depthwise input from global memory (use_halo=False) with the least wasteful tile.
    """
    _, in_isz, acc_isz = DTYPES[dtype]
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = out_size, kernel, strides, dilation
    taps = kh * kw
    dw_bytes = taps * CHUNK * acc_isz if taps <= DW_SMEM_TAPS else 0
    halo_channels = _halo_channels(channels, multiplier)

    best, fallback = None, None
    for bf in FILTER_BLOCKS:
        bp = TILE_ELEMS // bf
        blocks_f = -(-filters // bf)
        fixed = CHUNK * (bp + bf) * acc_isz + dw_bytes
        for tw in _tile_widths(bp, ow, oh):
            tiles_w, tiles_h = -(-ow // tw), -(-oh // (bp // tw))
            blocks = blocks_f * tiles_w * tiles_h
            hh, hw = _halo_extent(bp // tw, sh, dh, kh), _halo_extent(tw, sw, dw, kw)
            plane = hh * hw | 1  # odd: conflict-free channel-strided smem stores
            shared = fixed + halo_channels * plane * in_isz
            compute = blocks * bp * CHUNK * (taps + bf)
            key = (bf, bp, tw, tiles_w, tiles_h, blocks_f)
            if shared <= SMEM_BUDGET:
                if channels_first:
                    sectors = halo_channels * hh * (-(-hw * in_isz // 32) + 1)
                else:
                    sectors = hh * hw * -(-halo_channels * in_isz // 32)
                halo = SECTOR_COST * sectors + STAGE_COST * halo_channels * hh * hw
                cost = compute + blocks * halo
                if best is None or cost < best[0]:
                    best = (cost, key, (hh, hw, plane, shared, True))
            if fallback is None or compute < fallback[0]:
                fallback = (compute, key, (1, 1, 1, fixed, False))
    _, (bf, bp, tw, tiles_w, tiles_h, blocks_f), (hh, hw, plane, shared, use_halo) = best or fallback
    return KernelPlan(bf=bf, bp=bp, tw=tw, tiles_w=tiles_w, tiles_img=tiles_w * tiles_h,
                      filter_blocks=blocks_f, halo_h=hh, halo_w=hw, plane=plane,
                      use_halo=use_halo, shared_bytes=shared,
                      grid=batch * tiles_w * tiles_h * blocks_f)


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

def fused_scalar_args(geom, kernel_plan, x_strides, has_bias, act_param):
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
        i32(p.halo_h), i32(p.halo_w), i32(p.plane), i32(p.use_halo), i32(bool(has_bias)),
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
    `scalars`; kind "softmax" takes (y,)."""

    kind: str
    name: str
    grid: int
    block: int
    shared_bytes: int
    scalars: tuple


def launch_sequence(dtype, geom, activation, x_strides, has_bias):
    """The launches computing one separable convolution, and whether `activation(y)` must
    still be applied afterwards (activations without a kernel variant).

    Array-agnostic: the CUDA backend runs it with CuPy arrays; the host-emulation test runs
    the very same sequence with NumPy arrays. Memoized: a layer called again with the same
    geometry pays a dictionary lookup, not the planning.
    """
    return _launch_sequence(dtype, geom, activation.kernel_id, activation.kernel_param,
                            tuple(int(s) for s in x_strides), bool(has_bias))


@functools.lru_cache(maxsize=1024)
def _launch_sequence(dtype, geom, kernel_id, kernel_param, x_strides, has_bias):
    if dtype not in DTYPES:
        raise TypeError(f"sepconv_gpu CUDA backend: unsupported dtype {dtype}; expected one of {tuple(DTYPES)}.")
    fused = kernel_id in FUSED_ACTIVATIONS
    normalize = kernel_id in LAST_AXIS_ACTIVATIONS
    kp = plan(dtype, geom.batch, geom.channels, geom.depth_multiplier, geom.filters,
              geom.in_size, geom.out_size, geom.kernel, geom.strides, geom.dilation,
              geom.channels_first)
    check_launchable(geom, kp)
    # The specialized extents assume a shared-memory halo; without one, use the generic path.
    extent = kernel_extent(dtype, geom.kernel) if kp.use_halo else GENERIC_EXTENT
    name = fused_name(dtype, kernel_id if fused else "linear", geom.channels_first, extent)
    scalars = fused_scalar_args(geom, kp, x_strides, has_bias, kernel_param if fused else 0.0)
    launches = [Launch("fused", name, kp.grid, THREADS, kp.shared_bytes, scalars)]
    if normalize:
        shape = geom.output_shape
        grid, args = softmax_launch(math.prod(shape) // shape[-1], shape[-1])
        launches.append(Launch("softmax", softmax_name(dtype, kernel_id == "log_softmax"),
                               grid, SOFTMAX_THREADS, 0, args))
    return tuple(launches), not (fused or normalize)
