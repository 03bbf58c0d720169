"""Autotuning: the device times the planner's few best plans and keeps the fastest.

The cost model (cost_model.py) ranks the plans of a call, but its constants are assumptions
until a GPU refits them, so its single pick may be wrong on a real device. With
autotuning on (`SEPCONV_GPU_AUTOTUNE=1`, or `sepconv_gpu.set_autotune(True)`), the first
call of a (device name, input shape and strides, dtype, configuration) times each
candidate of `candidates` (the tensor-core plans of `tc.tc_candidates`, and the
SIMT kernel's plan, which may serve every call, so the kernel family is chosen too; a
channel split is part of a plan) with the clock the backend gives (CUDA events): `WARMUP`
untimed runs, then the median of `REPEATS` timed ones. Every candidate that ran is run
once more and its output compared with the reference plan's (the cost model's choice, or
the first in its order that ran): one that differs by more than `TOLERANCE` (relative to
the output's magnitude) is logged, named, and cannot win. The fastest that agrees is kept for the
process and written to `autotune.json` in the kernel cache's directory
(`kernel_cache.cache_dir()`), so a later process reads the choice instead of timing
again. Calls the SIMT kernel alone may serve have one candidate and are never timed. Off
(the default): the cost model's choice, nothing timed, the file never read.

Candidates are timed with the call's weights prepared once (as a layer's call runs them,
whether the caller passed a weights cache or not), so the choice of an op call and of a
layer call of the same key time the same kernels.

The file is JSON, {"format": FORMAT, "entries": {key: entry}}, a key naming the device,
the geometry (shapes, strides of the convolution), the input's element strides, the dtype
and the configuration (activation, bias, TF32, alignment, shared-memory limit), an entry
the chosen plan (its kernel and fields) with the times measured. It is read once per
process; a write re-reads it, adds the new entry and replaces the file atomically
(`os.replace`), so processes tuning at once lose at most each other's newest entry (to be
timed again), never the file. A damaged or foreign file is ignored (said once in the log)
and overwritten by the next choice; an entry whose plan is no longer a candidate (the
planner changed) is timed again. Delete the file to tune afresh.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import threading

import numpy as np

from ..._env import flag
from . import kernel_cache, simt, tc
from .kernel_common import FUSED_ACTIVATIONS
from .launch import select_kernel

ENV_VAR = "SEPCONV_GPU_AUTOTUNE"
FILENAME = "autotune.json"
FORMAT = 2     # bump when the key or the entry changes meaning (2: weights prepared
               # once while timing, outputs checked; files of 1 are not trusted)
WARMUP = 2     # untimed runs of a candidate (the first one also loads its kernel)
REPEATS = 5    # timed runs; the median counts
CANDIDATES = 4  # tensor-core plans timed (tc_candidates' count)
# Largest relative difference from the reference plan's output: exact float32 plans differ
# only in summation order; TF32 and float16 plans may round at other points than the
# reference (SIMT against tensor cores); bfloat16 keeps 8 mantissa bits. A wrong plan is O(1).
TOLERANCE = {"float32": 1e-5, "tf32": 1e-2, "float16": 1e-2, "bfloat16": 4e-2}

logger = logging.getLogger("sepconv_gpu")
_override = None   # set_autotune's choice; None: the environment variable decides


class DeviceFault(RuntimeError):
    """A CUDA error that leaves the context unusable (an illegal address, a trap: sticky),
    raised by the backend: every later call fails too, so autotuning stops there, naming
    the plan, where a plan that merely cannot compile or launch is skipped."""


def set_autotune(enabled):
    """Turn autotuning on (True) or off (False) for this process; None: back to
    `SEPCONV_GPU_AUTOTUNE` (1/0, true/false, yes/no, on/off; unset: off)."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_autotune(enabled) takes True, False or None; received {enabled!r}")
    _override = enabled


def get_autotune():
    """Whether autotuning is on: `set_autotune`'s choice, else `SEPCONV_GPU_AUTOTUNE`."""
    if _override is not None:
        return _override
    return flag(ENV_VAR)


