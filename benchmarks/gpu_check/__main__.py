"""The GPU check: one command for the minutes a GPU is at hand (benchmarks/gpu_check.sh).

    bash benchmarks/gpu_check.sh --out DIR [--dry-run] [--commit SHA] [--stages a,b]
                                 [--budget SECONDS]

Stages, in order of value, each a subprocess with its own timeout (a hang costs that
stage only), its output in DIR/gpu_check.log, its verdict, duration and command in
DIR/gpu_check.json (rewritten after every stage, so a run cut short keeps what it did).
Estimates on one H200, 16 cores, a warm kernel cache (`python -m sepconv_gpu.prebuild`);
modelled, not yet measured:

  environment   ~10 s   device, driver, CuPy, NVRTC (pinned minor?), torch, commit, kernels/ hash
  correctness   ~60 s   every distinct suite plan at batch 1/8/32 + float64 + softmax vs float64
  registers     ~20 s   no spills / stack frames with this machine's NVRTC (cold cache: ~60 s)
  sanitizer    ~180 s   compute-sanitizer memcheck, racecheck, initcheck over the driver
  benchmark    ~110 s   python -m benchmarks --device gpu --quick: vs PyTorch, torch.compile, JAX
  gpu_tests     ~90 s   pytest -m gpu (goldens, properties, layouts, interop)
  record         ~1 s   the record JSON and the benchmark's PNGs, checked
                ------
               ~7.9 min

`--dry-run` runs every stage without a GPU: the host emulator stands in for the device
(correctness: one shrunk case per code path, the first tiles of big grids; the
sanitizer driver's cases without compute-sanitizer), the benchmark times the `tiny`
suite on the CPU, the GPU tests are only collected. A stage that ran nothing fails.
Without --dry-run on a machine with no GPU the check refuses at once (exit status 2).

DIR receives at most 8 files, none deeper than DIR/benchmark/: gpu_check.json,
gpu_check.log and the benchmark's JSON and two PNGs. Exit status 0 only when every
stage passed. A new stage is one more `Stage` in `stages()` (e.g. the CPU sanitizers).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORD, LOG, BENCH_DIR = "gpu_check.json", "gpu_check.log", "benchmark"
MAX_FILES = 8
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck")


@dataclass
class Stage:
    name: str
    timeout_s: int
    estimate_s: int
    commands: list = field(default_factory=list)  # [(label, argv, timeout_s, env)]
    after: object = None  # fn(stage result) -> extra checks once the commands ran


def _python(*args):
    return [sys.executable, *args]


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    if not found and os.access("/usr/local/cuda/bin/compute-sanitizer", os.X_OK):
        found = "/usr/local/cuda/bin/compute-sanitizer"
    return found


def stages(args, out):
    dry = ["--dry-run"] if args.dry_run else []
    env_stage = Stage("environment", 60, 10, [(
        "environment", _python("-m", "benchmarks.gpu_check.environment", *dry,
                               *(["--commit", args.commit] if args.commit else [])), 60, {})])
    correctness = Stage("correctness", 300, 60, [(
        "correctness", _python("-m", "benchmarks.gpu_check.correctness", *dry), 300, {})])
    registers = Stage("registers", 240, 20, [(
        "registers", _python("-m", "benchmarks.gpu_check.registers", *dry), 240, {})])
    driver = _python("-m", "benchmarks.gpu_check.sanitize_driver")
    lineinfo = {"SEPCONV_GPU_LINEINFO": "1", "SEPCONV_GPU_DEBUG_SYNC": "1"}
    # first the -lineinfo builds of the driver's kernels, in parallel
    sanitize = [("prebuild -lineinfo", driver + ["--prebuild", *dry], 150, lineinfo)]
    if args.dry_run:  # the driver's harness on the host emulator, without compute-sanitizer
        sanitize += [("sanitizer driver (dry run)", driver + ["--dry-run"], 240, lineinfo)]
    else:
        tool = _sanitizer() or "compute-sanitizer"
        sanitize += [(t, [tool, "--tool", t, "--error-exitcode", "99", *driver], 200, lineinfo)
                     for t in SANITIZER_TOOLS]
    sanitizer = Stage("sanitizer", sum(c[2] for c in sanitize), 180, sanitize)
    bench = (["--device", "cpu", "--suite", "tiny", "--peers", "none"] if args.dry_run
             else ["--device", "gpu"])
    from .environment import commit  # the benchmark record's commit where there is no .git

    known = {"SEPCONV_GPU_GIT_COMMIT": commit(args.commit)[0] or ""}
    benchmark = Stage("benchmark", 360, 110, [(
        "benchmark", _python("-m", "benchmarks", *bench, "--quick", "--out", str(out / BENCH_DIR)),
        360, known)])
    gpu_tests = Stage("gpu_tests", 240, 90, [(
        "pytest -m gpu", _python("-m", "benchmarks.gpu_check.gpu_tests", *dry), 240, {})])
    record = Stage("record", 10, 1, [], after=_check_record)
    return [env_stage, correctness, registers, sanitizer, benchmark, gpu_tests, record]


def _run(argv, timeout_s, env, log):
    """(exit status or "timeout", output) of one command in its own process group, so a
    timeout ends its children too (compute-sanitizer's target, prebuild's workers)."""
    start = time.monotonic()
    log.write(f"\n===== {' '.join(argv)} (timeout {timeout_s} s)\n")
    log.flush()
    try:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    except OSError as exc:  # e.g. compute-sanitizer not installed
        log.write(f"cannot start: {exc}\n")
        return f"cannot start: {exc}", ""
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "timeout"
    log.write(output or "")
    log.write(f"===== exit {status} after {time.monotonic() - start:.1f} s\n")
    log.flush()
    return status, output or ""


def _result_line(output):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return None
    try:
        return json.loads(lines[-1][len("RESULT "):])
    except ValueError:
        return None


def _summary_line(output):
    """compute-sanitizer's verdict line."""
    found = [line.strip() for line in output.splitlines()
             if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line]
    return found[-1] if found else None


