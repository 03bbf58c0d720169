"""A small workload for compute-sanitizer (memcheck, racecheck, initcheck).

    compute-sanitizer --tool racecheck python -m benchmarks.gpu_check.sanitize_driver
    python -m benchmarks.gpu_check.sanitize_driver --dry-run   # VARIETY on the stand-in

Two sets, every result checked against the float64 reference (gpu_correctness.check),
so the run also fails on wrong numbers or on launches other than the planner's:
- VARIETY: each dtype, both layouts, 1D and 2D, specialized and generic extents, the halo
  and the global-gather paths, filter blocks, a depth multiplier above the channel chunk,
  softmax / log_softmax, with and without bias (SIMT); float16 and TF32 tensor-core cases
  with F above 256, strides, a generic extent and a channel split.
- every code path of the suites' plans, shrunk (`gpu_cases.dry_run_cases`): every warp
  tile (MT 1, 2 and 4), channel splits + sepconv_tc_reduce, strips, bands and slabs, the
  resident depthwise, softmax; of a grid
  that stays big only the first SAMPLE_TILES output tiles run.

On the GPU CuPy's memory pool is off (`cupy.cuda.set_allocator(None)`: every array its
own allocation, so an overrun is not hidden in a pool block and recycled memory does not
look initialised), kernels carry -lineinfo (SEPCONV_GPU_LINEINFO=1, its own cache
entries) and every launch synchronizes (SEPCONV_GPU_DEBUG_SYNC=1) so a fault names it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# read when the backend is imported: set them first
os.environ.setdefault("SEPCONV_GPU_LINEINFO", "1")
os.environ.setdefault("SEPCONV_GPU_DEBUG_SYNC", "1")

from . import cases as gpu_cases  # noqa: E402
from . import correctness as gpu_correctness  # noqa: E402
from . import registers as gpu_registers  # noqa: E402

SAMPLE_TILES = 4

_SIMT = [
    # rank, batch, size, channels, kernel, M, F, strides, padding, dilation, activation, bias
    (2, 2, (11, 13), 8, 3, 1, 20, 1, "same", 1, "relu", True),
    (2, 1, (12, 12), 5, 5, 2, 70, 2, "same", 1, "gelu", False),
    (2, 2, (9, 10), 3, (2, 4), 17, 9, 1, "valid", (2, 1), "softmax", True),
    (2, 1, (40, 38), 4, 3, 1, 6, 1, "same", 15, "tanh", True),       # no halo: global gather
    (1, 2, (300,), 6, 3, 1, 16, 1, "causal", 1, "log_softmax", True),
    (1, 1, (257,), 12, 31, 2, 40, 1, "same", 1, "swish", False),
]
_TENSOR_CORE = [
    # rank, batch, size, channels (a multiple of 8), kernel, F, strides, padding, dilation,
    # activation, bias; M = 1
    (2, 2, (19, 21), 64, 3, 72, 1, "same", 1, "relu", True),
    (2, 1, (14, 14), 32, 3, 300, 2, "same", 1, "gelu", False),     # F > 256: filter blocks
    (2, 2, (9, 10), 40, (2, 5), 24, 1, "valid", (2, 1), "silu", True),  # generic extent
    (2, 1, (7, 7), 256, 3, 64, 1, "same", 1, "linear", True),      # tiny grid: channel split
    (1, 2, (200,), 16, 31, 40, 1, "same", 1, "sigmoid", True),
]

VARIETY = tuple(
    [gpu_cases.Case("variety", dtype, n, size, c, f, s, k, rank, act, bias, multiplier=m,
                    dilation=d, padding=pad, channels_first=channels_first)
     for dtype in ("float32", "float16", "float64") for channels_first in (False, True)
     for rank, n, size, c, k, m, f, s, pad, d, act, bias in _SIMT]
    + [gpu_cases.Case("variety", mode, n, size, c, f, s, k, rank, act, bias, dilation=d, padding=pad)
       for mode in ("float16", "tf32")
       for rank, n, size, c, k, f, s, pad, d, act, bias in _TENSOR_CORE])


def cases(dry_run=False):
    """A dry run (the harness without a GPU) emulates VARIETY only: the correctness stage's
    dry run emulates the suites' set already."""
    return VARIETY if dry_run else VARIETY + gpu_cases.dry_run_cases()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.sanitize_driver",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="run the cases on the host emulator (no GPU, no compute-sanitizer)")
    p.add_argument("--prebuild", action="store_true",
                   help="only build the kernels the run launches into the kernel cache, in "
                        "parallel, with -lineinfo (for the device's architecture; a dry run: "
                        "sm_90, one kernel per template)")
    p.add_argument("--arch", type=int, default=None,
                   help="--prebuild for this SM version, no GPU needed (e.g. 90 in an image build)")
    args = p.parse_args(argv)
    chosen = cases(args.dry_run)
    if args.prebuild:
        from sepconv_gpu import prebuild

        arch = args.arch or (90 if args.dry_run else gpu_registers.device_arch())
        names = gpu_cases.kernel_names(chosen)
        if args.dry_run:
            names = gpu_cases.one_per_template(names)
        names = [a for name in names for a in ("--names", name)]
        return prebuild.main(["--arch", str(arch), *names])
    if args.dry_run:
        runner = gpu_correctness.Backend.stand_in(gpu_cases.kernel_names(chosen))
    else:
        import cupy

        cupy.cuda.set_allocator(None)  # every array its own cudaMalloc: see the docstring
        runner = gpu_correctness.Backend.on_gpu()
    summary = gpu_correctness.run(chosen, runner, SAMPLE_TILES)
    print(f"{len(summary['failed'])} wrong results")
    print("RESULT " + json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
