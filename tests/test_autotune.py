"""Autotuning (sepconv_gpu/backends/cuda/autotune.py) on the CPU: a fake device clock stands in
for the CUDA events, so these tests check the choosing, the cache file and the switch,
never a GPU's times. The plans chosen are run under the host emulator at the end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sepconv_gpu as sg
from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import autotune, simt, tc
from sepconv_gpu.backends.cuda.launch import launch_sequence
from sepconv_gpu.backends.cpu.numpy_backend import reference_separable_conv

ROOT = Path(__file__).resolve().parents[1]


def call(batch=2, size=8, channels=16, filters=32, dtype="float16", activation="relu",
         channels_first=False):
    """launch_sequence's arguments for a `same` 3x3 call on a contiguous input."""
    fmt = "channels_first" if channels_first else "channels_last"
    x_shape = ((batch, channels, size, size) if channels_first
               else (batch, size, size, channels))
    geom = geometry.make_geometry(2, x_shape, (3, 3, channels, 1), (1, 1, channels, filters),
                                  (filters,), (1, 1), "same", fmt, (1, 1))
    strides = (size * size * channels, 1, size * channels, channels)
    if channels_first:
        strides = (size * size * channels, size * size, size, 1)
    return dtype, geom, activations.get(activation), strides, True


class FakeDevice:
    """`run(plan)` notes the plan and returns its output (`output(plan)`, by default the
    same for every plan); `clock(body)` runs body and returns the seconds given for the
    last plan run (`seconds(plan)`)."""

    def __init__(self, seconds, output=lambda plan: np.ones(4)):
        self.seconds, self.output, self.runs, self.timed = seconds, output, [], 0

    def run(self, plan):
        self.runs.append(plan)
        return self.output(plan)

    def clock(self, body):
        body()
        self.timed += 1
        return self.seconds(self.runs[-1])


def never(*_):
    raise AssertionError("timed although nothing should be")


def by_rank(found, order):
    """seconds(plan): `order` lists candidate indices (negative: from the end) fastest
    first, 10 us apart; the candidates it leaves out are slower, in the model's order."""
    order = [i % len(found) for i in order]
    order += [i for i in range(len(found)) if i not in order]
    times = {found[i]: (rank + 1) * 1e-5 for rank, i in enumerate(order)}
    return lambda plan: times[plan]


def candidates_of(args, allow_tf32=False):
    dtype, geom, act, strides, _ = args
    return autotune.candidates(dtype, geom, act.kernel_id, strides, allow_tf32, True,
                               tc.TC_SMEM_LIMIT)


