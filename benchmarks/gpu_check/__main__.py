"""The GPU check: one command for the minutes a GPU is at hand (benchmarks/gpu_check.sh).

    bash benchmarks/gpu_check.sh --out DIR [--dry-run] [--commit SHA] [--stages a,b]
                                 [--budget SECONDS] [--bench-suite S] [--bench-dtype D]
                                 [--bench-compile]

Stages, each a subprocess with its own timeout (a hang costs that stage only), its
output streamed to DIR/gpu_check.log as it comes (a run killed from outside keeps what
was said), its verdict, duration and command in DIR/gpu_check.json (rewritten after every
stage, so a run cut short keeps what it did). In order of the evidence a minute of GPU
buys, so that a run cut short (`--budget`, or the machine taken back) loses the least:

  stage         device    what
  environment    ~10 s   imports, device, driver, CuPy (or its error), NVRTC (pinned minor?),
                         which compiler the backend takes, torch, commit, kernels/ hash
  correctness    ~60 s   every distinct suite plan at batch 1/8/32, float64, bfloat16,
                         softmax: real numbers against the float64 reference
  gpu_tests      ~90 s   pytest -m gpu: goldens, properties, layouts, interop, serving
  registers      ~20 s   no spills / stack frames with this machine's NVRTC, and the
                         backend loads what was checked (cold cache: ~60 s)
  benchmark      ~60 s   one suite in one mode (--bench-suite, --bench-dtype) vs PyTorch and
                         JAX, --quick, no torch.compile unless --bench-compile
  record          ~1 s   the benchmark's JSON and PNGs, checked
  sanitizer     ~180 s   compute-sanitizer memcheck, racecheck, initcheck over the driver:
                         last, as the slowest; memory errors that leave the numbers right
                         are what it adds to correctness
                ------
               ~7 min    device times are estimates (modelled, not yet measured on a GPU)

`--dry-run` runs the same stages without a GPU, through the same code with only the
bottom swapped: CuPy is the stand-in (benchmarks/fake_cupy.py, its launches executed by
the host emulator of tests/_cuda_host_emulator.py), so correctness, the GPU tests and the
sanitizer driver run `cuda_backend` itself (its call plan, `_run`, `_launch`) on the CPU.
What each stage's dry run replaces is in its record entry (`dry_run`); the whole dry run
took 23 s with warm caches and 32 s cold on a 2-core machine (2026-12-05), measured by its
record's `seconds` (benchmarks/README.md has them per stage). Without --dry-run
on a machine with no GPU the environment stage still runs and is recorded, then the check
refuses (exit status 2). A stage that ran nothing fails.

DIR receives at most 8 files, none deeper than DIR/benchmark/: gpu_check.json,
gpu_check.log and the benchmark's JSON and two PNGs. Exit status 0 only when every
stage passed; 2 for a bad argument or no GPU. A new stage is one more `Stage` in `stages()`.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORD, LOG, BENCH_DIR = "gpu_check.json", "gpu_check.log", "benchmark"
MAX_FILES = 8
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck")
STAGES = ("environment", "correctness", "gpu_tests", "registers", "benchmark", "record",
          "sanitizer")


@dataclass
class Stage:
    name: str
    timeout_s: int
    estimate_s: int  # on a GPU: modelled, see the docstring
    dry_run: str     # what a dry run runs instead of the GPU's
    commands: list = field(default_factory=list)  # [(label, argv, timeout_s, env)]
    after: object = None  # fn(stage result) -> extra checks once the commands ran


def _python(*args):
    return [sys.executable, *args]


def stages(args, out):
    """The stages, in the order of STAGES."""
    dry = ["--dry-run"] if args.dry_run else []
    stand_in = "the stand-in (fake CuPy, launches on the host emulator) for CuPy and the GPU"
    env_stage = Stage("environment", 60, 10, "the stand-in's device (sm_90, CUDA 13.0 driver)", [(
        "environment", _python("-m", "benchmarks.gpu_check.environment", *dry,
                               *(["--commit", args.commit] if args.commit else [])), 60, {})])
    correctness = Stage("correctness", 240, 60, f"{stand_in}; one shrunk case per code path, "
                        "a big grid's first output tile", [(
                            "correctness", _python("-m", "benchmarks.gpu_check.correctness", *dry),
                            240, {})])
    gpu_tests = Stage("gpu_tests", 240, 90, f"gpu_tests.DRY_RUN_SAMPLE on {stand_in}", [(
        "pytest -m gpu", _python("-m", "benchmarks.gpu_check.gpu_tests", *dry), 240, {})])
    registers = Stage("registers", 180, 20, "one kernel per template for sm_90; the compiler "
                      "path asked of the stand-in's backend", [(
                          "registers", _python("-m", "benchmarks.gpu_check.registers", *dry),
                          180, {})])
    from .environment import commit, find_sanitizer  # commit: the benchmark record's

    bench = (["--device", "cpu", "--suite", "tiny", "--peers", "none"] if args.dry_run
             else ["--device", "gpu", "--suite", args.bench_suite, "--dtype", args.bench_dtype,
                   *(["--compile"] if args.bench_compile else [])])
    known = {"SEPCONV_GPU_GIT_COMMIT": commit(args.commit)[0] or ""}
    benchmark = Stage("benchmark", 240, 60, "the tiny suite on the CPU, no peers", [(
        "benchmark", _python("-m", "benchmarks", *bench, "--quick", "--out", str(out / BENCH_DIR)),
        240, known)])
    record = Stage("record", 10, 1, "the CPU benchmark's record", [], after=_check_record)
    driver = _python("-m", "benchmarks.gpu_check.sanitize_driver")
    lineinfo = {"SEPCONV_GPU_LINEINFO": "1", "SEPCONV_GPU_DEBUG_SYNC": "1"}
    # first the -lineinfo builds of the driver's kernels, in parallel
    sanitize = [("prebuild -lineinfo", driver + ["--prebuild", *dry], 150, lineinfo)]
    if args.dry_run:  # the driver's harness on the stand-in, without compute-sanitizer
        sanitize += [("sanitizer driver (dry run)", driver + ["--dry-run"], 240, lineinfo)]
    else:
        tool = find_sanitizer() or "compute-sanitizer"
        sanitize += [(t, [tool, "--tool", t, "--error-exitcode", "99", *driver], 200, lineinfo)
                     for t in SANITIZER_TOOLS]
    sanitizer = Stage("sanitizer", sum(c[2] for c in sanitize), 180,
                      f"the driver's VARIETY cases on {stand_in}, without compute-sanitizer; "
                      "-lineinfo builds of one kernel per template", sanitize)
    chosen = [env_stage, correctness, gpu_tests, registers, benchmark, record, sanitizer]
    assert tuple(s.name for s in chosen) == STAGES
    return chosen


def _run(argv, timeout_s, env, log):
    """(exit status or "timeout", output) of one command in its own process group, so a
    timeout ends its children too (compute-sanitizer's target, prebuild's workers). Its
    output goes to `log` line by line as it comes."""
    start = time.monotonic()
    log.write(f"\n===== {' '.join(argv)} (timeout {timeout_s} s)\n")
    log.flush()
    try:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
    except OSError as exc:  # e.g. compute-sanitizer not installed
        log.write(f"cannot start: {exc}\n")
        return f"cannot start: {exc}", ""
    lines = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            log.write(line)
            log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "timeout"
    reader.join(10)  # a grandchild holding the pipe cannot keep us
    log.write(f"===== exit {status} after {time.monotonic() - start:.1f} s\n")
    log.flush()
    return status, "".join(lines)


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
    if record.get("dry_run"):
        result["dry_run"] = stage.dry_run
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


def parse_args(argv=None):
    """The arguments, every one checked before anything is touched: a bad one ends here
    (exit status 2) with DIR and its previous contents as they were."""
    p = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for everything the run writes")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: the stand-in (fake CuPy + host emulator) and the CPU")
    p.add_argument("--commit", default=None, help="the commit tested (else COMMIT file, else git)")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated subset of {', '.join(STAGES)}, run in that order "
                        "(default: all); environment always runs first")
    p.add_argument("--budget", type=int, default=None, metavar="SECONDS",
                   help="end by then: each command's timeout is cut to the time left, and "
                        "what no longer fits is recorded as not run (default: no limit)")
    p.add_argument("--bench-suite", default="mobilenet_v2",
                   help="the benchmark stage's suites (comma-separated; default mobilenet_v2)")
    p.add_argument("--bench-dtype", default="float16",
                   help="the benchmark stage's modes (comma-separated; default float16)")
    p.add_argument("--bench-compile", action="store_true",
                   help="the benchmark times torch.compile too (minutes of compiling)")
    args = p.parse_args(argv)
    if args.budget is not None and args.budget < 1:
        p.error(f"--budget must be a positive number of seconds, got {args.budget}")
    wanted = STAGES if args.stages is None else [s.strip() for s in args.stages.split(",")]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        p.error(f"unknown --stages {unknown}; choose from {list(STAGES)}")
    args.stages = [s for s in STAGES if s in wanted or s == "environment"]
    from .. import peers, suites

    for flag, given, known in (("--bench-suite", args.bench_suite, suites.SUITES),
                               ("--bench-dtype", args.bench_dtype, peers.MODES)):
        unknown = sorted({s.strip() for s in given.split(",")} - set(known))
        if unknown:
            p.error(f"unknown {flag} {unknown}; choose from {list(known)}")
    return args


def _make_out(out):
    """DIR, made if need be; None and one line on stderr when it cannot be."""
    try:
        out = out.resolve()
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:
        what = "is a file, not a folder" if out.exists() and not out.is_dir() else \
            f"cannot be made ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)
        print(f"gpu_check: --out {out} {what}", file=sys.stderr)
        return None
    return out


def main(argv=None):
    args = parse_args(argv)
    out = _make_out(args.out)
    if out is None:
        return 2
    chosen = [s for s in stages(args, out) if s.name in args.stages]
    if "benchmark" in args.stages:
        shutil.rmtree(out / BENCH_DIR, ignore_errors=True)  # one benchmark record per run
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
            if stage.name == "environment" and not args.dry_run:
                from sepconv_gpu.backends import cuda_status

                ok, why = cuda_status()
                if not ok:  # recorded what is here; nothing else can run
                    record["passed"], record["refused"] = False, f"no GPU here: {why}"
                    _write(out, record)
                    print(f"gpu_check: no GPU here ({why}); --dry-run checks the harness "
                          f"without one; the environment is in {out / RECORD}", file=sys.stderr)
                    return 2
    record["passed"] = all(s["verdict"] == "pass" for s in record["stages"].values())
    _write(out, record)
    print(f"gpu_check: {'PASS' if record['passed'] else 'FAIL'} in {record['seconds']} s; "
          f"record {out / RECORD}, log {out / LOG}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
