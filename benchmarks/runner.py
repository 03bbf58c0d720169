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

from . import peers, reference, timing

ROOT = Path(__file__).resolve().parents[1]
AGAIN = peers.OURS + " again"  # ours timed a second time in every round: the A/A control
DISTRIBUTIONS = {
    "numpy": ["numpy"], "sepconv_gpu": ["sepconv_gpu"], "cupy": ["cupy-cuda13x", "cupy-cuda12x", "cupy"],
    "torch": ["torch"], "tensorflow": ["tensorflow", "tensorflow-cpu"], "keras": ["keras"],
    "jax": ["jax"], "jaxlib": ["jaxlib"], "jax_cuda_plugin": ["jax-cuda13-plugin", "jax-cuda12-plugin"],
    "nvidia_nvrtc": ["nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12"], "nvtx": ["nvtx"],
    "matplotlib": ["matplotlib"],
    "numba": ["numba"], "threadpoolctl": ["threadpoolctl"],
}
# Per device: samples (rounds) per timing, warm-up calls, least sample length, pause
# between implementations, (CPU) retries of a layer other processes disturbed, with the
# longest wait for a quiet machine before each, whether our CUDA backend autotunes (its
# first call of a layer times the planner's candidates, before the correctness check),
# and the calls the device time is taken over (GPU). The GPU default is the publication
# profile: >= 10 warm-ups, samples >= 2 ms, >= 20 rounds, one suite in ~10 minutes.
DEFAULTS = {"gpu": {"batch": 32, "dtypes": "float32,tf32,float16", "profile": "publication",
                    "repeats": 20, "warmup": 10, "min_sample_s": 2e-3, "settle_s": 0.0,
                    "retries": 0, "quiet_wait_s": 0, "autotune": True, "device_calls": 50},
            "cpu": {"batch": 8, "dtypes": "float32", "profile": "cpu", "repeats": 9, "warmup": 1,
                    "min_sample_s": 0.05, "settle_s": 0.1, "retries": 3, "quiet_wait_s": 120,
                    "autotune": False, "device_calls": 0}}
QUICK = {"profile": "quick", "repeats": 3, "warmup": 1, "min_sample_s": 0.0, "settle_s": 0.0,
         "retries": 0, "quiet_wait_s": 0, "device_calls": 5}


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


def kernels_hash(root=ROOT, folder="kernels"):
    """sha256 of `find FOLDER -type f | sort | xargs cat` (None without FOLDER/), leaving
    out byte-code caches and benchmark results (the GPU machine has no .git to ask)."""
    files = sorted(p.relative_to(root).as_posix() for p in (root / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and "results" not in p.parts)
    if not files:
        return None
    digest = hashlib.sha256()
    for name in files:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def source_hashes(root=ROOT):
    return {folder: kernels_hash(root, folder) for folder in ("kernels", "sepconv_gpu", "benchmarks")}


def _answer(fn):
    """fn()'s value, or {"unavailable": why}: a record field that cannot be read here."""
    try:
        return fn()
    except Exception as why:  # noqa: BLE001 - any failure is the field's answer
        return {"unavailable": f"{type(why).__name__}: {why}"[:200]}


def gpu_versions():
    """The GPU libraries' versions as loaded in this process: cuDNN (PyTorch's), cuBLAS
    (CuPy's), NVRTC (ours and CuPy's)."""
    def cudnn():
        import torch
        return torch.backends.cudnn.version()

    def cublas():
        import cupy
        return cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle())

    def nvrtc():
        from sepconv_gpu.backends.cuda import nvrtc as ours
        return ".".join(map(str, ours.toolkit().version))

    def cupy_nvrtc():
        import cupy
        return ".".join(map(str, cupy.cuda.nvrtc.getVersion()))

    return {"cudnn": _answer(cudnn), "cublas": _answer(cublas), "nvrtc": _answer(nvrtc),
            "cupy_nvrtc": _answer(cupy_nvrtc)}


GPU_LIBRARIES = ("cudnn", "cublas", "nvrtc", "cupy_nvrtc")
NO_GPU = "a CPU run: the GPU's fields (GPU library versions, GPU state, device times) are null"


