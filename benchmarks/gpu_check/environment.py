"""The environment stage of the GPU check: what the run is made of, as JSON.

    python -m benchmarks.gpu_check.environment [--dry-run] [--commit SHA]

Device, driver, CuPy and CUDA runtime, the NVRTC that builds the kernels
(`nvrtc.toolkit()`) and whether it is the pinned minor (`nvrtc.PINNED_VERSION`), PyTorch,
JAX, compute-sanitizer, the commit (--commit, else the file COMMIT at the tree root,
else git, else SEPCONV_GPU_GIT_COMMIT) and the sha256 of kernels/ (as
`find kernels -type f | sort | xargs cat | sha256sum`). A dry run describes a fake
device. Prints `RESULT {json}`; exit status 1 when a GPU run finds no device or no NVRTC.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd, timeout=20):
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit(given=None):
    """(commit, where it came from): --commit, the COMMIT file, git, the environment."""
    import os

    if given:
        return given, "--commit"
    path = ROOT / "COMMIT"
    if path.is_file() and path.read_text().strip():
        return path.read_text().split()[0], "COMMIT file"
    from_git = _run("git", "rev-parse", "HEAD")
    if from_git:
        dirty = _run("git", "status", "--porcelain", "--", "kernels", "sepconv_gpu")
        return from_git + ("+dirty" if dirty else ""), "git"
    if os.environ.get("SEPCONV_GPU_GIT_COMMIT"):
        return os.environ["SEPCONV_GPU_GIT_COMMIT"], "SEPCONV_GPU_GIT_COMMIT"
    return None, "unknown: pass --commit or write the file COMMIT"


def device(dry_run):
    if dry_run:
        return {"name": "none (dry run: the host emulator stands in)", "compute_capability": "90"}
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    return {"name": name.decode() if isinstance(name, bytes) else name,
            "compute_capability": dev.compute_capability,
            "memory_bytes": int(props["totalGlobalMem"]),
            "cuda_driver_api": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cupy": cupy.__version__,
            "nvidia_smi": _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader")}


def nvrtc_info():
    from sepconv_gpu.backends import nvrtc

    tk = nvrtc.toolkit()
    return {"version": ".".join(map(str, tk.version)), "library": tk.library,
            "from_wheel": tk.from_wheel, "archs": list(tk.archs),
            "pinned": ".".join(map(str, nvrtc.PINNED_VERSION)),
            "is_pinned_minor": tuple(tk.version) == nvrtc.PINNED_VERSION}


def _version(module):
    try:
        return __import__(module).__version__
    except Exception as exc:  # absent, or broken
        return f"unavailable ({type(exc).__name__})"


def collect(dry_run, given_commit=None):
    from ..runner import kernels_hash

    record, problems = {"dry_run": dry_run}, []
    for key, fn in (("device", lambda: device(dry_run)), ("nvrtc", nvrtc_info)):
        try:
            record[key] = fn()
        except Exception as exc:
            record[key] = f"unavailable ({type(exc).__name__}: {exc})"
            problems.append(key)
    record["commit"], record["commit_from"] = commit(given_commit)
    record["kernels_sha256"] = kernels_hash(ROOT)
    record["torch"], record["jax"] = _version("torch"), _version("jax")
    record["compute_sanitizer"] = shutil.which("compute-sanitizer") or None
    record["python"] = sys.version.split()[0]
    if record["kernels_sha256"] is None:
        problems.append("kernels")
    return record, problems


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.environment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--commit", default=None)
    args = p.parse_args(argv)
    record, problems = collect(args.dry_run, args.commit)
    print(json.dumps(record, indent=1))
    if isinstance(record["nvrtc"], dict) and not record["nvrtc"]["is_pinned_minor"]:
        print(f"note: NVRTC {record['nvrtc']['version']} is not the pinned "
              f"{record['nvrtc']['pinned']} (the register stage says whether it spills)")
    print("RESULT " + json.dumps({"passed": not problems, "ran": 1, "failed": problems, **record}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
