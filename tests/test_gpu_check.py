"""benchmarks/gpu_check.sh without a GPU: the dry run runs every stage through the device
run's own code on the stand-in (the fake CuPy whose launches the host emulator executes)
and records it, so a harness bug fails here, not in the few minutes a GPU is at hand;
without --dry-run it records the environment, then refuses. The dry run runs once (a
module fixture): 23 s on two cores with warm caches, 32 s cold (2026-12-05)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sepconv_gpu.backends import cuda_available
from sepconv_gpu.backends.cuda import kernel_cache

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# by evidence value: the GPU tests right after correctness, the sanitizer last
STAGES = ["environment", "correctness", "gpu_tests", "registers", "benchmark", "record",
          "sanitizer"]

# slow: collected first, so that under pytest-xdist it starts at once (tests/conftest.py)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="the host emulator and the NVRTC wheels are Linux-only")]


def _check(*args, cwd):
    """The script as a new user runs it: no PYTHONPATH, from another folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("elsewhere")
    run = _check("--dry-run", "--out", "out", "--commit", "abc123", cwd=cwd)
    return run, cwd / "out"


def test_every_stage_ran_and_passed(dry_run):
    run, out = dry_run
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["dry_run"] is True and record["passed"] is True
    assert list(record["stages"]) == STAGES
    for name, stage in record["stages"].items():
        assert stage["verdict"] == "pass" and stage["ran"] > 0, (name, stage)
        assert stage["seconds"] <= stage["timeout_s"] and stage["estimate_s"] > 0
        assert all(c["verdict"] == "pass" and c["argv"] for c in stage["commands"]), name
    assert record["estimate_s"] <= 8 * 60  # the whole device run, as estimated
    assert all(stage["dry_run"] for stage in record["stages"].values())  # what stood in
    # the GPU tests ran (a sample, on the stand-in), not only collected
    tests = record["stages"]["gpu_tests"]["commands"][0]["result"]
    assert tests["stand_in"] and tests["tests_passed"] > 0 and not tests["tests_failed"]


def test_the_record_says_what_ran(dry_run):
    _, out = dry_run
    record = json.loads((out / "gpu_check.json").read_text())
    env = record["environment"]
    assert env["commit"] == "abc123" and env["commit_from"] == "--commit"
    assert len(env["kernels_sha256"]) == 64
    assert env["nvrtc"]["version"] and "is_pinned_minor" in env["nvrtc"]
    correctness = record["stages"]["correctness"]["commands"][0]["result"]
    coverage = correctness["coverage"]
    # both kernel families, every warp tile MT, a channel split with its reduce, every dtype
    assert coverage["tc_m_tiles"] == [1, 2, 4] and max(coverage["tc_k_splits"]) > 1
    assert coverage["modes"] == ["bfloat16", "float16", "float32", "float64", "tf32"]
    assert any(name.startswith("sepconv_tc<__nv_bfloat16") for name in coverage["kernels"])
    templates = {name.split("<")[0] for name in kernel_cache.all_name_expressions()}
    assert {name.split("<")[0] for name in coverage["kernels"]} == templates
    registers = record["stages"]["registers"]["commands"][0]["result"]
    assert registers["checked"] == registers["kernels"] > 0 and not registers["framed"]
    assert registers["backend_compiler"]["path"] == env["compiler"]["path"] == "nvrtc"
    predicted = record["stages"]["record"]["detail"]["predicted_vs_measured"]
    assert predicted and all(p["predicted_us"] > 0 for p in predicted)


def test_everything_lands_in_out_within_eight_files_one_level_deep(dry_run):
    _, out = dry_run
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert {"gpu_check.json", "gpu_check.log"} <= {p.as_posix() for p in files}
    assert len(files) <= 8 and all(len(p.parts) <= 2 for p in files), files
    assert any(p.parts[0] == "benchmark" and p.suffix == ".json" for p in files)