def framework_flags():
    """The settings in effect that change what the peers run: PyTorch's backends flags
    (TF32 is set per mode: each entry's `note`), JAX's precision, XLA and TF variables,
    and every SEPCONV_GPU_* variable."""
    flags = {"env": {k: v for k, v in sorted(os.environ.items())
                     if k.startswith(("SEPCONV_GPU_", "XLA_", "TF_", "JAX_", "CUDA_", "CUBLAS_",
                                      "CUDNN_", "TORCH", "PYTORCH_", "CUPY_"))}}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        flags["torch"] = {"cudnn.enabled": torch.backends.cudnn.enabled,
                          "cudnn.benchmark": torch.backends.cudnn.benchmark,
                          "cudnn.deterministic": torch.backends.cudnn.deterministic,
                          "float32_matmul_precision": torch.get_float32_matmul_precision(),
                          "num_threads": torch.get_num_threads()}
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        flags["jax"] = {"default_matmul_precision": _answer(lambda: jax.config.jax_default_matmul_precision),
                        "enable_x64": _answer(lambda: jax.config.jax_enable_x64)}
    return flags


GPU_STATE = ("clocks.sm", "clocks.mem", "clocks.max.sm", "power.draw", "power.limit",
             "temperature.gpu", "pstate", "clocks_throttle_reasons.active")


def gpu_state():
    """Clocks, power, temperature and throttle reasons now (nvidia-smi), or why not."""
    def query():
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(GPU_STATE)}",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.splitlines()[0]
        return dict(zip(GPU_STATE, (v.strip() for v in out.split(","))))
    return _answer(query)


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
        model = host_cpu()
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        self.info = {"kind": "cpu", "name": model, "host_cpu": model, "cores": os.cpu_count(),
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
                     "driver": _nvidia_smi_driver(), "host_cpu": host_cpu(),
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
        """Rotating channels_last inputs together larger than twice the last-level cache
        (up to timing.MOST_BUFFERS of them), and the rotation's record."""
        shape = layer.input_shape(batch)
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        count = timing.buffer_count(nbytes, self.cache_bytes)
        first = self.xp.random.default_rng(seed).standard_normal(shape, dtype=self.xp.float32).astype(dtype)
        # copies: each buffer its own memory (what evicts the cache), drawn once (up to
        # twice the last-level cache of random numbers would take seconds per layer)
        xs = [first] + [first.copy() for _ in range(count - 1)]
        return xs, timing.rotation(nbytes, count, self.cache_bytes)

    def free(self):
        if self.gpu:
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()
            if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
                sys.modules["torch"].cuda.empty_cache()


def host_cpu():
    return next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                 if line.startswith("model name")), platform.processor())


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
    """Peak memory a call allocates beyond its output (NumPy reports to tracemalloc). An
    output whose memory was recycled (our CPU kernel's pool: less than its size is still
    allocated after the call) was not allocated by the call."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = fn()
        now, peak = tracemalloc.get_traced_memory()
        return peak - base - (y.nbytes if now - base >= y.nbytes else 0)
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


def tuned_plan(case, mode):
    """The plan autotuning chose in this process for the case's call, or None (untuned:
    the cost model's choice ran)."""
    from sepconv_gpu.backends.cuda import autotune

    for call, plan in autotune.chosen():
        if call[1] == case.dtype and call[2] == case.geom and call[6] == (mode == "tf32"):
            return plan
    return None


def model_entry(case, mode, measured_s=None, plan=None, measured_by=None):
    """The cost model's view of the call that ran (`peers.kernel_model` for `plan`, the
    autotuned one, else the model's own choice) and, given the time a GPU measured for it,
    `measured_us` and `ratio` = measured / predicted; or `skipped`."""
    model, why = _attempt(lambda: peers.kernel_model(case, mode, plan))
    if why:
        return {"skipped": why}
    if measured_s is not None:
        model["measured_us"] = measured_s * 1e6
        model["measured_by"] = measured_by
        model["ratio"] = model["measured_us"] / model["predicted_us"]
    return model


def check(impl, case, mode, device, references):
    """The correctness gate: the implementation's output for input 0 against the float64
    reference (its padding's: `Impl.pads`), {"rel_err", "tolerance", "correct"}."""
    kernel, strides, pads = case.as_2d()
    pads = tuple(tuple(p) for p in impl.pads or pads)
    if pads not in references:
        dk, pk, b = (None if w is None else np.asarray(w, case.dtype) for w in case.weights_2d())
        references[pads] = peers.host(reference.separable_conv(
            device.xp, case.xs[0], dk, pk, b, (kernel, strides, pads), case.layer.activation))
    out = impl.to_numpy(impl.call(0))
    err = reference.relative_error(out, references[pads])
    tolerance = reference.TOLERANCE[mode]
    return {"rel_err": err, "tolerance": tolerance, "correct": err <= tolerance}