def choose(tuner, device, args, name="GPU A", allow_tf32=False):
    return tuner.choose(name, *args, allow_tf32, run=device.run, clock=device.clock)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test: its own cache directory, the switch from the environment (unset)."""
    monkeypatch.setenv("SEPCONV_GPU_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(autotune.ENV_VAR, raising=False)
    autotune.set_autotune(None)
    yield
    autotune.set_autotune(None)


def test_candidates_are_the_model_s_choice_first_then_the_others_and_simt():
    dtype, geom, act, strides, bias = args = call()
    found = candidates_of(args)
    assert found[0] == tc.tc_plan(dtype, geom, False)   # relu: not linear
    assert all(isinstance(p, tc.TcPlan) for p in found[:-1]) and len(found) >= 3
    assert found[-1] == simt.simt_plan(dtype, geom)
    predicted = [p.predicted_us for p in found[:-1]]
    assert predicted == sorted(predicted)
    assert len(set(found)) == len(found)
    for plan in found:  # each builds its launch sequence: the family and the plan's sizes
        launches, _ = launch_sequence(*args, plan=plan)
        is_tc = isinstance(plan, tc.TcPlan)
        assert launches[0].name.startswith("sepconv_tc<" if is_tc else "sepconv_simt<")
        assert (launches[0].grid, launches[0].shared_bytes) == (plan.grid, plan.shared_bytes)
    # no plan given: the model's choice, as before
    assert launch_sequence(*args) == launch_sequence(*args, plan=found[0])


def test_a_call_only_simt_serves_has_one_candidate_and_is_never_timed(tmp_path):
    tuner = autotune.Tuner()
    for args in (call(dtype="float32"), call(dtype="float64"), call(channels_first=True)):
        [only] = candidates_of(args)
        assert only == simt.simt_plan(args[0], args[1])
        assert tuner.choose("GPU A", *args, run=never, clock=never) == only
        with pytest.raises(ValueError, match="tensor-core"):  # a TC plan cannot serve it
            launch_sequence(*args, plan=candidates_of(call())[0])
    assert not (tmp_path / autotune.FILENAME).exists()


def test_float32_with_tf32_times_the_tensor_core_plans_and_exact_simt():
    found = candidates_of(call(dtype="float32"), allow_tf32=True)
    assert isinstance(found[0], tc.TcPlan)
    assert isinstance(found[-1], simt.KernelPlan)


@pytest.mark.parametrize("fastest", [1, 2, -1])
def test_picks_the_fastest_and_caches_it(tmp_path, fastest):
    args = call()
    found = candidates_of(args)
    order = [fastest]
    device = FakeDevice(by_rank(found, order))
    tuner = autotune.Tuner(warmup=2, repeats=3)
    chosen = choose(tuner, device, args)
    assert chosen == found[fastest]
    # every candidate ran its warm-up, its timed runs and the run its output is checked
    # on, nothing else
    assert len(device.runs) == len(found) * 6 and device.timed == len(found) * 3
    assert {p: device.runs.count(p) for p in found} == {p: 6 for p in found}
    # remembered: no more timing in this process
    assert choose(tuner, FakeDevice(never), args) == chosen
    saved = json.loads((tmp_path / autotune.FILENAME).read_text())
    assert saved["format"] == autotune.FORMAT
    [(key, entry)] = saved["entries"].items()
    assert json.loads(key)["device"] == "GPU A" and json.loads(key)["dtype"] == "float16"
    assert autotune.Tuner().entries() == saved["entries"]   # what a benchmark record keeps
    assert entry["plan"] == autotune.describe(chosen)
    assert entry["measured_us"] == pytest.approx(10.0)
    assert [t["measured_us"] for t in entry["timed"]] == pytest.approx(
        [1e6 * by_rank(found, order)(p) for p in found])
    # a new instance (as a new process would) reads it back without timing
    assert choose(autotune.Tuner(), FakeDevice(never), args) == chosen


def test_timing_takes_the_median():
    args = call()
    found = candidates_of(args)
    samples = {found[0]: iter([9, 1, 1]), found[1]: iter([2, 2, 2])}  # medians 1 and 2

    def seconds(plan):
        return next(samples[plan]) if plan in samples else 5.0

    assert choose(autotune.Tuner(warmup=0, repeats=3), FakeDevice(seconds), args) == found[0]


def test_reads_back_in_a_new_process(tmp_path):
    args = call()
    found = candidates_of(args)
    chosen = choose(autotune.Tuner(), FakeDevice(by_rank(found, [2, 0, 1, 3])), args)
    assert chosen == found[2]
    script = (
        "import json, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_autotune import call, never\n"
        "from sepconv_gpu.backends.cuda import autotune\n"
        "plan = autotune.plan_for('GPU A', *call(), run=never, clock=never)\n"
        "print(json.dumps(autotune.describe(plan)))\n")
    env = {**os.environ, "SEPCONV_GPU_CACHE_DIR": str(tmp_path), autotune.ENV_VAR: "1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == autotune.describe(chosen)


def test_devices_shapes_dtypes_and_configurations_are_keyed_apart(tmp_path):
    cases = [("GPU A", call(), False, [1, 0, 2, 3]),
             ("GPU B", call(), False, [2, 0, 1, 3]),               # another device
             ("GPU A", call(batch=3), False, [0, 1, 2, 3]),        # another shape
             ("GPU A", call(dtype="float32"), True, [-1, 0, 1]),   # another dtype (TF32)
             ("GPU A", call(activation=None), False, [3, 0, 1, 2])]  # another activation
    tuner, chosen = autotune.Tuner(), []
    for name, args, tf32, order in cases:
        found = candidates_of(args, tf32)
        chosen.append(choose(tuner, FakeDevice(by_rank(found, order)), args, name, tf32))
        assert chosen[-1] == found[order[0]]
    assert len(json.loads((tmp_path / autotune.FILENAME).read_text())["entries"]) == len(cases)
    fresh = autotune.Tuner()
    for (name, args, tf32, _), expected in zip(cases, chosen):
        assert choose(fresh, FakeDevice(never), args, name, tf32) == expected


@pytest.mark.parametrize("content", [
    b"{\"format\": 1, \"entries\": {", b"\x00\xff garbage", b"[]", b'{"format": 99, "entries": {}}',
    b'{"format": 1, "entries": []}',
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-100000-deep")])  # RecursionError
def test_a_damaged_cache_file_is_timed_again_and_rewritten(tmp_path, content, caplog):
    (tmp_path / autotune.FILENAME).write_bytes(content)
    args = call()
    found = candidates_of(args)
    device = FakeDevice(by_rank(found, [1, 0, 2, 3]))
    assert choose(autotune.Tuner(), device, args) == found[1] and device.timed
    assert "ignoring the autotune cache" in caplog.text
    saved = json.loads((tmp_path / autotune.FILENAME).read_text())
    assert [e["plan"] for e in saved["entries"].values()] == [autotune.describe(found[1])]


def test_a_stale_entry_is_timed_again_and_other_entries_are_kept(tmp_path):
    args = call()
    found = candidates_of(args)
    key = autotune.entry_key("GPU A", args[0], args[1], "relu", args[3], True, False, True,
                             tc.TC_SMEM_LIMIT)
    entries = {key: {"plan": {"kernel": "tc", "bn": 12345}},   # no longer a candidate
               "another call": {"plan": {"kernel": "simt"}}}
    (tmp_path / autotune.FILENAME).write_text(json.dumps({"format": autotune.FORMAT, "entries": entries}))
    device = FakeDevice(by_rank(found, [2, 0, 1, 3]))
    assert choose(autotune.Tuner(), device, args) == found[2] and device.timed
    saved = json.loads((tmp_path / autotune.FILENAME).read_text())["entries"]
    assert saved["another call"] == entries["another call"]
    assert saved[key]["plan"] == autotune.describe(found[2])


def test_an_unwritable_cache_keeps_the_choice_in_the_process(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    tuner = autotune.Tuner(directory=str(blocker / "sub"))   # cannot be made
    args = call()
    found = candidates_of(args)
    assert choose(tuner, FakeDevice(by_rank(found, [1, 0, 2, 3])), args) == found[1]
    assert "cannot write the autotune cache" in caplog.text
    assert choose(tuner, FakeDevice(never), args) == found[1]


def test_a_plan_that_fails_to_launch_is_not_chosen():
    args = call()
    found = candidates_of(args)
    device = FakeDevice(by_rank(found, [1, 0, 2, 3]))

    def run(plan):
        if plan == found[1]:
            raise RuntimeError("too many resources requested for launch")
        return device.run(plan)

    assert autotune.Tuner().choose("GPU A", *args, run=run, clock=device.clock) == found[0]


@pytest.mark.parametrize("dtype, allow_tf32", [("float16", False), ("float32", True)])
def test_a_fastest_plan_with_a_wrong_output_cannot_win(tmp_path, caplog, dtype, allow_tf32):
    """Every candidate's output is compared with the reference plan's (the model's choice)
    before it may win: the fastest, off by more than the mode's tolerance, is named in the
    log and marked in the file; the next fastest that agrees wins. Within the tolerance (a
    different summation order) a plan still wins."""
    args = call(dtype=dtype)
    found = candidates_of(args, allow_tf32)
    limit = autotune.TOLERANCE["tf32" if allow_tf32 else dtype]
    off = {found[1]: 3 * limit, found[2]: limit / 2}  # relative to max |output| = 2

    def output(plan):
        y = np.array([2.0, -1.0, 0.5, 0.0])
        y[1] += 2 * off.get(plan, 0.0)
        return y

    device = FakeDevice(by_rank(found, [1, 2, 0]), output)
    assert choose(autotune.Tuner(), device, args, allow_tf32=allow_tf32) == found[2]
    assert str(found[1]) in caplog.text and "not a candidate" in caplog.text
    [entry] = json.loads((tmp_path / autotune.FILENAME).read_text())["entries"].values()
    assert entry["reference"] == autotune.describe(found[0])
    assert [t["agrees"] for t in entry["timed"]] == [p != found[1] for p in found]
    assert entry["timed"][1]["difference"] == pytest.approx(3 * limit)


def test_off_by_default_times_nothing_and_reads_no_file(tmp_path):
    (tmp_path / autotune.FILENAME).write_bytes(b"not read")
    assert not autotune.get_autotune()
    args = call()
    assert autotune.plan_for("GPU A", *args, run=never, clock=never) is None
    assert (tmp_path / autotune.FILENAME).read_bytes() == b"not read"


def test_switch_environment_and_setter(monkeypatch):
    for value, on in (("1", True), ("0", False), ("", False), ("yes", True), ("false", False),
                      ("Off", False), ("NO", False), ("False", False), (" on ", True), ("TRUE", True)):
        monkeypatch.setenv(autotune.ENV_VAR, value)
        assert sg.get_autotune() is on, value
    for value in ("2", "enabled", "y"):
        monkeypatch.setenv(autotune.ENV_VAR, value)
        with pytest.raises(ValueError, match=f"environment variable {autotune.ENV_VAR} must be "
                                             f"one of 1/0, true/false.*received '{value}'"):
            sg.get_autotune()
    monkeypatch.setenv(autotune.ENV_VAR, "0")
    sg.set_autotune(True)
    assert sg.get_autotune() is True
    sg.set_autotune(False)
    monkeypatch.setenv(autotune.ENV_VAR, "1")
    assert sg.get_autotune() is False
    with pytest.raises(TypeError, match="set_autotune"):
        sg.set_autotune("on")
    assert sg.get_autotune() is False   # a failed call changes nothing
    sg.set_autotune(None)
    assert sg.get_autotune() is True


def test_plan_for_with_autotuning_on_chooses(tmp_path):
    args = call()
    found = candidates_of(args)
    sg.set_autotune(True)
    device = FakeDevice(by_rank(found, [-1]))
    # the module's tuner may hold choices of other tests: a device name of this test only
    plan = autotune.plan_for("GPU plan_for", *args, run=device.run, clock=device.clock)
    assert plan == found[-1] and device.timed


# --- the chosen plans compute the convolution (host emulator) -----------------------------

try:
    import _cuda_host_emulator as emu
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu

@pytest.mark.parametrize("mode", ["float16", "tf32"])
def test_tensor_core_every_candidate_computes_the_reference(emulator_for, mode):
    """Whichever candidate a device picks, its launch sequence (`plan=`) computes the
    convolution: each against the float64 reference within 2u (A + |y|), the fp16 / TF32
    operand bound of tests/test_tensor_core_kernel.py (emulated, not run on a GPU)."""
    dtype = "float16" if mode == "float16" else "float32"
    args = call(batch=2, size=9, channels=40, filters=300, dtype=dtype)  # two filter blocks
    found = candidates_of(args, allow_tf32=mode == "tf32")
    names = {launch_sequence(*args, mode == "tf32", plan=p)[0][0].name for p in found}
    emulator = emulator_for(sorted(names) + [tc.tc_reduce_name(dtype)])
    rng = np.random.default_rng(5)
    geom, act = args[1], args[2]
    x = rng.standard_normal(geom.input_shape).astype(dtype)
    dk = (rng.standard_normal((3, 3, 40, 1)) / 3).astype(dtype)
    pk = (rng.standard_normal((1, 1, 40, 300)) / 6).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    ref = reference_separable_conv(x, dk, pk, b, geom, act)
    f64 = lambda a: np.abs(a.astype(np.float64))
    magnitude = np.max(reference_separable_conv(f64(x), f64(dk), f64(pk), None, geom,
                                                activations.get(None)))
    for plan in found:
        y, launches = emu.separable_conv(emulator, x, dk, pk, b, geom, act,
                                         allow_tf32=mode == "tf32", plan=plan)
        excess = np.abs(y.astype(np.float64) - ref) - 2 * 2.0 ** -11 * (magnitude + np.abs(ref))
        assert np.all(excess <= 1e-6), (float(np.max(excess)), plan)


# --- on a GPU: the backend times, keeps and reuses (skipped without one) -----------------

@pytest.mark.gpu
def test_gpu_autotuned_calls_agree_and_the_choice_is_cached(tmp_path):
    import cupy

    from _cases import assert_matches, random_case

    rng = np.random.default_rng(3)
    x, dk, pk, b = random_case(rng, 2, (4, 19, 19, 64), 3, 1, 300, "float16")
    ref = reference_separable_conv(x, dk, pk, b, call(4, 19, 64, 300)[1], activations.get("relu"))
    xd = cupy.asarray(x)

    def run():
        return cupy.asnumpy(sg.ops.separable_conv2d(xd, dk, pk, b, padding="same",
                                                    activation="relu", backend="cuda"))

    sg.set_autotune(True)
    tuned = run()          # times the candidates
    again = run()          # the remembered choice
    sg.set_autotune(False)
    for y in (tuned, again, run()):
        assert_matches(y, ref, "float16")
    [entry] = json.loads((tmp_path / autotune.FILENAME).read_text())["entries"].values()
    assert len(entry["timed"]) >= 2 and entry["timed"][-1]["plan"]["kernel"] == "simt"
    assert all(0 < t["measured_us"] < 1e6 for t in entry["timed"])
    assert entry["measured_us"] == min(t["measured_us"] for t in entry["timed"])


def test_candidates_are_checked_for_the_activation_the_epilogue_runs(monkeypatch):
    """The kernel choice behind the candidates is made on the plans of the activation the
    launch runs (gelu in the epilogue: not the linear plans, which may differ in shared
    memory and so in what fits), as launch_sequence makes it; every plan asked for, the
    choice's and the candidates', is for that activation."""
    geom = geometry.make_geometry(2, (8, 7, 7, 960), (3, 3, 960, 1), (1, 1, 960, 320), (320,),
                                  (1, 1), "same", "channels_last", (1, 1))
    asked = []
    real_plan, real_candidates = tc.tc_plan, tc.tc_candidates
    monkeypatch.setattr(tc, "tc_plan", lambda d, g, linear=True, *a, **k: asked.append(linear)
                        or real_plan(d, g, linear, *a, **k))
    monkeypatch.setattr(tc, "tc_candidates", lambda d, g, linear=True, *a, **k: asked.append(linear)
                        or real_candidates(d, g, linear, *a, **k))
    strides = (7 * 7 * 960, 1, 7 * 960, 960)
    found = autotune.candidates("float16", geom, "gelu", strides, False, True, tc.TC_SMEM_LIMIT)
    assert len(found) > 1 and asked and not any(asked)
    asked.clear()
    autotune.candidates("float16", geom, "linear", strides, False, True, tc.TC_SMEM_LIMIT)
    assert asked and all(asked)


def test_an_op_call_is_tuned_with_its_weights_prepared_once(monkeypatch, tmp_path):
    """Through the CUDA backend (the fake CuPy: launches recorded, the clock given): an op
    call without a weights cache has its candidates timed on weights prepared once per
    layout, as a layer's call runs them, not once per candidate run; the call itself
    then prepares them as an op call does. One key, the same kernels timed."""
    from benchmarks import fake_cupy

    backend, cupy = fake_cupy.load_backend()
    prepared = []
    real = backend.prepare_weights
    monkeypatch.setattr(backend, "prepare_weights",
                        lambda xp, layout, *a: prepared.append(layout) or real(xp, layout, *a))
    monkeypatch.setattr(backend, "_event_seconds", lambda body: (body(), 1e-5)[1])
    monkeypatch.setattr(backend, "_device_name", lambda device_id: "GPU fake")
    dtype, geom, act, strides, bias = args = call()
    found = candidates_of(args)
    layouts = {launch_sequence(*args, plan=p)[0][0].weights for p in found}
    assert len(found) >= 3 and len(layouts) == 2  # tensor-core and SIMT weight layouts
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal(geom.input_shape).astype(np.float16))
    dk, pk = (rng.standard_normal(s).astype(np.float32) for s in ((3, 3, 16, 1), (1, 1, 16, 32)))
    sg.set_autotune(True)
    sg.ops.separable_conv2d(x, dk, pk, np.zeros(32, np.float32), padding="same",
                            activation="relu", backend=backend.CupyOps())
    runs = len(found) * (autotune.WARMUP + autotune.REPEATS + 1)
    assert len([c for c in cupy.calls if c[0] == "launch"]) >= runs
    assert sorted(prepared[:-1]) == sorted(layouts) and prepared[-1] in layouts
