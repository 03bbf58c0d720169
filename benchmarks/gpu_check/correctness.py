"""GPU correctness: the cases of `cases` on the CUDA backend against the float64
NumPy reference, within the tolerances of tests/_cases.py (TF32 gets the float16 bound:
both round the pointwise operands to 10-bit mantissas).

    python -m benchmarks.gpu_check.correctness            # on a GPU: every distinct suite plan
    python -m benchmarks.gpu_check.correctness --dry-run  # no GPU: the stand-in, a sample

Both run `cuda_backend` through one runner (`Backend`), only the CuPy under it differs.
On the GPU each case runs whole and its first and last images are compared. A dry run
(the stand-in: benchmarks/fake_cupy.py, its launches executed by
tests/_cuda_host_emulator.py on the CPU) runs one shrunk case per code path
(`cases.dry_run_cases`), and of a big single-launch grid only the blocks of the first
`--sample` output tiles; exactly those tiles are compared. Either way the launches must be
the ones the planner picked. One line per case, then `RESULT {json}`; exit status 1 on any
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

from sepconv_gpu import _dtypes, activations, ops

from . import cases as gpu_cases

TESTS = Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:  # the shared tolerance table and the host emulator
    sys.path.insert(0, str(TESTS))

import _cases  # noqa: E402


def tolerance(mode):
    if mode == "bfloat16":
        # _cases.TOLERANCE's float16 bound is eight output half-ulps (2^-11 each) with the
        # operands rounded to float16; bfloat16 keeps 3 fewer mantissa bits: 8 x 2^-9
        return 8 * 2.0 ** -9
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
                              case.filters, _dtypes.numpy_dtype(case.dtype), case.use_bias,
                              case.channels_first)


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


class Backend:
    """The one runner of the device run and the dry run: `cuda_backend` itself
    (`CupyOps.separable_conv`: the call plan, the input copy, the weights, `_run`,
    `_launch`, the post-activation) bound to a CuPy. Only the bottom differs: on a GPU
    the real CuPy (`on_gpu`), in a dry run the stand-in (`stand_in`: benchmarks/fake_cupy.py,
    its launches executed by the host emulator). Every launch goes through the backend's
    `_launch`, wrapped (same arguments) to record it and, for a sampled run, to cut its
    grid to `limits`."""

    def __init__(self, backend, cupy):
        self.backend, self.cupy = backend, cupy
        self.smem_limit = backend._shared_memory_limit(cupy.cuda.Device().id)

    @classmethod
    def on_gpu(cls):
        import cupy

        from sepconv_gpu.backends.cuda import cuda_backend

        return cls(cuda_backend, cupy)

    @classmethod
    def stand_in(cls, names=()):
        """The stand-in, with the host emulator's build of `names` made up front."""
        import _cuda_host_emulator as host

        return cls(*host.stand_in(host.HostEmulator(names)))

    @contextlib.contextmanager
    def _patched(self, limits, plan):
        backend = self.backend
        launched, real_launch, real_plan = [], backend._launch, backend._call_plan

        def launch(one, arrays, fn=None):
            launched.append(one)
            cut = min(one.grid, limits.get(one.name, one.grid))
            return real_launch(one if cut == one.grid else dataclasses.replace(one, grid=cut),
                               arrays, fn)

        backend._launch = launch
        # what `import cupy` finds during the call (an activation applied after the
        # kernels looks its array module up): the stand-in's fake; on a GPU, no change
        saved_cupy, sys.modules["cupy"] = sys.modules.get("cupy"), self.cupy
        if plan is not None:  # every call plan of this call is `plan`'s
            backend._call_plan = lambda *signature, **_: real_plan(*signature, plan=plan)
        try:
            yield launched
        finally:
            backend._launch, backend._call_plan = real_launch, real_plan
            if saved_cupy is None:
                del sys.modules["cupy"]
            else:
                sys.modules["cupy"] = saved_cupy

    def separable_conv(self, x, depthwise, pointwise, bias, geom, activation, allow_tf32=False,
                       limits=None, plan=None, weights_cache=None):
        """(y as NumPy, the launches, a tuple of launch.Launch): x (NumPy, or this CuPy's array) through
        `CupyOps.separable_conv`; `plan` forces launch_sequence's plan (autotune's
        candidates)."""
        if not isinstance(x, self.cupy.ndarray):
            x = self.cupy.asarray(x)
        with self._patched(limits or {}, plan) as launched:
            y = self.backend.CupyOps().separable_conv(x, depthwise, pointwise, bias, geom,
                                                      activation, allow_tf32, weights_cache)
        return self.cupy.asnumpy(y), tuple(launched)

    def __call__(self, case, x, dk, pk, b, limits):
        """`check`'s runner: (y, the names launched)."""
        y, launched = self.separable_conv(x, dk, pk, b, case.geometry(),
                                          activations.get(case.activation), case.allow_tf32,
                                          limits, weights_cache={})
        return y, [one.name for one in launched]


def run(cases, runner, sample_tiles=0, seed=0, out=None):
    """Check every case; a summary dict (`passed` is False when nothing ran)."""
    rng = np.random.default_rng(seed)
    out = out or sys.stdout
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
        runner, sample = Backend.stand_in(gpu_cases.kernel_names(cases)), args.sample
    else:
        runner = Backend.on_gpu()
        cases, sample = gpu_cases.check_cases(runner.smem_limit), 0
    summary = run(cases, runner, sample)
    print("RESULT " + json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
