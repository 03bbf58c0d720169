"""GPU correctness: the cases of `gpu_cases` on the CUDA backend against the float64
NumPy reference, within the tolerances of tests/_cases.py (TF32 gets the float16 bound:
both round the pointwise operands to 10-bit mantissas).

    python -m benchmarks.gpu_check.correctness            # on a GPU: every distinct suite plan
    python -m benchmarks.gpu_check.correctness --dry-run  # no GPU: the host emulator, a sample

On the GPU each case runs whole and its first and last images are compared. A dry run
(tests/_cuda_host_emulator.py runs the kernel source on the CPU) runs one shrunk case per
code path (`gpu_cases.dry_run_cases`), and of a big single-launch grid only the blocks of
the first `--sample` output tiles; exactly those tiles are compared. Either way the launches must be the ones
the planner picked. One line per case, then `RESULT {json}`; exit status 1 on any
failure or when nothing ran.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from sepconv_gpu import ops

from . import cases as gpu_cases

TESTS = Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:  # the shared tolerance table and the host emulator
    sys.path.insert(0, str(TESTS))

import _cases  # noqa: E402

def tolerance(mode):
    return _cases.TOLERANCE["float16" if mode == "tf32" else mode]


def block_limits(case, sample_tiles, smem_limit=None):
    """{kernel name: blocks to launch} for a sampled run (empty: every grid whole). A
    tiled kernel's blocks are ordered channel split, then filter block, then tile, so the
    first filter blocks x `sample_tiles` blocks finish those tiles. Only single launches:
    a softmax or sepconv_tc_reduce after a cut grid would read what it did not write
    (initcheck errors; a channel split's partial sums also take their stride from the
    grid size)."""
    launches = case.launches(smem_limit)
    if not sample_tiles or len(launches) > 1:
        return {}
    kind, p = gpu_cases.tile_plan(case, smem_limit)
    # sepconv_tc loops over its filter blocks inside a block: a block is a tile
    blocks = sample_tiles if kind == "tc" else p.filter_blocks * sample_tiles
    return {launches[0].name: min(launches[0].grid, blocks)}


def sampled_region(case, sample_tiles, smem_limit=None):
    """Boolean (out_h, out_w) mask of the outputs the first `sample_tiles` tiles of image
    0 hold."""
    kind, p = gpu_cases.tile_plan(case, smem_limit)
    oh, ow = case.geometry().out_size
    mask = np.zeros((oh, ow), dtype=bool)
    if kind == "tc":
        # sepconv_tc's tiles are BM consecutive positions in its order: each image in bands
        # of band_h output rows, a band column by column
        for q in range(min(sample_tiles * p.bm, oh * ow)):
            band, rest = divmod(q, p.band_h * ow)
            col, row = divmod(rest, min(p.band_h, oh - band * p.band_h))
            mask[band * p.band_h + row, col] = True
        return mask
    th = p.bp // p.tw
    for tile in range(sample_tiles):
        row, col = divmod(tile, p.tiles_w)
        mask[row * th:(row + 1) * th, col * p.tw:(col + 1) * p.tw] = True
    return mask


def inputs(case, rng):
    return _cases.random_case(rng, case.rank, case.input_shape(), case.kernel, case.multiplier,
                              case.filters, case.dtype, case.use_bias, case.channels_first)


def check(case, runner, rng, sample_tiles=0):
    """Run `case` through `runner` and compare with the reference: a result dict."""
    x, dk, pk, b = inputs(case, rng)
    launches = case.launches(runner.smem_limit)
    planned = [launch.name for launch in launches]
    limits = block_limits(case, sample_tiles, runner.smem_limit)
    sampled = any(limits.get(one.name, one.grid) < one.grid
                  for one in launches if one.kind in ("tc", "simt"))
    start = time.monotonic()
    y, launched = runner(case, x, dk, pk, b, limits)
    images = [0] if sampled else sorted({0, case.batch - 1})
    reference = ops.reference_separable_conv(case.rank, x[images], dk, pk, b, **case.call_args())
    y = np.asarray(y)[images]
    oh, ow = case.geometry().out_size
    if case.channels_first:  # compare channels_last (n, h, w, f) views
        y, reference = np.moveaxis(y, 1, -1), np.moveaxis(reference, 1, -1)
    y, reference = y.reshape(len(images), oh, ow, -1), reference.reshape(len(images), oh, ow, -1)
    if sampled:
        mask = sampled_region(case, sample_tiles, runner.smem_limit)
        y, reference = y[:, mask], reference[:, mask]
    y = y.astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    error = float(np.max(np.abs(y - reference))) / scale if y.size else float("inf")
    ok = bool(launched == planned and np.isfinite(error) and error <= tolerance(case.mode))
    return {"case": case.describe(), "ok": ok, "error": error, "tolerance": tolerance(case.mode),
            "launches": launched, **({"planned": planned} if launched != planned else {}),
            "sampled_blocks": limits if sampled else {}, "compared_outputs": int(y.size),
            "seconds": round(time.monotonic() - start, 3)}


class Emulated:
    """Launches on the host emulator (tests/_cuda_host_emulator.py), grids cut to `limits`."""

    smem_limit = None  # the planner's default, sm_90's opt-in maximum, as the emulator's

    def __init__(self, names):
        import _cuda_host_emulator as host

        self.host, self.emulator = host, host.HostEmulator(names)

    def __call__(self, case, x, dk, pk, b, limits):
        emulator = self.emulator

        class Cut:
            def launch(self, name, grid, block, args, shared_bytes):
                emulator.launch(name, min(grid, limits.get(name, grid)), block, args, shared_bytes)

        from sepconv_gpu import activations

        y, launches = self.host.separable_conv(Cut(), x, dk, pk, b, case.geometry(),
                                               activations.get(case.activation), case.allow_tf32)
        return y, [launch.name for launch in launches]


class OnGpu:
    """Launches on the current CUDA device through the backend, grids cut to `limits`."""

    def __init__(self):
        import cupy

        from sepconv_gpu.backends import cuda_backend

        self.cupy, self.backend = cupy, cuda_backend
        self.smem_limit = cuda_backend._shared_memory_limit(cupy.cuda.Device().id)

    @contextlib.contextmanager
    def _recording(self, limits):
        launched, real = [], self.backend._launch

        def launch(one, arrays):
            launched.append(one.name)
            cut = dataclasses.replace(one, grid=min(one.grid, limits.get(one.name, one.grid)))
            return real(cut, arrays)

        self.backend._launch = launch
        try:
            yield launched
        finally:
            self.backend._launch = real

    def __call__(self, case, x, dk, pk, b, limits):
        with self._recording(limits) as launched:
            y = ops.separable_conv(case.rank, self.cupy.asarray(x), dk, pk, b, backend="cuda",
                                   allow_tf32=case.allow_tf32, **case.call_args())
        return self.cupy.asnumpy(y), launched


def run(cases, runner, sample_tiles=0, seed=0, out=sys.stdout):
    """Check every case; a summary dict (`passed` is False when nothing ran)."""
    rng = np.random.default_rng(seed)
    results = []
    for case in cases:
        try:
            result = check(case, runner, rng, sample_tiles)
        except Exception as exc:  # a failed case is reported, the others still run
            result = {"case": case.describe(), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        results.append(result)
        error = result["error"]
        print(f"{'ok  ' if result['ok'] else 'FAIL'} {result['case']}: "
              + (f"max err {error:.3g} (tolerance {result['tolerance']:g}), "
                 f"{' + '.join(result['launches'])}, {result['seconds']} s"
                 + (f", sampled {result['sampled_blocks']}" if result["sampled_blocks"] else "")
                 if isinstance(error, float) else error), file=out, flush=True)
    failed = [r["case"] for r in results if not r["ok"]]
    return {"ran": len(results), "failed": failed, "passed": bool(results) and not failed,
            "coverage": gpu_cases.coverage(cases),
            "worst": max((r["error"] / r["tolerance"] for r in results if r["ok"]), default=None)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.correctness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the host emulator instead of a GPU")
    p.add_argument("--sample", type=int, default=1, metavar="TILES",
                   help="dry run: output tiles run of each big grid (default 1)")
    args = p.parse_args(argv)
    if args.dry_run:
        cases = gpu_cases.dry_run_cases()
        runner, sample = Emulated(gpu_cases.kernel_names(cases)), args.sample
    else:
        runner = OnGpu()
        cases, sample = gpu_cases.check_cases(runner.smem_limit), 0
    summary = run(cases, runner, sample)
    print("RESULT " + json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
