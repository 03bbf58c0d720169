"""Compile the CUDA kernels into the kernel cache ahead of time, without a GPU.

    python -m sepconv_gpu.prebuild --arch 90 [--arch 80 ...] [--jobs N] [--names NAME ...]

Builds every kernel instantiation (`kernel_cache.all_name_expressions()`), or only the
`--names` given (the GPU check hands its own: `python -m
benchmarks.gpu_check.sanitize_driver --prebuild`), for each architecture, in parallel
processes, into the kernel cache (`kernel_cache.cache_dir()`: SEPCONV_GPU_CACHE_DIR, else
$XDG_CACHE_HOME/sepconv_gpu, else ~/.cache/sepconv_gpu). Each kernel is one entry,
exactly what `cuda_backend.get_function` reads, and the key holds contents only
(`kernel_cache.entry_key`), so the directory can be copied to a GPU machine with the same
NVRTC version and the kernels load there instead of compiling. With SEPCONV_GPU_LINEINFO=1
(or `--lineinfo`) the entries are the `-lineinfo` builds the compute-sanitizer runs use.
Ends with one line per architecture:

    prebuild: N kernels for sm_90: C compiled, H from the cache
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
import time

from ._progress import Progress
from .backends.cuda import kernel_cache, nvrtc


def _build_one(name, arch, source):
    """Worker: one kernel through the cache; (name, whether it was read from the cache)."""
    return name, kernel_cache.library_kernels((name,), arch, source).from_cache


def build(names, arch, jobs=None, progress=None):
    """Every name for sm_`arch` into the kernel cache, on `jobs` processes (default: the
    usable CPUs); (compiled, from the cache) counts."""
    source = kernel_cache.kernel_source()  # one snapshot for every process
    jobs = max(1, min(jobs or _cpus(), len(names)))
    hits = 0
    # spawn: workers inherit the environment (cache directory, lineinfo), not our state
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(_build_one, name, arch, source) for name in names]
        for future in concurrent.futures.as_completed(futures):
            _, from_cache = future.result()
            hits += from_cache
            if progress is not None:
                progress.update(note="from the cache" if from_cache else "compiled")
    return len(names) - hits, hits


def _check_writable(directory):
    """OSError, saying so, unless `directory` is (or can be made) a folder that takes files:
    prebuild exists to fill it (the library itself only warns and compiles each time)."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise OSError(f"the kernel cache {directory} ({kernel_cache.ENV_VAR}) cannot be "
                      f"written: {exc.strerror or exc}") from None


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sepconv_gpu.prebuild", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, action="append", required=True, metavar="SM",
                   help="SM version to build for, e.g. 90 (H100/H200) or 80 (A100); repeatable")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: the usable CPUs)")
    p.add_argument("--names", action="append", metavar="NAME",
                   help="only this name expression (repeatable), e.g. 'sepconv_tc_reduce<float>'")
    p.add_argument("--lineinfo", action="store_true",
                   help=f"build with -lineinfo (as {kernel_cache.LINEINFO_VAR}=1: the sanitizer runs)")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if any(arch < 1 for arch in args.arch):
        p.error(f"--arch takes SM versions such as 90, got {args.arch}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.lineinfo:
        os.environ[kernel_cache.LINEINFO_VAR] = "1"  # this process and the workers
    known = kernel_cache.all_name_expressions()
    if args.names:
        unknown = [n for n in args.names if n not in known]
        if unknown:
            raise SystemExit(f"prebuild: unknown --names {unknown}; e.g. {known[0]!r}")
        names = list(dict.fromkeys(args.names))
    else:
        names = known
    try:  # everything that can fail, checked before any compiling: one line each
        toolkit = nvrtc.toolkit()
        for arch in args.arch:
            nvrtc.target(arch)  # SASS, or PTX for an architecture newer than NVRTC's
        kernel_cache.library_options()  # SEPCONV_GPU_LINEINFO's value
        _check_writable(kernel_cache.cache_dir())
    except (ValueError, OSError) as exc:  # NvrtcNotFoundError is an OSError
        raise SystemExit(f"prebuild: {exc}") from None
    print(f"prebuild: NVRTC {toolkit.version[0]}.{toolkit.version[1]} ({toolkit.library}) into "
          f"{kernel_cache.cache_dir()}", flush=True)
    lines = []
    for arch in args.arch:
        start = time.monotonic()
        with Progress(len(names), label=f"sm_{arch}") as progress:
            compiled, hits = build(names, arch, args.jobs, progress)
        lines.append(f"prebuild: {len(names)} kernels for sm_{arch}: {compiled} compiled, "
                     f"{hits} from the cache")
        print(f"{lines[-1]} ({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