def _rounds(timers, repeats, settle_s):
    """`repeats` rounds, each implementation one sample back to back, the order rotated
    each round (nobody is always first); an implementation that fails leaves (why)."""
    failed, names = {}, list(timers)
    for r in range(repeats if names else 0):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in failed:
                continue
            time.sleep(settle_s)  # let the last library's spinning threads sleep
            why = _attempt(timers[name].sample)[1]
            if why:
                failed[name] = why
    return failed


def _paired(a, b):
    """Median over rounds of sample a / sample b (the rounds pair them)."""
    return float(np.median(np.divide(a, b)))


def _checked_timers(builders, case, mode, device, settings, progress):
    """Each implementation built, checked against the float64 reference (ours first) and
    warmed up: (impls, timers, entries) of those that may be timed, and every entry so
    far (the check's verdict, or why it is skipped)."""
    impls, timers, entries, references = {}, {}, {}, {}
    for name, builder in builders.items():
        if progress:
            progress.update(0, note=f"{case.layer.key} {mode} {name} (check, warm-up)")
        impl, why = _attempt(lambda: builder(case, mode))
        if impl is not None:  # the first call compiles and autotunes: the plan checked is timed
            checked, why = _attempt(lambda: check(impl, case, mode, device, references))
        if why:
            entries[name] = {"skipped": why}
            continue
        entries[name] = {"note": impl.note, **checked}
        if not checked["correct"]:
            entries[name]["wrong"] = (f"relative error {checked['rel_err']:.3g} > "
                                      f"{checked['tolerance']:g} against the float64 reference")
            continue
        if not entries.get(peers.OURS, {}).get("correct"):
            entries[name]["skipped"] = "not timed: ours did not run correctly here"
            continue
        impls[name] = impl
        timer, why = _attempt(lambda: timing.Timer(impl.call, len(case.xs), impl.clock,
                                                   settings["warmup"], settings["min_sample_s"]))
        if why:
            entries[name]["skipped"] = why
        else:
            timers[name] = timer
    return impls, timers, entries


def cpu_kernel_entry(case):
    """Which CPU kernel ran our call ("numba fused", "numba chunked" or "numpy") and on how
    many threads (the NumPy code's parallel part is BLAS's)."""
    from sepconv_gpu import backends

    if backends.cpu_kernel() == "numpy":
        return {"kernel": "numpy", "threads": blas_threads()}
    from sepconv_gpu.backends.cpu import numba_kernel

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

    Each implementation is first checked against the float64 reference (ours first; one
    that is wrong is not timed, and when ours is wrong nobody is). Samples are then taken
    in rounds, one per implementation back to back in a rotating order, ours twice (the
    A/A control), so that anything else loading the machine weighs on all alike;
    `speedup` is the median over rounds of peer sample / our sample. On a GPU each
    implementation's device time follows (`Timer.device_time`)."""
    dtype = peers.compute_dtype(mode)
    xs, rotation = device.inputs(layer, batch, dtype, seed)
    case = peers.Case(layer, batch, device.gpu, dtype, xs, layer.weights(seed))
    floor = device.floor_s(layer.flops(batch), layer.bytes(batch, np.dtype(dtype).itemsize), mode)
    builders = {peers.OURS: peers.sepconv_gpu} | {n: peers.PEERS[device.kind][n] for n in peer_names}
    impls, timers, entries = _checked_timers(builders, case, mode, device, settings, progress)
    if peers.OURS in timers:
        timers[AGAIN] = timing.Timer(impls[peers.OURS].call, len(xs), impls[peers.OURS].clock,
                                     0, settings["min_sample_s"])
        timers[AGAIN].inner = timers[peers.OURS].inner  # the same samples as ours'
    if progress:
        progress.update(0, note=f"{layer.key} {mode} timing")
    for name, why in _rounds(timers, settings["repeats"], settings["settle_s"]).items():
        entries.setdefault(name, {})["skipped"] = why
        del timers[name]
    for name, timer in timers.items():
        if name != AGAIN:
            entries[name] |= timer.result() | {"pct_of_floor": 100 * timer.result()["median_s"] / floor}
        if device.gpu and settings["device_calls"]:
            device_s, why = _attempt(lambda: timer.device_time(settings["device_calls"]))
            entries.setdefault(name, {})["device_s"] = device_s
            if why:
                entries[name]["device_s_unavailable"] = why
    ours = entries[peers.OURS]
    plan = tuned_plan(case, mode) if device.gpu else None  # the plan the check ran
    if peers.OURS in timers:
        own = timers[peers.OURS].samples
        if AGAIN in timers:  # ours against itself: the noise floor of a paired ratio
            ratios = np.divide(timers[AGAIN].samples, own)
            ours["aa"] = {"median": float(np.median(ratios)),
                          "p10": float(np.percentile(ratios, 10)),
                          "p90": float(np.percentile(ratios, 90)),
                          "device_ratio": _ratio(entries.get(AGAIN, {}).get("device_s"),
                                                 ours.get("device_s"))}
        for name in builders:
            r = entries[name]
            if name != peers.OURS and name in timers:
                r["speedup"] = _paired(timers[name].samples, own)
                r["device_speedup"] = _ratio(r.get("device_s"), ours.get("device_s"))
        measured, by = ((ours["device_s"], "device time") if ours.get("device_s")
                        else (ours["median_s"], "per-call time") if device.gpu else (None, None))
        # the CUDA plan's prediction rides along on the CPU too (the dry run's record
        # stage reads it); a CPU table shows CPU facts instead
        ours["model"] = model_entry(case, mode, measured, plan, by)
        if not device.gpu:
            ours["cpu_kernel"] = cpu_kernel_entry(case)
            ours["peak_extra_bytes"] = peak_extra_bytes(lambda: impls[peers.OURS].call(0))
            ours["io_bytes"] = xs[0].nbytes + math.prod(case.out_shape) * np.dtype(dtype).itemsize
    else:
        ours["model"] = model_entry(case, mode, plan=plan)
    entries.pop(AGAIN, None)  # kept in ours' "aa"
    entry = {"floor_s": floor, "rotation": rotation, "impls": entries,
             "best_peer": best_peer(entries)}
    impls.clear(), timers.clear(), xs.clear()  # free device memory before the next case
    device.free()
    if progress:
        progress.update(len(builders), note=layer.key)
    return entry