@pytest.mark.skipif(cuda_available(), reason="a GPU answers here")
def test_without_a_gpu_and_without_dry_run_it_records_the_environment_then_refuses(tmp_path):
    run = _check("--out", str(tmp_path / "out"), cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0] and "--dry-run" in lines[0]
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert record["passed"] is False and "no GPU" in record["refused"]
    assert list(record["stages"]) == ["environment"]
    env = record["environment"]
    assert env["dry_run"] is False and "device" in env["failed"]
    assert env["nvrtc"]["version"] and len(env["kernels_sha256"]) == 64
    if "cupy" in env["device"]:  # no CuPy here: the record names its wheel
        assert any("cupy-cuda13x" in line for line in env["missing"])


def test_argument_errors_touch_nothing(tmp_path):
    """A bad --stages, --bench-suite or --bench-dtype (the benchmark stage's, which comes
    minutes later on a GPU) leaves the previous run's benchmark record and makes no new
    DIR; a --out that is a file or cannot be made is one line on stderr; all exit 2."""
    old = tmp_path / "old"
    (old / "benchmark").mkdir(parents=True)
    (old / "benchmark" / "previous.json").write_text("{}")
    for out in (old, tmp_path / "new"):
        for bad in ("--stages", "--bench-suite", "--bench-dtype"):
            run = _check("--dry-run", "--out", str(out), bad, "bogus", cwd=tmp_path)
            assert run.returncode == 2 and f"unknown {bad} ['bogus']" in run.stderr, run.stderr
    assert (old / "benchmark" / "previous.json").exists() and not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    for out, said in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "cannot be made")):
        run = _check("--dry-run", "--out", str(out), cwd=tmp_path)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and said in lines[0], run.stderr


def test_a_stage_that_runs_nothing_fails(tmp_path):
    """The record stage without a benchmark record (its stage skipped) has nothing to check."""
    run = _check("--dry-run", "--out", str(tmp_path / "out"), "--stages", "record", cwd=tmp_path)
    assert run.returncode == 1
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert record["stages"]["record"]["verdict"] == "fail" and record["passed"] is False


def test_the_correctness_check_fails_on_a_wrong_number_or_another_launch():
    """gpu_correctness.check with a stand-in device: the reference itself passes; one
    output off by 1e-3 (50x the float32 tolerance), or a launch the planner did not pick,
    fails."""
    import numpy as np

    # through pytest's pythonpath (pyproject)
    from benchmarks.gpu_check import cases as gpu_cases
    from benchmarks.gpu_check import correctness as gpu_correctness
    from sepconv_gpu import ops

    case = gpu_cases.Case("stand-in", "float32", 2, 9, 8, 16, activation="relu")
    planned = [launch.name for launch in case.launches()]

    def runner(error=0.0, launched=planned):
        def run(case, x, dk, pk, b, limits):
            y = ops.reference_separable_conv(case.rank, x, dk, pk, b, **case.call_args())
            y.flat[-1] += error
            return y.astype(np.float32), list(launched)
        run.smem_limit = None
        return run

    rng = np.random.default_rng(0)
    assert gpu_correctness.check(case, runner(), rng)["ok"]
    assert not gpu_correctness.check(case, runner(error=1e-3), rng)["ok"]
    assert not gpu_correctness.check(case, runner(launched=planned + planned), rng)["ok"]


def test_an_installed_backend_is_the_one_the_device_run_imports():
    """`fake_cupy.installed(fake, backend)` makes `backend` the one `Backend.on_gpu` gets
    (`from sepconv_gpu.backends.cuda import cuda_backend`), even after another backend
    was loaded since (each load leaves itself as backends.cuda's attribute), and puts the
    attribute back after the block."""
    import sepconv_gpu.backends.cuda as package
    from benchmarks import fake_cupy

    before = package.__dict__.get("cuda_backend")
    first, first_fake = fake_cupy.load_backend()
    second, _ = fake_cupy.load_backend()
    assert package.__dict__.get("cuda_backend") is before
    with fake_cupy.installed(first_fake, first):
        from sepconv_gpu.backends.cuda import cuda_backend
    assert cuda_backend is first and cuda_backend is not second
    assert package.__dict__.get("cuda_backend") is before