def run_stage(stage, out, log, record, deadline=None):
    """Run the stage's commands (each within its timeout and the run's `deadline`, a
    time.monotonic() value) and checks: its record entry."""
    start = time.monotonic()
    result = {"verdict": "fail", "commands": [], "estimate_s": stage.estimate_s,
              "timeout_s": stage.timeout_s}
    passed, ran = True, 0
    for label, argv, timeout_s, env in stage.commands:
        left = timeout_s if deadline is None else min(timeout_s, int(deadline - time.monotonic()))
        if left <= 0:
            result["commands"].append({"label": label, "argv": argv, "verdict": "fail",
                                       "exit": "not run: --budget spent"})
            passed = False
            continue
        status, output = _run(argv, left, env, log)
        parsed = _result_line(output)
        entry = {"label": label, "argv": argv, "exit": status,
                 "tail": output.strip().splitlines()[-3:]}
        if parsed is not None:
            entry["result"] = parsed
            ran += int(parsed.get("ran", 0))
        elif status == 0:  # a command without a RESULT line (the benchmark) counts once
            ran += 1
        summary = _summary_line(output)
        if summary:
            entry["sanitizer_summary"] = summary
        ok = status == 0 and (parsed is None or parsed.get("passed", False))
        entry["verdict"] = "pass" if ok else "fail"
        passed &= ok
        result["commands"].append(entry)
    if stage.after is not None:
        ok, detail = stage.after(out, record)
        result["detail"] = detail
        passed &= ok
        ran += ok
    result["ran"] = ran
    if ran == 0:
        passed = False
        result["why"] = "ran nothing"
    result["verdict"] = "pass" if passed else "fail"
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _check_record(out, record):
    """The benchmark's JSON is there and read back; its PNGs where matplotlib is; the
    folder within MAX_FILES files and one level; predicted beside measured collected."""
    bench = sorted((out / BENCH_DIR).glob("*.json")) if (out / BENCH_DIR).is_dir() else []
    detail = {}
    if not bench:
        return False, {"why": "no benchmark record"}
    data = json.loads(bench[-1].read_text())
    detail["benchmark_record"] = bench[-1].relative_to(out).as_posix()
    detail["plots"] = data.get("plots", [])
    detail["summary"] = data.get("summary", {})
    detail["predicted_vs_measured"] = [
        {"layer": layer["key"], "mode": mode, **{k: ours["model"].get(k) for k in
                                                 ("kernel", "predicted_us", "measured_us", "ratio")}}
        for layer in data.get("layers", []) for mode, entry in layer["modes"].items()
        for ours in [entry["impls"].get("sepconv_gpu", {})] if "model" in ours]
    try:
        import matplotlib  # noqa: F401
        plots_expected = True
    except ImportError:
        plots_expected = False
        detail["plots_note"] = "matplotlib is not installed: no PNGs"
    plots_ok = not plots_expected or len(detail["plots"]) == 2
    files = [p for p in out.rglob("*") if p.is_file()]
    depth_ok = all(len(p.relative_to(out).parts) <= 2 for p in files)
    detail["files"] = len(files) + (not (out / RECORD).exists())  # the record itself
    ok = plots_ok and depth_ok and detail["files"] <= MAX_FILES and bool(detail["predicted_vs_measured"])
    return ok, detail


