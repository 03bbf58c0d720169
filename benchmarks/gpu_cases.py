"""The convolutions the GPU check runs: every distinct plan the planner picks for the
benchmark suites, plus the dtypes and activations the suites do not reach.

`check_cases()` walks the suites (benchmarks/suites.py) at batch 1, 8 and 32 in each mode
(float32: SIMT; tf32 and float16: the tensor-core kernel where it applies), asks the
planner (`launch_sequence`, `plan`, `tc_plan`) what it launches, and keeps
the first case of each distinct plan: the kernel names (sepconv_tc_reduce after a channel
split) and the tile shape. Then float64 versions of the SIMT plans and softmax /
log_softmax in every mode. Kernel names are never written here: they come from the
planner, so the check follows the catalogue as it changes.

`shrunk(case)` is the smallest batch and spatial size with the same plan, for the host
emulator (a dry run) and compute-sanitizer, where every block costs time.
CuPy-free: a machine without a GPU enumerates the same cases.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends import kernel_common, simt, tc
from sepconv_gpu.backends.launch import input_element_strides, launch_sequence

from . import suites

BATCHES = (1, 8, 32)
MODES = ("float32", "tf32", "float16")


@dataclass(frozen=True)
class Case:
    """One separable convolution; the defaults are the suites' (channels_last, `same`
    padding, depth multiplier 1, square inputs and kernels)."""

    label: str        # where it came from: "suite/layer batch mode"
    mode: str         # float32 | tf32 | float16 | float64
    batch: int
    size: int | tuple  # spatial extent: an int (height = width for 2D, steps for 1D) or a tuple
    channels: int
    filters: int
    stride: int = 1
    kernel: int | tuple = 3
    rank: int = 2
    activation: str | None = None
    use_bias: bool = True
    multiplier: int = 1
    dilation: int | tuple = 1
    padding: str = "same"
    channels_first: bool = False

    @property
    def dtype(self):
        return "float32" if self.mode == "tf32" else self.mode

    @property
    def allow_tf32(self):
        return self.mode == "tf32"

    @property
    def data_format(self):
        return "channels_first" if self.channels_first else "channels_last"

    def _spatial(self, value):
        return tuple(value) if isinstance(value, tuple) else (value,) * self.rank

    def input_shape(self):
        spatial = self._spatial(self.size)
        if self.channels_first:
            return (self.batch, self.channels) + spatial
        return (self.batch,) + spatial + (self.channels,)

    def call_args(self):
        """The keyword arguments of ops.separable_conv / reference_separable_conv."""
        return dict(strides=self.stride, padding=self.padding, data_format=self.data_format,
                    dilation_rate=self.dilation, activation=self.activation)

    def weight_shapes(self):
        kernel = self._spatial(self.kernel)
        return (kernel + (self.channels, self.multiplier),
                (1,) * self.rank + (self.channels * self.multiplier, self.filters))

    def geometry(self):
        depthwise, pointwise = self.weight_shapes()
        return geometry.make_geometry(
            self.rank, self.input_shape(), depthwise, pointwise,
            (self.filters,) if self.use_bias else None, self._spatial(self.stride),
            self.padding, self.data_format, self._spatial(self.dilation))

    def launches(self, smem_limit=None):
        """The planner's launches for a contiguous, aligned input."""
        geom, shape = self.geometry(), self.input_shape()
        contiguous = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        strides = input_element_strides(shape, contiguous, 1, geom)
        return launch_sequence(
            self.dtype, geom, activations.get(self.activation), strides, self.use_bias,
            self.allow_tf32, x_aligned=True, smem_limit=smem_limit)[0]

    def describe(self):
        return (f"{self.label}: {self.mode} {'x'.join(map(str, self.input_shape()))} "
                f"k={self.kernel} M={self.multiplier} F={self.filters} s={self.stride} "
                f"d={self.dilation} {self.padding} {self.activation or 'linear'}")


def tile_plan(case, smem_limit=None):
    """("tc", TcPlan) or ("simt", KernelPlan) of the case's first launch."""
    geom = case.geometry()
    if case.launches(smem_limit)[0].kind == "tc":
        fused = activations.get(case.activation).kernel_id in kernel_common.FUSED_ACTIVATIONS
        linear = not fused or activations.get(case.activation).kernel_id == "linear"
        return "tc", tc.tc_plan(
            case.dtype, geom, linear,
            tc.TC_SMEM_LIMIT if smem_limit is None else smem_limit)
    return "simt", simt.plan(
        case.dtype, geom.batch, geom.channels, geom.depth_multiplier, geom.filters,
        geom.in_size, geom.out_size, geom.kernel, geom.strides, geom.dilation,
        geom.channels_first)