def candidates(dtype, geom, kernel_id, x_strides, allow_tf32, x_aligned, smem_limit,
               count=CANDIDATES):
    """The plans worth timing for one call, the cost model's choice first: the
    tensor-core kernel's `count` best (`tc_candidates`) where it may serve the call, then
    the SIMT kernel's plan (`simt_plan`); only the latter where the SIMT kernel alone may."""
    simt_only = simt.simt_plan(dtype, geom)
    # the epilogue runs no activation for "linear" and for those applied after the kernels
    linear = kernel_id not in FUSED_ACTIVATIONS or kernel_id == "linear"
    if select_kernel(dtype, geom, allow_tf32, x_strides, x_aligned, smem_limit, linear) != "tc":
        return (simt_only,)
    found = tc.tc_candidates(dtype, geom, linear, smem_limit, count)
    return tuple(p for p in found if tc.tc_fits_int32(geom, p)) + (simt_only,)


def describe(plan):
    """A plan as JSON-able data: its kernel family and every field but the prediction."""
    fields = dataclasses.asdict(plan)
    fields.pop("predicted_us", None)
    return {"kernel": "tc" if isinstance(plan, tc.TcPlan) else "simt", **fields}


def entry_key(device_name, dtype, geom, kernel_id, x_strides, has_bias, allow_tf32,
              x_aligned, smem_limit):
    """The file's key of one call: everything that changes its candidates or their times."""
    return json.dumps({
        "device": device_name, "dtype": dtype, "geometry": dataclasses.asdict(geom),
        "x_strides": list(x_strides), "activation": kernel_id, "bias": bool(has_bias),
        "allow_tf32": bool(allow_tf32), "x_aligned": bool(x_aligned),
        "smem_limit": int(smem_limit)}, sort_keys=True)