@pytest.fixture
def gpu_is_the_stand_in(monkeypatch, emulator_for, few):
    """`import cupy` and `sepconv_gpu.backends.cuda.cuda_backend` give the stand-in (the fake
    CuPy whose launches run on the host emulator, and the backend bound to it): the device
    run's own code (`Backend.on_gpu`, the sanitizer driver's GPU path) runs on the CPU."""
    import _cuda_host_emulator as host

    from benchmarks.gpu_check import cases as gpu_cases

    with host.installed(emulator_for(gpu_cases.kernel_names(few))) as (backend, fake):
        monkeypatch.setattr(fake.cuda, "set_allocator", lambda allocator=None: None, raising=False)
        yield backend, fake


@pytest.fixture
def few(monkeypatch):
    """Three of the sanitizer driver's cases, the cheapest to emulate whole (a device run
    samples nothing) of each kind: a SIMT launch, a tensor-core launch, and a launch
    sequence (a SIMT convolution, then the softmax kernel). The tests that use them share
    one host build of their kernels. The driver's settings, which its import sets, are
    kept to the test."""
    monkeypatch.setenv("SEPCONV_GPU_LINEINFO", "1")
    monkeypatch.setenv("SEPCONV_GPU_DEBUG_SYNC", "1")
    from benchmarks.gpu_check import cases as gpu_cases
    from benchmarks.gpu_check import sanitize_driver

    by_cost = sorted(sanitize_driver.VARIETY, key=gpu_cases._work)
    kinds = (lambda c: [one.kind for one in c.launches()] == ["simt"],
             lambda c: [one.kind for one in c.launches()] == ["tc"],
             lambda c: len(c.launches()) > 1)
    return tuple(next(case for case in by_cost if kind(case)) for kind in kinds)


def test_the_device_runs_runners_go_through_the_backend_on_the_stand_in(
        gpu_is_the_stand_in, few, monkeypatch, capsys):
    """correctness and sanitize_driver as on a GPU (no --dry-run: `Backend.on_gpu`, the
    sanitizer driver's allocator and settings), with CuPy and the backend being the
    stand-in: every case passes, launched through `cuda_backend._launch` (the fake recorded
    each launch) as the planner planned."""
    from benchmarks.gpu_check import cases as gpu_cases
    from benchmarks.gpu_check import correctness, sanitize_driver

    backend, fake = gpu_is_the_stand_in
    monkeypatch.setattr(gpu_cases, "check_cases", lambda smem_limit=None: few)
    monkeypatch.setattr(sanitize_driver, "cases", lambda dry_run=False: few)
    for main in (correctness.main, sanitize_driver.main):
        del fake.calls[:]
        assert main([]) == 0, capsys.readouterr().out
        result = json.loads(capsys.readouterr().out.split("RESULT ")[-1])
        assert result["passed"] and result["ran"] == 3
        launched = [c[1] for c in fake.calls if c[0] == "launch"]
        assert launched == [one.name for case in few for one in case.launches()]


