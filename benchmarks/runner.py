"""Run suites of layers through ours and the peers, in one process on the same inputs,
and build the result record (see README.md for its fields)."""
from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from . import peers, timing

ROOT = Path(__file__).resolve().parents[1]
# Agreement with our output, as a fraction of its largest magnitude (at least 1).
TOLERANCE = {"float32": 1e-4, "tf32": 2e-2, "float16": 2e-2}
DISTRIBUTIONS = {
    "numpy": ["numpy"], "sepconv_gpu": ["sepconv_gpu"], "cupy": ["cupy-cuda13x", "cupy-cuda12x", "cupy"],
    "torch": ["torch"], "tensorflow": ["tensorflow", "tensorflow-cpu"], "keras": ["keras"],
    "jax": ["jax"], "jaxlib": ["jaxlib"], "nvtx": ["nvtx"], "matplotlib": ["matplotlib"],
    "numba": ["numba"], "threadpoolctl": ["threadpoolctl"],
}
# Per device: samples per timing, warm-up calls, least sample length, pause between
# implementations, (CPU) retries of a layer other processes disturbed, with the
# longest wait for a quiet machine before each, and whether our CUDA backend autotunes
# (its first call of a layer times the planner's candidates, during the warm-up).
DEFAULTS = {"gpu": {"batch": 32, "dtypes": "float32,tf32,float16", "repeats": 100, "warmup": 10,
                    "min_sample_s": 2e-3, "settle_s": 0.0, "retries": 0, "quiet_wait_s": 0,
                    "autotune": True},
            "cpu": {"batch": 8, "dtypes": "float32", "repeats": 9, "warmup": 1,
                    "min_sample_s": 0.05, "settle_s": 0.1, "retries": 3, "quiet_wait_s": 120,
                    "autotune": False}}
QUICK = {"repeats": 3, "warmup": 1, "min_sample_s": 0.0, "settle_s": 0.0, "retries": 0,
         "quiet_wait_s": 0}


def versions():
    found = {"python": platform.python_version()}
    for name, dists in DISTRIBUTIONS.items():
        for dist in dists:
            try:
                found[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def git_commit():
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                                           text=True, check=True).stdout.strip()
        return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):  # no git, e.g. in the Docker image
        return {"commit": os.environ.get("SEPCONV_GPU_GIT_COMMIT") or None, "dirty": None}


