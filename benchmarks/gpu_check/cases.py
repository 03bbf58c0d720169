"""The convolutions the GPU check runs: every distinct plan the planner picks for the
benchmark suites, plus the dtypes, layouts and activations the suites do not reach.

`check_cases()` walks the suites (benchmarks/suites.py) at batch 1, 8 and 32 in each mode
(float32: SIMT; tf32 and float16: the tensor-core kernel where it applies), asks the
planner (`launch_sequence`, `plan`, `tc_plan`) what it launches, and keeps
the first case of each distinct plan: the kernel names (sepconv_tc_reduce after a channel
split) and the tile shape. Then float64 versions of the SIMT plans, channels_first
(SIMT, float16 too), bfloat16 (the tiny suite: the tensor-core kernel, specialized and
generic extents; channels_first: SIMT) and softmax / log_softmax in every mode. Kernel names are never
written here: they come from the planner, so the check follows the catalogue as it
changes.

`dry_run_cases()` is what the host emulator (a dry run) and compute-sanitizer run, where
every block costs time: shrunk cases (`shrunk`: the batch, size, channels and filters
halved while the planner keeps the plan shape) that together reach every kernel and
plan-shape flag of the full list.
CuPy-free: a machine without a GPU enumerates the same cases.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import kernel_common, simt, tc
from sepconv_gpu.backends.cuda.launch import input_element_strides, launch_sequence

from .. import suites

BATCHES = (1, 8, 32)
MODES = ("float32", "tf32", "float16")


@dataclass(frozen=True)
class Case:
    """One separable convolution; the defaults are the suites' (channels_last, `same`
    padding, depth multiplier 1, square inputs and kernels)."""

    label: str        # where it came from: "suite/layer batch mode"
    mode: str         # float32 | tf32 | float16 | float64 | bfloat16
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


@functools.lru_cache(maxsize=None)
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
    # channels_first runs the SIMT kernel in every dtype (float16 included)
    tiny = suites.SUITES["tiny"][0]
    for mode in ("float32", "float16"):
        case = _from_layer(tiny, 2, mode, channels_first=True)
        chosen.setdefault(plan_key(case, smem_limit), dataclasses.replace(
            case, label=f"{case.label} channels_first"))
    # bfloat16: routed like float16 (the tensor-core kernel where it applies, else SIMT)
    for layer in suites.SUITES["tiny"]:
        case = _from_layer(layer, 2, "bfloat16")
        chosen.setdefault(plan_key(case, smem_limit), case)
    case = _from_layer(tiny, 2, "bfloat16", channels_first=True)
    chosen.setdefault(plan_key(case, smem_limit), dataclasses.replace(
        case, label=f"{case.label} channels_first"))
    # the normalizing activations (a linear convolution, then sepconv_softmax_lastaxis)
    for mode in MODES + ("float64", "bfloat16"):
        for activation in ("softmax", "log_softmax"):
            case = _from_layer(tiny, 2, mode, activation=activation)
            chosen.setdefault(plan_key(case, smem_limit), dataclasses.replace(
                case, label=f"{case.label} {activation}"))
    return tuple(chosen.values())


def kernel_names(cases):
    """Every name expression the cases launch, in first-use order."""
    return list(dict.fromkeys(name for case in cases for name in plan_key(case)[0]))


def one_per_template(names):
    """The first name of each kernel template (the text before "<"): what a dry run
    compiles to check a build stage's harness, not the kernels (CI's tests/test_nvrtc.py
    builds them all)."""
    first = {}
    for name in names:
        first.setdefault(name.split("<")[0], name)
    return list(first.values())


def coverage(cases):
    """What the cases reach, for the record: kernel names, MT values, channel splits."""
    keys = [plan_key(case) for case in cases]
    tc = [shape for _, shape in keys if shape[0] == "tc"]
    return {"plans": len(keys), "kernels": sorted({n for names, _ in keys for n in names}),
            "tc_m_tiles": sorted({shape[7] for shape in tc}),
            "tc_k_splits": sorted({shape[6] for shape in tc}),
            "modes": sorted({case.mode for case in cases})}


def dry_key(case, smem_limit=None):
    """A plan's kernels (dtype, extent and warp tile MT are template arguments; a channel
    split adds sepconv_tc_reduce, a normalizing activation the softmax kernel) and the
    plan shapes that take different code in them, without tile sizes: for sepconv_tc
    the depthwise strips, the slab halo, the position order (bands of rows or row-major)
    and the resident depthwise (more than one filter block); for sepconv_simt the halo
    (or the global gather) and filter blocks. What a dry run must cover."""
    names, shape = plan_key(case, smem_limit)
    if shape[0] == "tc":
        _, _, _, band_h, slab, _, _, _, resident, strips = shape
        return names, "tc", strips, slab, band_h > 1, resident
    _, _, _, _, use_halo, blocks = shape
    return names, "simt", use_halo, blocks


def shrunk(case, smem_limit=None, key=plan_key):
    """A cheaper case (by `_work`) with the same `key` (plan_key, dry_key) as
    `case`: greedy halving of the batch, the spatial size, the channels and the filters
    (multiples of 8), each kept only while the planner still picks the same key; a few
    dozen planner calls, not a search of every size. `case` itself when nothing smaller
    keeps it."""
    key = functools.partial(key, smem_limit=smem_limit)
    wanted = key(case)
    assert isinstance(case.size, int), "shrinks the suites' square cases"
    halvings = (("batch", lambda v: v // 2, 1), ("size", lambda v: v // 2, 1),
                ("channels", lambda v: v // 16 * 8, 8), ("filters", lambda v: v // 16 * 8, 8))
    progress = True
    while progress:
        progress = False
        for field, half, least in halvings:
            while getattr(case, field) > least:
                candidate = dataclasses.replace(case, **{field: max(least, half(getattr(case, field)))})
                if key(candidate) != wanted:
                    break
                case, progress = candidate, True
    return case


def _work(case):
    """Roughly what emulating the case costs: output positions x channels x filters."""
    return (case.batch * math.prod(case.input_shape()[1:]) // case.channels * case.channels
            * case.multiplier * case.filters)


def _features(case, smem_limit=None):
    """What a dry run must reach, as a set: each kernel launched (dtype, extent, warp
    tile MT, sepconv_tc_reduce, softmax are in the names), and per mode each value of
    each plan-shape flag of `dry_key` (strips, slab, bands, resident depthwise; halo,
    filter blocks), and of a channel split with and without the resident depthwise."""
    names, kind, *flags = dry_key(case, smem_limit)
    split = any("reduce" in name for name in names)
    return ({("kernel", name) for name in names} | {(case.mode, kind, "split", split, flags[-1])}
            | {(case.mode, kind, i, flag) for i, flag in enumerate(flags)})


def _dry_cost(case, smem_limit=None):
    """Roughly what a dry run of the case costs: a single launch is sampled (one tile
    emulated, the reference on image 0), a sequence runs whole."""
    if len(case.launches(smem_limit)) > 1:
        return _work(case)
    return _work(case) // case.batch + 4096


@functools.lru_cache(maxsize=8)
def dry_run_cases(smem_limit=None):
    """Shrunk cases (see `shrunk`; one per `dry_key` of `check_cases()`) that together
    reach every kernel and every plan-shape flag (`_features`) the full check reaches,
    each chosen as the cheapest to emulate that adds one still missing: every code path
    of the full check, on the fewest blocks (for the host emulator)."""
    groups = {}
    for case in check_cases(smem_limit):
        key = dry_key(case, smem_limit)
        if key not in groups or _work(case) < _work(groups[key]):
            groups[key] = case
    small = sorted((shrunk(case, smem_limit, key=dry_key) for case in groups.values()),
                   key=lambda c: _dry_cost(c, smem_limit))
    chosen, covered = [], set()
    for case in small:  # cheapest first: a case is kept when it adds a feature
        features = _features(case, smem_limit)
        if not features <= covered:
            chosen.append(case)
            covered |= features
    return tuple(chosen)