def _write(out, record):
    tmp = out / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out / RECORD)


def main(argv=None):
    p = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for everything the run writes")
    p.add_argument("--dry-run", action="store_true", help="no GPU: host emulator and CPU stand in")
    p.add_argument("--commit", default=None, help="the commit tested (else COMMIT file, else git)")
    p.add_argument("--stages", default=None,
                   help="comma-separated subset, in the usual order (default: all)")
    p.add_argument("--budget", type=int, default=None, metavar="SECONDS",
                   help="end by then: each command's timeout is cut to the time left, and "
                        "what no longer fits is recorded as not run (default: no limit)")
    args = p.parse_args(argv)
    if args.budget is not None and args.budget < 1:
        p.error(f"--budget must be a positive number of seconds, got {args.budget}")
    if not args.dry_run:
        from sepconv_gpu.backends import cuda_status

        ok, why = cuda_status()
        if not ok:
            print(f"gpu_check: no GPU here ({why}); --dry-run checks the harness without one",
                  file=sys.stderr)
            return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / BENCH_DIR, ignore_errors=True)  # one benchmark record per run
    chosen = stages(args, out)
    if args.stages:
        wanted = [s.strip() for s in args.stages.split(",")]
        unknown = sorted(set(wanted) - {s.name for s in chosen})
        if unknown:
            p.error(f"unknown --stages {unknown}; choose from {[s.name for s in chosen]}")
        chosen = [s for s in chosen if s.name in wanted]
    record = {"kind": "gpu_check", "dry_run": args.dry_run,
              "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "estimate_s": sum(s.estimate_s for s in chosen), "stages": {}}
    start = time.monotonic()
    deadline = None if args.budget is None else start + args.budget
    with open(out / LOG, "w") as log:
        for stage in chosen:
            print(f"gpu_check: {stage.name} (estimate {stage.estimate_s} s, timeout {stage.timeout_s} s)",
                  flush=True)
            result = run_stage(stage, out, log, record, deadline)
            record["stages"][stage.name] = result
            if stage.name == "environment" and result["commands"]:
                record["environment"] = result["commands"][0].get("result")
            record["seconds"] = round(time.monotonic() - start, 1)
            _write(out, record)
            print(f"gpu_check: {stage.name}: {result['verdict']} in {result['seconds']} s "
                  f"({result['ran']} ran)", flush=True)
    record["passed"] = all(s["verdict"] == "pass" for s in record["stages"].values())
    _write(out, record)
    print(f"gpu_check: {'PASS' if record['passed'] else 'FAIL'} in {record['seconds']} s; "
          f"record {out / RECORD}, log {out / LOG}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