def kernels_hash(root=ROOT):
    """sha256 of `find kernels -type f | sort | xargs cat` (None without kernels/)."""
    files = sorted(p.relative_to(root).as_posix() for p in (root / "kernels").rglob("*") if p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for name in files:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


class Device:
    """The array module, cache size, ceilings and description of the machine timed on."""

    def __init__(self, kind):
        self.kind, self.gpu = kind, kind == "gpu"
        if self.gpu:
            self._init_gpu()
        else:
            self._init_cpu()

    def _init_cpu(self):
        self.xp = np
        self.cache_bytes = timing.cpu_cache_bytes()
        model = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                      if line.startswith("model name")), platform.processor())
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        self.info = {"kind": "cpu", "name": model, "cores": os.cpu_count(),
                     "last_level_cache_bytes": self.cache_bytes,
                     "blas": f"{blas.get('name')} {blas.get('version')}", "driver": None}
        self._measure_ceilings(np, timing.WallClock(), 256 << 20, 2048, ["float32"])

    def _init_gpu(self):
        from sepconv_gpu import backends

        ok, reason = backends.cuda_status()
        if not ok:
            raise SystemExit(f"--device gpu needs a CUDA device: {reason}")
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self.xp = cupy
        self.cache_bytes = int(cupy.cuda.Device().attributes["L2CacheSize"])
        self.info = {"kind": "gpu", "name": props["name"].decode(),
                     "compute_capability": cupy.cuda.Device().compute_capability,
                     "memory_bytes": int(props["totalGlobalMem"]), "l2_bytes": self.cache_bytes,
                     "driver": _nvidia_smi_driver(),
                     "cuda_driver_api": cupy.cuda.runtime.driverGetVersion(),
                     "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
        self._measure_ceilings(cupy, timing.cupy_clock(), 1 << 30, 8192, ["float32", "tf32", "float16"])

    def _measure_ceilings(self, xp, clock, copy_bytes, n, modes):
        """Copy bandwidth, and per mode the fastest GEMM of the libraries present: the
        ceiling must bound the peers too (PyTorch's oneDNN can beat NumPy's BLAS)."""
        by_library = timing.gemm_rates(_gemms(xp, n, modes), clock)
        self.ceilings = {"copy_bandwidth_Bps": timing.copy_bandwidth(xp, clock, copy_bytes),
                         "gemm_flops": {m: max(rates.values()) for m, rates in by_library.items()},
                         "gemm_flops_by_library": by_library, "gemm_n": n}

    def floor_s(self, flops, nbytes, mode):
        """The roofline floor: the slower of moving the bytes and doing the FLOPs."""
        rates = self.ceilings["gemm_flops"]
        return max(nbytes / self.ceilings["copy_bandwidth_Bps"], flops / rates.get(mode, rates["float32"]))

    def inputs(self, layer, batch, dtype, seed):
        """Rotating channels_last inputs together larger than twice the last-level cache."""
        shape = layer.input_shape(batch)
        count = timing.buffer_count(math.prod(shape) * np.dtype(dtype).itemsize, self.cache_bytes)
        rng = self.xp.random.default_rng(seed)
        return [rng.standard_normal(shape, dtype=self.xp.float32).astype(dtype) for _ in range(count)]

    def free(self):
        if self.gpu:
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()
            if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
                sys.modules["torch"].cuda.empty_cache()


def _lines(path):
    try:
        return open(path).read().splitlines()
    except OSError:
        return []


def _nvidia_smi_driver():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def _gemms(xp, n, modes):
    """{mode: {library: (n, fn)}}: one n x n GEMM per mode with xp, and with PyTorch on
    the same device where it is installed (the only way to TF32 on CuPy arrays)."""
    gemms = {m: {} for m in modes}
    for mode in modes:
        if mode != "tf32":  # CuPy's matmul is exact float32 unless CUPY_TF32 is set
            a = xp.ones((n, n), dtype=peers.compute_dtype(mode))
            gemms[mode][xp.__name__] = (n, functools.partial(xp.matmul, a, a))
    try:
        import torch
    except ImportError:
        return gemms
    device = "cuda" if xp is not np else "cpu"
    if device == "cpu" or torch.cuda.is_available():
        for mode in modes:
            t = torch.ones(n, n, device=device, dtype=getattr(torch, peers.compute_dtype(mode)))
            gemms[mode]["torch"] = (n, functools.partial(_torch_gemm, t, mode == "tf32", False))
            gemms[mode]["torch_conv1x1"] = (n, functools.partial(_torch_gemm, t, mode == "tf32", True))
    return {m: libs for m, libs in gemms.items() if libs}


def _torch_gemm(t, tf32, conv):
    """t @ t, or the same GEMM as a 1x1 convolution (n channels -> n filters at n
    positions), which oneDNN / cuDNN may run faster than the BLAS matmul."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if conv:
        return torch.nn.functional.conv2d(t[None, :, :, None], t[:, :, None, None])
    return torch.matmul(t, t)


def machine_busy_s():
    """CPU seconds every process on the machine has used (Linux), else None."""
    fields = next((line.split()[1:] for line in _lines("/proc/stat") if line.startswith("cpu ")), None)
    if not fields:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_busy_s():
    t = os.times()
    return t.user + t.system


def others_cpu_s(fn):
    """fn(), and the CPU seconds other processes used meanwhile (None off Linux)."""
    busy, own = machine_busy_s(), own_busy_s()
    value = fn()
    return value, None if busy is None else machine_busy_s() - busy - (own_busy_s() - own)


def quiet(others_s, wall_s, share=0.05):
    return others_s is None or others_s <= share * wall_s * (os.cpu_count() or 1)


def wait_until_quiet(max_s, window_s=2.0):
    """Wait, up to max_s, for a window in which other processes leave the machine alone."""
    deadline = time.perf_counter() + max_s
    while time.perf_counter() < deadline:
        if quiet(others_cpu_s(lambda: time.sleep(window_s))[1], window_s):
            return


def peak_extra_bytes(fn):
    """Peak memory a call allocates beyond its output (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = fn()
        return tracemalloc.get_traced_memory()[1] - base - y.nbytes
    finally:
        tracemalloc.stop()


def _attempt(fn):
    """(value, None), or (None, why) when an implementation cannot run: a peer failing
    must not end the run, and the record says why."""
    try:
        return fn(), None
    except peers.Skip as why:
        return None, str(why)
    except ImportError as why:
        return None, f"not installed ({why.name or why})"
    except Exception as why:
        return None, f"failed: {type(why).__name__}: {why}"[:300]


def model_entry(case, mode, measured_s=None):
    """The cost model's view of our call (`peers.kernel_model`) and, given the time a GPU
    measured for it, `measured_us` and `ratio` = measured / predicted; or `skipped`."""
    model, why = _attempt(lambda: peers.kernel_model(case, mode))
    if why:
        return {"skipped": why}
    if measured_s is not None:
        model["measured_us"] = measured_s * 1e6
        model["ratio"] = model["measured_us"] / model["predicted_us"]
    return model


def cpu_kernel_entry(case):
    """Which CPU kernel ran our call ("numba fused", "numba chunked" or "numpy") and on how
    many threads (the NumPy code's parallel part is BLAS's)."""
    from sepconv_gpu import backends

    if backends.cpu_kernel() == "numpy":
        return {"kernel": "numpy", "threads": blas_threads()}
    from sepconv_gpu.backends import numba_kernel

    plan = numba_kernel.plan(case.layer.geometry(case.batch))
    return {"kernel": f"numba {plan}", "threads": numba_kernel.threads() if plan == "chunked" else 1}


def blas_threads():
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=None)


def peer_threads(peer_names):
    """The threads each peer computes on (TensorFlow's intra-op pool: 0 means one per core)."""
    threads = {}
    if "torch_cpu" in peer_names and "torch" in sys.modules:
        threads["torch_cpu"] = sys.modules["torch"].get_num_threads()
    if "keras_tf_cpu" in peer_names and "tensorflow" in sys.modules:
        n = sys.modules["tensorflow"].config.threading.get_intra_op_parallelism_threads()
        threads["keras_tf_cpu"] = n or os.cpu_count()
    return threads


def run_case(layer, batch, mode, device, settings, peer_names, seed=0, progress=None):
    """Ours and every peer on one layer in one mode: the layer's entry for that mode.

    Samples are taken in rounds, one per implementation back to back, so that anything
    else loading the machine meanwhile weighs on all of them alike; `speedup` is the
    median over rounds of peer sample / our sample."""
    dtype = peers.compute_dtype(mode)
    case = peers.Case(layer, batch, device.gpu, dtype, device.inputs(layer, batch, dtype, seed),
                      layer.weights(seed))
    floor = device.floor_s(layer.flops(batch), layer.bytes(batch, np.dtype(dtype).itemsize), mode)
    builders = {peers.OURS: peers.sepconv_gpu} | {n: peers.PEERS[device.kind][n] for n in peer_names}
    impls, timers, skipped = {}, {}, {}
    for name, builder in builders.items():
        if progress:
            progress.update(0, note=f"{layer.key} {mode} {name} (warm-up)")
        impls[name], skipped[name] = _attempt(lambda: builder(case, mode))
        if impls[name] is not None:
            timers[name], skipped[name] = _attempt(lambda: timing.Timer(
                impls[name].call, len(case.xs), impls[name].clock, settings["warmup"],
                settings["min_sample_s"]))
    if progress:
        progress.update(0, note=f"{layer.key} {mode} timing")
    for _ in range(settings["repeats"]):
        for name in list(timers):
            time.sleep(settings["settle_s"])  # let the last library's spinning threads sleep
            why = _attempt(timers[name].sample)[1]
            if why:
                skipped[name] = why
                del timers[name]
    entry = {"floor_s": floor, "impls": {}}
    reference = None
    for name in builders:
        if name not in timers:
            entry["impls"][name] = {"skipped": skipped[name] or "failed"}
            continue
        impl, result = impls[name], timers[name].result()
        out, why = _attempt(lambda: impl.to_numpy(impl.call(0)).astype(np.float32))
        if why:
            entry["impls"][name] = {"skipped": why}
            continue
        result |= {"note": impl.note, "pct_of_floor": 100 * result["median_s"] / floor}
        if name == peers.OURS:
            reference, ours = out, timers[name].samples
            if device.gpu:
                result["model"] = model_entry(case, mode, result["median_s"])
            else:
                result["cpu_kernel"] = cpu_kernel_entry(case)
            if not device.gpu:
                result["peak_extra_bytes"] = peak_extra_bytes(lambda: impl.call(0))
                result["io_bytes"] = case.xs[0].nbytes + out.size * np.dtype(dtype).itemsize
        elif reference is not None:
            err = float(np.max(np.abs(out - reference))) if out.shape == reference.shape else math.inf
            result["max_abs_err"] = err
            result["agrees"] = err <= TOLERANCE[mode] * max(1.0, float(np.max(np.abs(reference))))
            result["speedup"] = float(np.median(np.divide(timers[name].samples, ours)))
        entry["impls"][name] = result
    impls.clear(), timers.clear(), case.xs.clear()  # free device memory before the next case
    device.free()
    if progress:
        progress.update(len(builders), note=layer.key)
    return entry


def summarize(layers, modes, peer_names):
    """Per "<mode>/<peer>": geomean, min and network-total speedup over the layers where
    the peer ran and agreed; per "<mode>/sepconv_gpu": the median % of the floor."""
    summary = {}
    for mode in modes:
        entries = [layer["modes"][mode] for layer in layers]
        ours = [e["impls"].get(peers.OURS, {}) for e in entries]
        pct = [o["pct_of_floor"] for o in ours if "pct_of_floor" in o]
        if pct:
            summary[f"{mode}/{peers.OURS}"] = {"median_pct_of_floor": float(np.median(pct)),
                                               "layers": len(pct)}
            ratios = [o["model"]["ratio"] for o in ours if "ratio" in o.get("model", {})]
            if ratios:  # GPU runs: how far the cost model is off, measured / predicted
                summary[f"{mode}/{peers.OURS}"]["model_ratio_geomean"] = float(
                    np.exp(np.mean(np.log(ratios))))
        for peer in peer_names:
            pairs = [(layer["repeat"], e["impls"][peers.OURS]["median_s"], e["impls"][peer])
                     for layer, e in zip(layers, entries)
                     if e["impls"].get(peer, {}).get("agrees")]
            if not pairs:
                continue
            speedups = [r["speedup"] for _, _, r in pairs]
            summary[f"{mode}/{peer}"] = {
                "geomean_speedup": float(np.exp(np.mean(np.log(speedups)))),
                "min_speedup": float(min(speedups)),
                "max_speedup": float(max(speedups)),
                "total_speedup": sum(n * r["median_s"] for n, _, r in pairs)
                                 / sum(n * t for n, t, _ in pairs),
                "median_pct_of_floor": float(np.median([r["pct_of_floor"] for _, _, r in pairs])),
                "layers": len(pairs),
            }
    return summary


def run(device_kind, layers, modes, batch, peer_names, settings, progress=None):
    """The whole record: environment, ceilings, every layer in every mode, the summary."""
    device = Device(device_kind)
    record = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.info,
        "git": git_commit(),
        "kernels_sha256": kernels_hash(),
        "versions": versions(),
        "load_average_before": list(os.getloadavg()),  # other work on the machine skews times
        "thread_env": {k: v for k, v in os.environ.items()
                       if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "settings": {"batch": batch, "modes": list(modes), **settings,
                     "tolerance": {m: TOLERANCE[m] for m in modes}},
        "ceilings": device.ceilings,
        "peers": list(peer_names),
        "layers": [],
    }
    start = time.perf_counter()
    for layer in layers:
        geom = layer.geometry(batch)
        # On a shared machine, time a layer while nothing else runs; retry one that was disturbed.
        for attempt in range(1 + settings["retries"]):
            wait_until_quiet(settings["quiet_wait_s"])
            t0 = time.perf_counter()
            entries, others = others_cpu_s(lambda: {
                m: run_case(layer, batch, m, device, settings, peer_names, progress=progress)
                for m in modes})
            undisturbed = quiet(others, time.perf_counter() - t0)
            if undisturbed:
                break
        record["layers"].append({
            "suite": layer.suite, "name": layer.name, "key": layer.key, "repeat": layer.repeat,
            "input_shape": list(geom.input_shape), "output_shape": list(geom.output_shape),
            "kernel": layer.kernel, "stride": layer.stride, "activation": layer.activation,
            "use_bias": layer.use_bias, "flops": layer.flops(batch),
            "bytes": {m: layer.bytes(batch, 2 if m == "float16" else 4) for m in modes},
            "modes": entries, "attempts": attempt + 1, "other_processes_cpu_s": others,
            "undisturbed": undisturbed,
        })
    record["load_average_after"] = list(os.getloadavg())
    if not device.gpu:  # ours per layer: its entry's "cpu_kernel"
        record["threads"] = peer_threads(peer_names)
    record["wall_s"] = time.perf_counter() - start
    disturbed = [l["other_processes_cpu_s"] for l in record["layers"]]
    record["other_processes_cpu_s"] = None if None in disturbed else sum(disturbed)
    record["summary"] = summarize(record["layers"], modes, peer_names)
    if settings.get("autotune"):  # what the device chose, every candidate's times
        from sepconv_gpu.backends import autotune

        record["autotune"] = autotune.Tuner().entries()
    return record