def test_a_fault_planted_in_the_backends_launch_fails_the_dry_run_correctness(
        few, monkeypatch, capsys):
    """`raise RuntimeError(...)` as the first statement of `cuda_backend._launch` (in the
    stand-in's backend, as the dry run loads it): the dry run's correctness stage fails on
    every case, naming the fault; without it the same cases pass."""
    from benchmarks import fake_cupy
    from benchmarks.gpu_check import cases as gpu_cases
    from benchmarks.gpu_check import correctness

    monkeypatch.setattr(gpu_cases, "dry_run_cases", lambda smem_limit=None: few)
    assert correctness.main(["--dry-run"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    load_backend = fake_cupy.load_backend

    def planted(*args, **kwargs):
        backend, fake = load_backend(*args, **kwargs)

        def _launch(launch, arrays, fn=None):
            raise RuntimeError("planted in cuda_backend._launch")

        backend._launch = _launch
        return backend, fake

    monkeypatch.setattr(fake_cupy, "load_backend", planted)
    assert correctness.main(["--dry-run"]) == 1
    out = capsys.readouterr().out
    assert out.count("RuntimeError: planted in cuda_backend._launch") == len(few), out
    assert json.loads(out.split("RESULT ")[-1])["passed"] is False


def test_registers_fail_where_the_backend_would_compile_through_cupy(monkeypatch, capsys):
    """A CUDA 12.4 driver under the NVRTC 13 wheel: the backend compiles through CuPy
    (environment.compiler says so, and why), so the registers stage fails even with
    every kernel it checked clean: the backend would not load them."""
    from benchmarks import fake_cupy
    from benchmarks.gpu_check import environment, registers

    backend, fake = fake_cupy.load_backend()
    fake.cuda.runtime.driverGetVersion = lambda: 12040
    monkeypatch.setattr(fake_cupy, "load_backend", lambda *args, **kwargs: (backend, fake))
    answer = environment.compiler(dry_run=True)
    assert answer["path"] == "cupy" and "newer than the driver's CUDA 12.4" in answer["why"]
    clean = {"arch": 90, "kernels": 1, "compiled": 0, "from_cache": 1, "checked": 1,
             "framed": {}, "logs": {}, "ptx_only": [], "registers_max": 40}
    monkeypatch.setattr(registers, "check", lambda names, arch, jobs=None: dict(clean))
    monkeypatch.setattr(registers.gpu_cases, "dry_run_cases", lambda smem_limit=None: ())
    assert registers.main(["--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "FAIL the backend does not load these binaries: it compiles with cupy" in out
    monkeypatch.setattr(registers, "compiler", lambda dry_run: {"path": "nvrtc", "arch": 90})
    assert registers.main(["--dry-run"]) == 0


def test_a_commands_output_reaches_the_log_while_it_runs(tmp_path):
    """A stage killed from outside keeps what it said: each line is in the log as soon as
    the command prints it, not when it ends (here: ended by its 2 s timeout)."""
    import threading
    import time

    from benchmarks.gpu_check import __main__ as check

    path = tmp_path / "gpu_check.log"
    command = [sys.executable, "-c", "print('early', flush=True); import time; time.sleep(30)"]
    with open(path, "w") as log:
        worker = threading.Thread(target=check._run, args=(command, 2, {}, log))
        worker.start()
        deadline = time.monotonic() + 10
        while "early" not in path.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "early" in path.read_text() and worker.is_alive()
        worker.join()
    assert "===== exit timeout after" in path.read_text().splitlines()[-1]


def test_the_dry_run_cases_reach_every_kernel_and_plan_shape_of_the_full_check():
    """The shrunk dry-run cases cover what check_cases() covers (every kernel, every warp
    tile MT, band / slab / resident depthwise / split flags per mode), on small grids."""
    from benchmarks.gpu_check import cases as gpu_cases

    full, dry = gpu_cases.check_cases(), gpu_cases.dry_run_cases()
    assert len(dry) < len(full) / 2
    assert set().union(*map(gpu_cases._features, dry)) == set().union(*map(gpu_cases._features, full))
    assert gpu_cases.coverage(dry)["kernels"] == gpu_cases.coverage(full)["kernels"]
    assert gpu_cases.coverage(dry)["tc_m_tiles"] == gpu_cases.coverage(full)["tc_m_tiles"]
    # a launch sequence runs whole in a dry run (no sampling): it must be small
    assert all(gpu_cases._work(c) <= 1 << 20 for c in dry if len(c.launches()) > 1)


def test_a_spent_budget_is_recorded_as_not_run(tmp_path):
    run = _check("--dry-run", "--out", str(tmp_path / "out"), "--stages", "environment,registers",
                 "--budget", "1", cwd=tmp_path)
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert run.returncode == 1 and record["passed"] is False
    commands = [c for s in record["stages"].values() for c in s["commands"]]
    assert any(c["exit"] == "not run: --budget spent" for c in commands), commands