def plan_key(case, smem_limit=None):
    """What makes two cases the same plan: the kernels launched and the tile shape (not
    the grid, which only repeats blocks)."""
    names = tuple(launch.name for launch in case.launches(smem_limit))
    kind, p = tile_plan(case, smem_limit)
    if kind == "tc":
        strips = tc.tc_uses_strips(case.geometry())
        return names, ("tc", p.bn, p.bm, p.band_h, p.slab, p.stages, p.k_splits, p.m_tiles,
                       p.filter_blocks > 1, strips)
    return names, ("simt", p.bf, p.bp, p.tw, p.use_halo, p.filter_blocks > 1)


def coarse_key(case, smem_limit=None):
    """The plan's kernels (dtype, extent and warp tile MT are template arguments; a
    channel split adds sepconv_tc_reduce, a normalizing activation the softmax kernel)
    and the depthwise path (tensor-core strips or not; SIMT halo or global gather),
    without tile sizes: what a dry run must cover."""
    names, shape = plan_key(case, smem_limit)
    return names, shape[0], shape[-1] if shape[0] == "tc" else shape[4]


def _from_layer(layer, batch, mode, **changes):
    fields = dict(label=f"{layer.key} b{batch} {mode}", mode=mode, batch=batch, size=layer.size,
                  channels=layer.channels, filters=layer.filters, stride=layer.stride,
                  kernel=layer.kernel, rank=layer.rank, activation=layer.activation,
                  use_bias=layer.use_bias)
    return Case(**{**fields, **changes})


@functools.lru_cache(maxsize=8)
def check_cases(smem_limit=None, batches=BATCHES):
    """One case per distinct plan over the suites, then the extras (see the docstring)."""
    layers = [layer for name in suites.DEFAULT_SUITES for layer in suites.SUITES[name]]
    chosen = {}
    for batch in batches:
        for layer in layers:
            for mode in MODES:
                case = _from_layer(layer, batch, mode)
                chosen.setdefault(plan_key(case, smem_limit), case)
    cases = list(chosen.values())
    # float64 runs the SIMT kernel only: the SIMT plans again in double
    for case in [c for c in cases if c.mode == "float32"]:
        double = dataclasses.replace(case, mode="float64", label=case.label.replace("float32", "float64"))
        chosen.setdefault(plan_key(double, smem_limit), double)
    # the normalizing activations (a linear convolution, then sepconv_softmax_lastaxis)
    tiny = suites.SUITES["tiny"][0]
    for mode in MODES + ("float64",):
        for activation in ("softmax", "log_softmax"):
            case = _from_layer(tiny, 2, mode, activation=activation)
            chosen.setdefault(plan_key(case, smem_limit), dataclasses.replace(
                case, label=f"{case.label} {activation}"))
    return tuple(chosen.values())


def kernel_names(cases):
    """Every name expression the cases launch, in first-use order."""
    return list(dict.fromkeys(name for case in cases for name in plan_key(case)[0]))


def coverage(cases):
    """What the cases reach, for the record: kernel names, MT values, channel splits."""
    keys = [plan_key(case) for case in cases]
    tc = [shape for _, shape in keys if shape[0] == "tc"]
    return {"plans": len(keys), "kernels": sorted({n for names, _ in keys for n in names}),
            "tc_m_tiles": sorted({shape[6] for shape in tc}),
            "tc_k_splits": sorted({shape[5] for shape in tc}),
            "modes": sorted({case.mode for case in cases})}


def shrunk(case, smem_limit=None, key=plan_key, max_tries=40):
    """The cheapest case (by `_work`) with the same `key` (plan_key, coarse_key) as `case`:
    the same kernels and tile shape on fewer blocks, and fewer channels and filters where
    the key allows. `case` itself when nothing smaller keeps it."""
    key = functools.partial(key, smem_limit=smem_limit)
    wanted = key(case)
    fractions = (12, 8, 6, 4, 3, 2, 1)
    assert isinstance(case.size, int), "shrinks the suites' square cases"
    smaller = {dataclasses.replace(case, batch=b, size=max(1, case.size // ds),
                                   channels=max(8, case.channels // dc // 8 * 8),
                                   filters=max(8, case.filters // df // 8 * 8))
               for b in (1, 2, 4, case.batch) if b <= case.batch
               for ds in fractions for dc in (4, 2, 1) for df in (4, 2, 1)}
    for candidate in sorted(smaller, key=_work)[:max_tries]:
        if _work(candidate) >= _work(case):
            break
        if key(candidate) == wanted:
            return candidate
    return case


def _work(case):
    """Roughly what emulating the case costs: output positions x channels x filters."""
    return (case.batch * math.prod(case.input_shape()[1:]) // case.channels * case.channels
            * case.multiplier * case.filters)


def dry_run_cases(smem_limit=None):
    """One shrunk case per coarse key of `check_cases()`: every kernel and every code
    path the full check reaches, on the fewest blocks (for the host emulator)."""
    chosen = {}
    for case in check_cases(smem_limit):
        small = shrunk(case, smem_limit, key=coarse_key)
        key = coarse_key(small, smem_limit)
        if key not in chosen or _work(small) < _work(chosen[key]):
            chosen[key] = small
    return tuple(chosen.values())
