"""Which kernels one separable convolution launches, and the loop that launches them.

Plain Python, free of CuPy: the CUDA backend (`cuda_backend.CupyOps`) runs it with CuPy
arrays and loaded kernels, the host-emulation tests (`tests/_cuda_host_emulator.py`) with
NumPy arrays and the kernels built for the CPU. A forward call goes:
`launch_sequence` -> `select_kernel` (the one rule between the two families) -> the
family's planner (`simt.simt_plan` or `tc.tc_plan`) and scalar arguments -> a tuple of
`Launch`; then `run_launches` prepares the weights in each kernel's layout
(`prepare_weights`), gives each launch its arrays (`launch_arrays`) and launches it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import kernel_common, simt, tc
from .kernel_common import FUSED_ACTIVATIONS, GENERIC_EXTENT, LAST_AXIS_ACTIVATIONS
from .tc import TC_SMEM_LIMIT, TcPlan


# --- which kernels ------------------------------------------------------------------------

def select_kernel(dtype, geom, allow_tf32, x_strides, x_aligned, smem_limit=TC_SMEM_LIMIT,
                  linear_activation=True):
    """"tc" (sepconv_tc) or "simt" (sepconv_simt): the one rule that picks the kernel.

    The tensor-core kernel needs: float16, or float32 with allow_tf32 (default: exact
    FP32 on the SIMT kernel); channels_last; depth_multiplier 1; 16-byte cp.async of the
    input: contiguous channels, C and every other element stride (`x_strides`, (n, c, h,
    w)) a multiple of 16 bytes, a 16-byte aligned base (`x_aligned`, which the memoized
    planner cannot see in the strides); sizes within 32-bit indexing; a tile that fits
    the device's `smem_limit`. Everything else runs the SIMT kernel. The checks are made
    on the plan that launches: the one for `linear_activation` (whether the epilogue
    runs an activation, which the model prices).
    """
    if dtype not in tc.TC_DTYPES or (dtype == "float32" and not allow_tf32):
        return "simt"
    if geom.channels_first or geom.depth_multiplier != 1 or not x_aligned:
        return "simt"
    vec = 16 // tc.TC_ITEMSIZE[dtype]
    n_stride, c_stride, h_stride, w_stride = (int(s) for s in x_strides)
    if c_stride != 1 or any(s % vec for s in (geom.channels, n_stride, h_stride, w_stride)):
        return "simt"
    tp = tc.tc_plan(dtype, geom, linear_activation, smem_limit)
    return "tc" if tp is not None and tc.tc_fits_int32(geom, tp) else "simt"


# --- launches ----------------------------------------------------------------------------

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


@dataclass(frozen=True)
class Launch:
    """One kernel launch: `kind` "simt" takes (x, depthwise, pointwise, bias, y) before
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
    if launch.kind == "simt":
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
    call the tensor-core kernel may serve) or a `simt.KernelPlan` (of `simt_plan`): the
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
    kernel_common.check_dtype(dtype)
    fused = kernel_id in FUSED_ACTIVATIONS
    normalize = kernel_id in LAST_AXIS_ACTIVATIONS
    act = kernel_id if fused else "linear"
    param = kernel_param if fused else 0.0
    tc_allowed = select_kernel(dtype, geom, allow_tf32, x_strides, x_aligned, smem_limit,
                               act == "linear") == "tc"
    if isinstance(chosen, TcPlan) and not (
            tc_allowed and chosen.shared_bytes <= smem_limit and tc.tc_fits_int32(geom, chosen)):
        raise ValueError(f"sepconv_gpu: plan {chosen} cannot serve this call on the "
                         "tensor-core kernel")
    if chosen is None and tc_allowed:
        chosen = tc.tc_plan(dtype, geom, act == "linear", smem_limit)
    if isinstance(chosen, TcPlan):
        tp = chosen
        partial = tp.k_splits * geom.output_positions * geom.filters if tp.k_splits > 1 else 0
        launches = [Launch("tc", tc.tc_name(dtype, tc.tc_extent(geom.kernel), tp.m_tiles),
                           tp.grid, tc.TC_THREADS, tp.shared_bytes,
                           tc.tc_scalar_args(geom, tp, x_strides, has_bias, act, param),
                           weights_layout("tc", dtype), tp.predicted_us, partial)]
        if partial:
            grid, block = tc.tc_reduce_grid(geom, sms)
            launches.append(Launch("tc_reduce", tc.tc_reduce_name(dtype), grid, block, 0,
                                   tc.tc_reduce_scalar_args(geom, tp, has_bias, act, param),
                                   weights_layout("tc", dtype)))
    else:
        launches = [_simt_launch(dtype, geom, act, x_strides, has_bias, param, chosen)]
    if normalize:
        shape = geom.output_shape
        grid, args = simt.softmax_launch(math.prod(shape) // shape[-1], shape[-1])
        launches.append(Launch("softmax", simt.softmax_name(dtype, kernel_id == "log_softmax"),
                               grid, simt.SOFTMAX_THREADS, 0, args))
    return tuple(launches), not kernel_common.kernels_apply(kernel_id)


def _simt_launch(dtype, geom, kernel_id, x_strides, has_bias, act_param, kp=None):
    kp = kp or simt.simt_plan(dtype, geom)
    simt.check_launchable(geom, kp)
    # The specialized extents assume a shared-memory halo; without one, use the generic path.
    extent = simt.kernel_extent(dtype, geom.kernel) if kp.use_halo else GENERIC_EXTENT
    name = simt.simt_name(dtype, geom.channels_first, extent)
    scalars = simt.simt_scalar_args(geom, kp, x_strides, has_bias, kernel_id, act_param)
    return Launch("simt", name, kp.grid, simt.THREADS, kp.shared_bytes, scalars,
                  weights_layout("simt", dtype), kp.predicted_us)


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
    k_pad = -(-k // tc.TC_K_ALIGN) * tc.TC_K_ALIGN
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


# --- the launch loop ---------------------------------------------------------------------

def run_launches(launches, x, y, *, prepare, empty, launch_one):
    """Enqueues `launches` (of `launch_sequence`, in order) on input `x` and output `y`:
    the one launch loop of the CUDA backend and of the host emulator, which differ only
    in what they pass. `prepare(layout)`: the weights in that layout (`prepare_weights`),
    asked once, by the first launch that reads weights; `empty(n)`: a float32 buffer of
    n elements for a split's partial sums (which "tc" writes and "tc_reduce" reads);
    `launch_one(launch, arrays)`: launches one with its array arguments (`launch_arrays`)
    followed by `launch.scalars`."""
    prepared = partial = None
    for launch in launches:
        if launch.weights and prepared is None:
            prepared = prepare(launch.weights)
        if launch.partial:
            partial = empty(launch.partial)
        launch_one(launch, launch_arrays(launch, x, prepared, y, partial))
