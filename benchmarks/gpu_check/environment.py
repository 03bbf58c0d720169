"""The environment stage of the GPU check: what the run is made of, as JSON.

    python -m benchmarks.gpu_check.environment [--dry-run] [--commit SHA]

First the imports the run needs (`REQUIRED`), each missing one a line naming its wheel;
then device, driver (nvidia-smi, and CuPy's view of it), CuPy and CUDA runtime, or the
error CuPy raised starting; the NVRTC that builds the kernels (`nvrtc.toolkit()`) and
whether it is the pinned minor (`nvrtc.PINNED_VERSION`); which compiler the backend will
take on this device (`compiler`: our NVRTC, or CuPy's where ours cannot serve it, and
why: `cuda_backend._nvrtc_arch`); PyTorch, JAX, compute-sanitizer (on PATH, in
/usr/local/cuda, or in the NVIDIA wheels), the commit (--commit, else the file COMMIT at
the tree root, else git, else SEPCONV_GPU_GIT_COMMIT) and the sha256 of kernels/ (as
`find kernels -type f | sort | xargs cat | sha256sum`). A dry run describes the stand-in
device (benchmarks/fake_cupy.py: sm_90, CUDA 13.0 driver). Prints `RESULT {json}`; exit
status 1 when a module is missing, or a GPU run finds no device or no NVRTC.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
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


# module -> the wheel (or extra) that provides it; "device": needed by a GPU run only
REQUIRED = (
    ("numpy", "numpy", False),
    ("pytest", "pytest (the test extra: pip install '.[test]')", False),
    ("hypothesis", "hypothesis (the test extra)", False),
    ("cupy", "cupy-cuda13x or cupy-cuda12x (the cuda13 / cuda12 extra)", True),
)


def missing(dry_run):
    """One line per thing the run needs that is not here, naming what to install: the
    modules of REQUIRED, NVRTC with the CUDA headers (the kernels compile with them), and
    for a dry run the host emulator's C++ compiler."""
    lines = []
    for module, wheel, device_only in REQUIRED:
        if device_only and dry_run:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # absent, or broken (a CUDA 13 CuPy on a CUDA 12 driver)
            lines.append(f"{module} does not import ({type(exc).__name__}: {exc}): install {wheel}")
    from sepconv_gpu.backends.cuda import nvrtc

    try:
        nvrtc.toolkit()
    except nvrtc.NvrtcNotFoundError as exc:
        lines.append(f"no NVRTC with CUDA headers ({exc}): install "
                     "'cuda-toolkit[nvrtc,cudart]==13.0.*' (the cuda13 extra; cuda12: 12.9.*)")
    if dry_run and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")):
        lines.append("no host C++ compiler for the emulator: install g++ (C++20)")
    return lines


def find_sanitizer():
    """compute-sanitizer: on PATH, in /usr/local/cuda/bin, or in an NVIDIA wheel
    (nvidia/cu13/bin, nvidia/cuda_sanitizer_api/...); None when there is none."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = ["/usr/local/cuda/bin"]
    try:
        import nvidia

        roots += list(nvidia.__path__)
    except ImportError:
        pass
    for root in roots:
        for folder, dirs, files in os.walk(root):
            if "compute-sanitizer" in files:
                path = os.path.join(folder, "compute-sanitizer")
                if os.access(path, os.X_OK) and os.path.isfile(path):
                    return path
            if folder.count(os.sep) - root.count(os.sep) >= 3:
                dirs[:] = []  # deep enough: the wheels keep it within three levels
    return None


def compiler(dry_run):
    """Which compiler the backend takes on this device: {"path": "nvrtc"} (our NVRTC, the
    kernel cache, what the registers stage checks) or {"path": "cupy", "why": ...}
    (CuPy's RawModule); a dry run asks the stand-in's backend (sm_90, CUDA 13.0 driver)."""
    if dry_run:
        from .. import fake_cupy

        backend, fake = fake_cupy.load_backend()
    else:
        import cupy

        from sepconv_gpu.backends.cuda import cuda_backend as backend

        fake = cupy
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("sepconv_gpu")
    logger.addHandler(handler)
    try:
        capability = fake.cuda.Device(0).compute_capability
        arch = backend._nvrtc_arch(capability)
    finally:
        logger.removeHandler(handler)
    if arch is None:
        return {"path": "cupy", "compute_capability": capability, "why": " ".join(said)}
    return {"path": "nvrtc", "compute_capability": capability, "arch": arch}


def device(dry_run):
    if dry_run:
        return {"name": "none (dry run: the stand-in: fake CuPy + host emulator)",
                "compute_capability": "90", "cuda_driver_api": 13000}
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    return {"name": name.decode() if isinstance(name, bytes) else name,
            "compute_capability": dev.compute_capability,
            "memory_bytes": int(props["totalGlobalMem"]),
            "cuda_driver_api": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cupy": cupy.__version__}


def nvrtc_info():
    from sepconv_gpu.backends.cuda import nvrtc

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
    record["missing"] = missing(dry_run)
    problems += ["imports"] * bool(record["missing"])
    record["nvidia_smi"] = _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader")
    for key, fn in (("device", lambda: device(dry_run)), ("nvrtc", nvrtc_info),
                    ("compiler", lambda: compiler(dry_run))):
        try:
            record[key] = fn()
        except Exception as exc:
            record[key] = f"unavailable ({type(exc).__name__}: {exc})"
            problems.append(key)
    record["commit"], record["commit_from"] = commit(given_commit)
    record["kernels_sha256"] = kernels_hash(ROOT)
    record["torch"], record["jax"] = _version("torch"), _version("jax")
    record["compute_sanitizer"] = find_sanitizer()
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
    for line in record["missing"]:
        print(f"MISSING {line}")
    print(json.dumps(record, indent=1))
    if isinstance(record["nvrtc"], dict) and not record["nvrtc"]["is_pinned_minor"]:
        print(f"note: NVRTC {record['nvrtc']['version']} is not the pinned "
              f"{record['nvrtc']['pinned']} (the register stage says whether it spills)")
    print("RESULT " + json.dumps({"passed": not problems, "ran": 1, "failed": problems, **record}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