class Tuner:
    """The choices of one cache file: read once, timed on a miss, written back."""

    def __init__(self, directory=None, warmup=WARMUP, repeats=REPEATS):
        """`directory`: where autotune.json lives (None: the kernel cache's directory,
        looked up at the first use)."""
        self.directory, self.warmup, self.repeats = directory, warmup, repeats
        self._entries = None   # the file's entries, read at the first miss
        self._chosen = {}      # call -> plan, this process
        self._lock = threading.Lock()
        self._damage_said = self._write_failure_said = False

    @property
    def path(self):
        return os.path.join(self.directory or kernel_cache.cache_dir(), FILENAME)

    def choose(self, device_name, dtype, geom, activation, x_strides, has_bias,
               allow_tf32=False, x_aligned=True, smem_limit=None, *, run, clock):
        """The plan for this call (the arguments of `launch.launch_sequence`, after
        the device's name): remembered, read from the file, or timed now. `run(plan)`
        launches the call with `plan` and returns its output array (CuPy or NumPy, read
        before the next run); `clock(body)` returns the seconds `body()` takes on
        the device (CUDA events around it)."""
        smem_limit = tc.TC_SMEM_LIMIT if smem_limit is None else int(smem_limit)
        call = (device_name, dtype, geom, activation.kernel_id, tuple(int(s) for s in x_strides),
                bool(has_bias), bool(allow_tf32), bool(x_aligned), smem_limit)
        plan = self._chosen.get(call)
        if plan is None:
            with self._lock:  # one timing per call, even with many calling threads
                plan = self._chosen.get(call)
                if plan is None:
                    plan = self._chosen[call] = self._choose(call, run, clock)
        return plan

    def _choose(self, call, run, clock):
        device_name, dtype, geom, kernel_id, x_strides, has_bias, allow_tf32, x_aligned, \
            smem_limit = call
        found = candidates(dtype, geom, kernel_id, x_strides, allow_tf32, x_aligned, smem_limit)
        if len(found) == 1:
            return found[0]
        key = entry_key(*call)
        if self._entries is None:
            self._entries = self._read()
        entry = self._entries.get(key)
        if isinstance(entry, dict):
            for plan in found:
                if describe(plan) == entry.get("plan"):
                    return plan
        times = [self._time(plan, run, clock) for plan in found]
        ran = [i for i, t in enumerate(times) if not math.isinf(t)]
        if not ran:
            raise RuntimeError(f"sepconv_gpu autotune: no candidate plan ran ({found})")
        errors = _differences([found[i] for i in ran], run)
        limit = TOLERANCE["tf32" if allow_tf32 and dtype == "float32" else dtype]
        agree = [i for i, err in zip(ran, errors) if err <= limit]
        for i, err in zip(ran, errors):
            if err > limit:
                logger.warning("sepconv_gpu autotune: plan %s differs from plan %s by %.3g "
                               "(relative; at most %g): not a candidate", found[i],
                               found[ran[0]], err, limit)
        best = min(agree, key=times.__getitem__)   # ties: the model's order
        error_of = dict(zip(ran, errors))
        self._store(key, {
            "plan": describe(found[best]), "measured_us": times[best] * 1e6,
            "predicted_us": found[best].predicted_us, "reference": describe(found[ran[0]]),
            "timed": [{"plan": describe(p), "measured_us": t * 1e6, "predicted_us": p.predicted_us,
                       "difference": error_of.get(i), "agrees": i in agree}
                      for i, (p, t) in enumerate(zip(found, times))]})
        return found[best]

    def _time(self, plan, run, clock):
        """Median seconds of one run of `plan`; inf when it fails to launch (a plan the
        device cannot run, e.g. too many resources: the others still can). A fault that
        kills the context (`DeviceFault`) is raised again, naming the plan."""
        try:
            for _ in range(self.warmup):
                run(plan)
            return statistics.median(clock(lambda: run(plan)) for _ in range(self.repeats))
        except DeviceFault as exc:
            raise DeviceFault(f"sepconv_gpu autotune: plan {describe(plan)} faulted and the "
                              f"CUDA context is lost (restart the process): {exc}") from exc
        except RuntimeError as exc:
            logger.warning("sepconv_gpu autotune: plan %s failed (%s); not a candidate", plan, exc)
            return math.inf

    def chosen(self):
        """This process's choices: [(call, plan)], a call being `choose`'s arguments
        (device name, dtype, geometry, activation id, strides, bias, TF32, alignment,
        shared-memory limit)."""
        with self._lock:
            return list(self._chosen.items())

    def entries(self):
        """Every choice in the file now, {key: entry} (each entry with its candidates'
        measured and predicted times: what a refit of the cost model needs)."""
        return self._read()

    def _read(self):
        """The file's entries; {} when it is absent, unreadable or damaged."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, *kernel_cache.DECODE_ERRORS) as exc:
            return self._damaged(f"{type(exc).__name__}: {exc}")
        if not (isinstance(data, dict) and data.get("format") == FORMAT
                and isinstance(data.get("entries"), dict)):
            return self._damaged("not an autotune file of format %d" % FORMAT)
        return data["entries"]

    def _damaged(self, why):
        if not self._damage_said:
            self._damage_said = True
            logger.warning("sepconv_gpu: ignoring the autotune cache %s (%s); it is "
                           "rewritten by the next choice", self.path, why)
        return {}

    def _store(self, key, entry):
        self._entries[key] = entry
        entries = {**self._read(), key: entry}   # keep what other processes added
        text = json.dumps({"format": FORMAT, "entries": entries}, indent=1, sort_keys=True)
        try:
            kernel_cache.write_atomically(self.path, text.encode(), ".autotune.")
        except OSError as exc:
            if not self._write_failure_said:
                self._write_failure_said = True
                logger.warning("sepconv_gpu: cannot write the autotune cache %s (%s); "
                               "choices are timed again in each process", self.path, exc)


def chosen():
    """This process's choices, [(call, plan)] (`Tuner.chosen`): what a benchmark records
    as the plan that ran."""
    return _tuner.chosen()


def _host(a):
    """A float64 NumPy copy of a CuPy or NumPy array."""
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)


def _differences(plans, run):
    """Each plan's output against the first's: max |difference| / max(1, max |first|)."""
    reference = _host(run(plans[0]))
    scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    found = [0.0]
    for plan in plans[1:]:
        out = _host(run(plan))
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, never agrees
            err = (float(np.max(np.abs(out - reference), initial=0.0)) / scale
                   if out.shape == reference.shape else math.inf)
        found.append(err if math.isfinite(err) else math.inf)  # NaN never agrees
    return found


_tuner = Tuner()


def plan_for(device_name, dtype, geom, activation, x_strides, has_bias, allow_tf32=False,
             x_aligned=True, smem_limit=None, *, run, clock):
    """The plan `launch.launch_sequence` should launch: None (the cost model's
    choice) with autotuning off, which times nothing; else `Tuner.choose`'s pick."""
    if not get_autotune():
        return None
    return _tuner.choose(device_name, dtype, geom, activation, x_strides, has_bias,
                         allow_tf32, x_aligned, smem_limit, run=run, clock=clock)