def _ratio(a, b):
    return a / b if a and b else None


def best_peer(impls):
    """The fastest correct peer that computes the layer's own function, per call and by
    device time, and our speedup over it (its paired `speedup`, its `device_speedup`):
    {"name", "speedup", "device_name", "device_speedup"}; None where no peer ran."""
    found = {}
    for field, prefix in (("median_s", ""), ("device_s", "device_")):
        timed = {n: r[field] for n, r in impls.items() if n != peers.OURS and r.get(field)
                 and r.get(f"{prefix}speedup") and correct(r) and n not in peers.OTHER_FUNCTION}
        if timed:
            name = min(timed, key=timed.get)
            found |= {f"{prefix}name": name, f"{prefix}speedup": impls[name][f"{prefix}speedup"]}
    return found or None


def correct(result):
    """Whether an implementation's result is correct (records before the float64 gate
    said `agrees`, with ours)."""
    return result.get("correct", result.get("agrees", False))


def _geomean(values):
    return float(np.exp(np.mean(np.log(values))))


def summarize(layers, modes, peer_names):
    """Per "<mode>/<peer>": geomean, min and max speedup (per call, and of device times)
    over the layers where the peer ran correctly, and per suite the network total (each
    layer weighted by `repeat`), None unless every layer of the suite has the peer;
    "<mode>/best_peer": the same against the fastest correct peer of each layer;
    "<mode>/sepconv_gpu": our median % of the floor, the A/A noise and the model ratio."""
    summary = {}
    suites = {}
    for layer in layers:
        suites.setdefault(layer["suite"], []).append(layer)
    for mode in modes:
        entries = [layer["modes"].get(mode, {}).get("impls", {}) for layer in layers]
        ours = [e.get(peers.OURS, {}) for e in entries]
        pct = [o["pct_of_floor"] for o in ours if "pct_of_floor" in o]
        if pct:
            mine = summary[f"{mode}/{peers.OURS}"] = {"median_pct_of_floor": float(np.median(pct)),
                                                      "layers": len(pct)}
            ratios = [o["model"]["ratio"] for o in ours if "ratio" in o.get("model", {})]
            if ratios:  # GPU runs: how far the cost model is off, measured / predicted
                mine["model_ratio_geomean"] = _geomean(ratios)
            aa = [abs(math.log(o["aa"]["median"])) for o in ours if o.get("aa")]
            if aa:  # the typical paired ratio of ours against itself: below it is noise
                mine["aa_noise"] = float(math.exp(np.median(aa)))
        per_layer = {peer: [e.get(peer, {}) for e in entries] for peer in peer_names}
        per_layer["best_peer"] = [_best_as_result(layer["modes"].get(mode, {})) for layer in layers]
        for peer, results in per_layer.items():
            ran = [(layer, r) for layer, r in zip(layers, results) if "speedup" in r and correct(r)]
            if not ran:
                continue
            speedups = [r["speedup"] for _, r in ran]
            s = summary[f"{mode}/{peer}"] = {
                "geomean_speedup": _geomean(speedups), "min_speedup": float(min(speedups)),
                "max_speedup": float(max(speedups)), "layers": len(ran)}
            device = [r["device_speedup"] for _, r in ran if r.get("device_speedup")]
            if device:
                s["device_geomean_speedup"] = _geomean(device)
            pct = [r["pct_of_floor"] for _, r in ran if "pct_of_floor" in r]
            if pct:
                s["median_pct_of_floor"] = float(np.median(pct))
            s["suite_total_speedup"] = {
                suite: _network_total(members, mode, peer) for suite, members in suites.items()}
    return summary


