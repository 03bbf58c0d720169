"""The register / spill stage of the GPU check, on this machine's own NVRTC.

    python -m benchmarks.gpu_check.registers [--arch SM] [--dry-run]

tests/test_nvrtc.py's check, for the device's architecture: every kernel instantiation
(a dry run: one of each kernel template, a check of the harness) built through the kernel cache
(`sepconv_gpu.prebuild`, in parallel; a warm cache only reads), and none may have an
NVRTC log line or a stack frame (spills or local memory; tests/_cubin.py reads the
CUBIN's resource records as `ptxas -v` reports them). The NVRTC that built them, and
whether it is the pinned minor, go in the result: the same source spills under another
minor. The stage fails, too, when the backend would not load what it checked: where it
compiles through CuPy instead (e.g. NVRTC newer than the driver: `environment.compiler`)
or for another architecture. Prints `RESULT {json}`; exit status 1 on any finding or when
nothing was checked.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sepconv_gpu import prebuild
from sepconv_gpu.backends.cuda import kernel_cache, nvrtc

from . import cases as gpu_cases
from .environment import compiler

TESTS = Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _cubin import kernel_resources  # noqa: E402


def device_arch():
    import cupy

    return int(cupy.cuda.Device().compute_capability)


def check(names, arch, jobs=None):
    """{"compiled", "from_cache", "kernels", "framed", "logs", "registers_max", ...}."""
    os.environ.pop(kernel_cache.LINEINFO_VAR, None)  # the plain builds the backend loads
    compiled, hits = prebuild.build(names, arch, jobs)
    framed, logs, registers, ptx = {}, {}, [], []
    for name in names:
        built = kernel_cache.library_kernels((name,), arch)  # from the cache just filled
        if built.log:
            logs[name] = built.log[:500]
        if built.ptx:  # a device newer than NVRTC: the driver's JIT allocates registers
            ptx.append(name)
            continue
        resources = kernel_resources(built.cubin)
        regs, frame = resources[built.lowered[name]]
        registers.append(regs)
        if frame:
            framed[name] = frame
    return {"arch": arch, "kernels": len(names), "compiled": compiled, "from_cache": hits,
            "checked": len(registers), "framed": framed, "logs": logs, "ptx_only": ptx,
            "registers_max": max(registers, default=None)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.registers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=None, help="default: the device's (dry run: 90)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--jobs", type=int, default=None)
    args = p.parse_args(argv)
    arch = args.arch or (90 if args.dry_run else device_arch())
    if args.dry_run:
        names = gpu_cases.one_per_template(gpu_cases.kernel_names(gpu_cases.dry_run_cases()))
    else:
        names = kernel_cache.all_name_expressions()
    result = check(names, arch, args.jobs)
    tk = nvrtc.toolkit()
    result["nvrtc"] = ".".join(map(str, tk.version))
    result["is_pinned_minor"] = tuple(tk.version) == nvrtc.PINNED_VERSION
    result["backend_compiler"] = path = compiler(args.dry_run)
    problems = sorted(set(result["framed"]) | set(result["logs"]) | set(result["ptx_only"]))
    if path["path"] != "nvrtc" or path["arch"] != arch:
        print(f"FAIL the backend does not load these binaries: it compiles with {path['path']}"
              f"{' for sm_' + str(path.get('arch')) if path['path'] == 'nvrtc' else ''}"
              f" ({path.get('why', 'another architecture')})")
        problems.append("backend compiler")
    print(f"NVRTC {result['nvrtc']} ({'pinned' if result['is_pinned_minor'] else 'NOT the pinned '}"
          f"{'' if result['is_pinned_minor'] else '.'.join(map(str, nvrtc.PINNED_VERSION))}), "
          f"sm_{arch}: {result['checked']} of {len(names)} kernels checked ({result['compiled']} "
          f"compiled, {result['from_cache']} from the cache), max {result['registers_max']} registers")
    for name in problems:
        print(f"FAIL {name}: stack frame {result['framed'].get(name, 0)} B; "
              f"{'PTX only; ' if name in result['ptx_only'] else ''}log: {result['logs'].get(name, '')}")
    passed = result["checked"] > 0 and not problems
    print("RESULT " + json.dumps({"passed": passed, "ran": result["checked"], "failed": problems,
                                  **result}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
