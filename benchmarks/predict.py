"""`python -m benchmarks --predict`: the cost model's view of every suite layer, no GPU.

Per layer at batch 32, in float16 and in TF32 (float32 with allow_tf32): the plan the
planner chooses (the cost model's pick, as a call without autotuning launches it), its
predicted microseconds (cost_model.py, H100 constants: a model, not a measurement), the
PyTorch-eager estimate (torch_eager_estimates.py) and the speed-up over it, the layer's
floor in the model and predicted / floor. The floor is max(compulsory bytes / the model's
DRAM rate, useful pointwise FLOPs / its tensor rate) + one launch: compulsory bytes are
the input and output once and the weights (`Layer.bytes`), useful FLOPs 2 C F per output
position (the tensor-core work; the depthwise runs beside it on the SIMT pipes).
"""
from __future__ import annotations

import math

from sepconv_gpu import activations
from sepconv_gpu.backends.cuda import autotune, cost_model, tc
from sepconv_gpu.backends.cuda.launch import launch_sequence

from .torch_eager_estimates import BATCH, TORCH_EAGER_F16_US

MODES = ("float16", "tf32")
DEVICE = cost_model.DEFAULT_DEVICE


def pointwise_flops(layer, batch):
    geom = layer.geometry(batch)
    return 2.0 * geom.output_positions * geom.intermediate_channels * geom.filters


def floor_us(layer, batch, mode, device=DEVICE):
    """The layer's floor in the model (see the module's docstring)."""
    itemsize, rate = (2, device.mma_f16_flops) if mode == "float16" else (4, device.mma_tf32_flops)
    return 1e6 * max(layer.bytes(batch, itemsize) / device.hbm_bytes_per_s,
                     pointwise_flops(layer, batch) / rate) + device.launch_us


def torch_eager_us(layer, mode):
    """The estimate of torch_eager_estimates.py; for TF32 the fp16 one times the ratio of
    the layer's TF32 floor to its fp16 floor in the model, launches left out (the bytes
    double and the tensor rate halves: 2.0 with today's constants)."""
    f16 = TORCH_EAGER_F16_US[layer.key]
    if mode == "float16":
        return f16
    launch = DEVICE.launch_us
    tf32_floor, f16_floor = (floor_us(layer, BATCH, m) - launch for m in ("tf32", "float16"))
    return f16 * tf32_floor / f16_floor


def contiguous_strides(shape):
    """Element strides (n, c, h, w) of a contiguous channels_last input of this shape."""
    n, *spatial, c = shape
    spatial = [1] * (2 - len(spatial)) + spatial
    return (spatial[0] * spatial[1] * c, 1, spatial[1] * c if len(shape) == 4 else 0, c)


def plan_label(plan):
    """A plan's short form: kernel family and tile sizes."""
    if isinstance(plan, tc.TcPlan):
        split = f" K{plan.k_splits}" if plan.k_splits > 1 else ""
        return (f"tc BN{plan.bn} BM{plan.bm} FB{plan.filter_blocks} S{plan.stages} "
                f"MT{plan.m_tiles}{split}")
    return f"simt BF{plan.bf} BP{plan.bp} FB{plan.filter_blocks}"


def row(layer, mode, batch=BATCH):
    """One layer in one mode: the model's plan and its numbers."""
    dtype = "float16" if mode == "float16" else "float32"
    geom = layer.geometry(batch)
    act = activations.get(layer.activation)
    strides = contiguous_strides(layer.input_shape(batch))
    allow_tf32 = mode == "tf32"
    # the first candidate is the cost model's choice: what an untuned call launches
    plan = autotune.candidates(dtype, geom, act.kernel_id, strides, allow_tf32, True,
                               tc.TC_SMEM_LIMIT)[0]
    launches, _ = launch_sequence(dtype, geom, act, strides, layer.use_bias,
                                  allow_tf32, plan=plan)
    predicted = sum(launch.predicted_us for launch in launches)
    torch = torch_eager_us(layer, mode)
    floor = floor_us(layer, batch, mode)
    return {"layer": layer.key, "mode": mode, "plan": plan_label(plan), "predicted_us": predicted,
            "torch_us": torch, "speedup": torch / predicted, "floor_us": floor,
            "of_floor": predicted / floor}


def rows(layers):
    return [row(layer, mode) for mode in MODES for layer in layers]


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary_line(table_rows):
    """`predict: fp16 geomean G min M (LAYER) of-floor geomean F worst W (LAYER); tf32
    geomean T`: G, M the speed-up over the torch-eager estimates, F, W predicted / floor."""
    f16 = [r for r in table_rows if r["mode"] == "float16"]
    tf32 = [r for r in table_rows if r["mode"] == "tf32"]
    slowest = min(f16, key=lambda r: r["speedup"])
    worst = max(f16, key=lambda r: r["of_floor"])
    return (f"predict: fp16 geomean {geomean(r['speedup'] for r in f16):.2f} "
            f"min {slowest['speedup']:.2f} ({slowest['layer']}) "
            f"of-floor geomean {geomean(r['of_floor'] for r in f16):.2f} "
            f"worst {worst['of_floor']:.2f} ({worst['layer']}); "
            f"tf32 geomean {geomean(r['speedup'] for r in tf32):.2f}")


COLUMNS = ("layer", "plan", "model us", "torch us", "speedup", "floor us", "model/floor")


def table(table_rows):
    width = max(len(r["layer"]) for r in table_rows)
    plan_width = max(len(r["plan"]) for r in table_rows)
    lines = [f"cost model ({DEVICE.name}), batch {BATCH}: predictions, not measurements; "
             f"torch = PyTorch-eager estimates (benchmarks/torch_eager_estimates.py)"]
    for mode in MODES:
        lines += ["", f"{mode}:",
                  f"{COLUMNS[0]:<{width}}  {COLUMNS[1]:<{plan_width}}  "
                  + "  ".join(f"{c:>11}" for c in COLUMNS[2:])]
        for r in (r for r in table_rows if r["mode"] == mode):
            numbers = (r["predicted_us"], r["torch_us"], r["speedup"], r["floor_us"], r["of_floor"])
            lines.append(f"{r['layer']:<{width}}  {r['plan']:<{plan_width}}  "
                         + "  ".join(f"{v:>11.2f}" for v in numbers))
    return "\n".join(lines + ["", summary_line(table_rows)])


def main(layers):
    missing = [layer.key for layer in layers if layer.key not in TORCH_EAGER_F16_US]
    if missing:
        raise SystemExit(f"--predict: no torch-eager estimate for {missing} "
                         f"(benchmarks/torch_eager_estimates.py covers the default suites)")
    table_rows = rows(layers)
    print(table(table_rows))
    return table_rows