def _best_as_result(entry):
    """The best peer of a layer's entry as a peer result (speedup, times), or {}."""
    best = entry.get("best_peer") or {}
    if "speedup" not in best:
        return {}
    impls = entry["impls"]
    return {"speedup": best["speedup"], "correct": True,
            "median_s": impls[best["name"]]["median_s"],
            "device_speedup": best.get("device_speedup")}


def _network_total(members, mode, peer):
    """A suite's network time for the peer over ours, each layer weighted by `repeat`;
    None unless every layer of the suite has a correct timing of both."""
    pairs = []
    for layer in members:
        entry = layer["modes"].get(mode, {})
        r = _best_as_result(entry) if peer == "best_peer" else entry.get("impls", {}).get(peer, {})
        ours = entry.get("impls", {}).get(peers.OURS, {})
        if not ("median_s" in r and correct(r) and "median_s" in ours):
            return None
        pairs.append((layer["repeat"], r["median_s"], ours["median_s"]))
    return sum(n * p for n, p, _ in pairs) / sum(n * o for n, _, o in pairs)


def failures(record):
    """What fails the run: every implementation that computed a wrong result, and ours
    failing to run at all, ["<mode> <layer> <impl>: why"]. (A peer that cannot run here
    is skipped, with the reason in its entry.)"""
    found = []
    for layer in record["layers"]:
        for mode, entry in layer["modes"].items():
            for name, r in entry["impls"].items():
                why = r.get("wrong") or (name == peers.OURS and r.get("skipped", "").startswith("failed")
                                         and r["skipped"])
                if why:
                    found.append(f"{mode} {layer['key']} {name}: {why}")
    return found


def environment(device):
    """What the record needs to be reproduced: versions, flags, hashes, the GPU's state."""
    return {"versions": versions() | (gpu_versions() if device.gpu else dict.fromkeys(GPU_LIBRARIES)),
            "gpu_state_before": gpu_state() if device.gpu else None,
            "gpu_fields_null": None if device.gpu else NO_GPU}


def run(device_kind, layers, modes, batch, peer_names, settings, progress=None, save=None):
    """The whole record: environment, ceilings, every layer in every mode, the summary.
    `save(record)` is called after every layer (the record so far, `complete` False), so
    a run stopped from outside keeps what it measured."""
    device = Device(device_kind)
    record = {
        "schema": 2,
        "complete": False,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.info,
        "git": git_commit(),
        "kernels_sha256": kernels_hash(),
        "source_sha256": source_hashes(),
        **environment(device),
        "load_average_before": list(os.getloadavg()),  # other work on the machine skews times
        "thread_env": {k: v for k, v in os.environ.items()
                       if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "settings": {"batch": batch, "modes": list(modes), **settings,
                     "tolerance": {m: reference.TOLERANCE[m] for m in modes}},
        "device_time": ("torch.profiler CUDA activities (kernels, copies, memsets), the "
                        "GPU's busy time over device_calls calls" if device.gpu else None),
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
        record["wall_s"] = time.perf_counter() - start
        record["summary"] = summarize(record["layers"], modes, peer_names)
        record["framework_flags"] = framework_flags()
        if save:
            save(record)
    record["load_average_after"] = list(os.getloadavg())
    record["gpu_state_after"] = gpu_state() if device.gpu else None
    if not device.gpu:  # ours per layer: its entry's "cpu_kernel"
        record["threads"] = peer_threads(peer_names)
    disturbed = [l["other_processes_cpu_s"] for l in record["layers"]]
    record["other_processes_cpu_s"] = None if None in disturbed else sum(disturbed)
    if settings.get("autotune"):  # what the device chose, every candidate's times
        from sepconv_gpu.backends.cuda import autotune

        record["autotune"] = autotune.Tuner().entries()
    record["failures"] = failures(record)
    record["complete"] = True
    return record
