"""The main job: an Xception-style stack of separable layers on the default backend.

Every layer's output is checked against the float64 NumPy reference on the same input;
the run fails (exit 1) if any layer is off by more than the dtype's tolerance. First, an
Xception block (SeparableConv2D -> BatchNormalization -> ReLU) runs as three passes and
folded into one call (`sg.fold_batch_norm`), both checked against the three passes in float64.

    python -m sepconv_gpu [--backend auto|numpy|cuda] [--batch N] [--size S] [--dtype ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import sepconv_gpu as sg
from sepconv_gpu._progress import Progress
from sepconv_gpu.geometry import check_host_memory

# (filters, strides, activation, use_bias): Xception entry/middle flow at reduced width,
# plus a MobileNet-style stride-2 layer; each layer feeds the next.
STACK_2D = [
    (64, 1, "relu", True),
    (128, 1, "relu", False),
    (128, 2, "relu6", True),
    (256, 1, "relu", False),
    (256, 1, "relu", False),
    (256, 1, "swish", True),
]
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "float64": 1e-10}
_CUDA_HINT = ("The cuda backend needs an NVIDIA GPU with its driver and CuPy: "
              "pip install 'sepconv_gpu[cuda13]' (CUDA 13 driver) or 'sepconv_gpu[cuda12]' (CUDA 12); "
              "--backend numpy runs anywhere.")


def _sync(backend):
    if backend == "cuda":
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def _time_call(layer, x, repeats, backend=None):
    """(y, median seconds of `repeats` calls, seconds of the first call: building, and
    compiling kernels or loading them from the disk cache, GPU or CPU)."""
    backend = backend or layer.backend
    t0 = time.perf_counter()
    layer(x)
    _sync(backend)
    first = time.perf_counter() - t0
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = layer(x)
        _sync(backend)
        samples.append(time.perf_counter() - t0)
    return y, statistics.median(samples), first


def _rel_error(y, reference):
    y = np.asarray(sg.backends.get_ops("numpy").take(y)[0], dtype=np.float64)
    # relative to the output's own scale, so that small activations are not flattered
    return float(np.abs(y - reference).max() / max(np.abs(reference).max(), np.finfo(np.float32).tiny))


def folded_block_rows(args, x, rng):
    """Xception's SeparableConv2D -> BatchNormalization -> ReLU: three passes, then folded."""
    conv = sg.SeparableConv2D(64, 3, padding="same", use_bias=False, name="block_bn", dtype=args.dtype,
                              backend=args.backend)
    conv.build(x.shape)
    n = conv.filters
    bn = {"gamma": rng.uniform(0.5, 1.5, n), "beta": rng.normal(0, 0.5, n), "moving_mean": rng.normal(0, 0.5, n),
          "moving_variance": rng.uniform(0.2, 2.0, n), "epsilon": 1e-3}
    folded = sg.fold_batch_norm(conv, bn, activation="relu")
    scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + bn["epsilon"])
    z = sg.ops.reference_separable_conv(2, x, *conv.get_weights(), None, padding="same")
    reference = np.maximum((z - bn["moving_mean"]) * scale + bn["beta"], 0)  # three passes in float64
    on_backend = sg.backends.get_ops(conv.backend).asarray
    mean, scale, beta = (on_backend(v, dtype=conv.compute_dtype) for v in (bn["moving_mean"], scale, bn["beta"]))

    def three_passes(inputs):
        return sg.activations.relu((conv(inputs) - mean) * scale + beta)

    rows = []
    for name, call in (("block_bn_3_passes", three_passes), ("block_bn_folded", folded)):
        y, seconds, first = _time_call(call, x, args.repeats, backend=conv.backend)
        rows.append((name, tuple(x.shape), tuple(y.shape), seconds, first, _rel_error(y, reference),
                     conv.backend))
    return rows


def build_stack(args):
    layers, channels = [], args.channels
    for i, (filters, stride, act, bias) in enumerate(STACK_2D):
        layers.append((sg.SeparableConv2D(filters, 3, strides=stride, padding="same", activation=act,
                                          use_bias=bias, name=f"block{i + 1}_sepconv", dtype=args.dtype,
                                          backend=args.backend, bias_initializer="random_normal"),
                       channels))
        channels = filters
    conformer = sg.SeparableConv1D(channels, 31, padding="same", activation="swish", dtype=args.dtype,
                                   name="conformer_sepconv1d", backend=args.backend)
    return layers, conformer


def _peak_bytes(args):
    """About the most host memory the run holds at once (bounded above): four float64
    arrays (the references' input, depthwise result and output, and the layer's output)
    as wide as the widest layer, at the input's size."""
    widest = max(args.channels, *(filters for filters, *_ in STACK_2D))
    return 4 * 8 * args.batch * args.size * args.size * widest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sepconv_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=None, choices=sg.backends.BACKEND_NAMES,
                        help="backend to run on (default: the backend rule, 'auto' = CUDA if a GPU answers)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--size", type=int, default=56, help="input height = width (default 56)")
    parser.add_argument("--channels", type=int, default=32, help="input channels (default 32)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "float64"))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per layer (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Everything is checked before any work; a bad value is one line and exit status 2,
    # as argparse says a bad argument (without its usage lines).
    def refuse(message):
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(message).split())}\n")

    for name in ("batch", "size", "channels", "repeats"):
        if getattr(args, name) <= 0:
            refuse(f"--{name} must be positive; received {getattr(args, name)}")
    if args.seed < 0:
        refuse(f"--seed must be non-negative; received {args.seed}")
    try:
        sg.backends.requested_backend(args.backend)  # SEPCONV_GPU_BACKEND's value
        check_host_memory(_peak_bytes(args), f"--batch {args.batch} --size {args.size}")
    except ValueError as exc:
        refuse(exc)

    rng = np.random.default_rng(args.seed)
    try:
        layers, conformer = build_stack(args)
    except sg.BackendUnavailableError as exc:
        refuse(f"{exc} {_CUDA_HINT}")
    backend = layers[0][0].backend
    x = rng.standard_normal((args.batch, args.size, args.size, args.channels)).astype(args.dtype)
    x = sg.backends.get_ops(backend).asarray(x)  # time the layers, not host transfers
    rows = folded_block_rows(args, x, rng)
    worst = max(row[5] for row in rows)
    with Progress(len(layers) + 1, label="layers") as bar:
        for layer, _ in layers:
            in_shape = tuple(x.shape)
            y, seconds, first = _time_call(layer, x, args.repeats)
            ref = sg.ops.reference_separable_conv(
                2, x, *layer.get_weights()[:2], layer.get_weights()[2] if layer.use_bias else None,
                layer.strides, layer.padding, layer.data_format, layer.dilation_rate, layer.activation)
            err = _rel_error(y, ref)
            rows.append((layer.name, in_shape, tuple(y.shape), seconds, first, err, layer.backend))
            worst = max(worst, err)
            x = y
            bar.update(note=layer.name)
        seq = x.reshape(x.shape[0], -1, x.shape[-1])  # flatten space into a 1D sequence
        y, seconds, first = _time_call(conformer, seq, args.repeats)
        w = conformer.get_weights()
        err = _rel_error(y, sg.ops.reference_separable_conv(1, seq, *w, padding="same", activation="swish"))
        rows.append((conformer.name, tuple(seq.shape), tuple(y.shape), seconds, first, err, conformer.backend))
        worst = max(worst, err)
        bar.update(note=conformer.name)

    header = (f"{'layer':<22}{'input':<22}{'output':<22}{'time ms':>10}{'first ms':>10}"
              f"{'max rel err':>14}  backend")
    print(header)
    print("-" * len(header))
    for name, shp_in, shp_out, seconds, first, err, be in rows:
        print(f"{name:<22}{str(shp_in):<22}{str(shp_out):<22}{seconds * 1e3:>10.2f}{first * 1e3:>10.1f}"
              f"{err:>14.2e}  {be}")
    if backend == "numpy":
        kernel = sg.backends.cpu_kernel()
        threads = f", {__import__('numba').get_num_threads()} threads" if kernel == "numba" else ""
        print(f"\nCPU kernel: {kernel}{threads}; the first call in this process took "
              f"{rows[0][4]:.2f} s (for numba: loading the compiled kernels from the disk cache, "
              f"or compiling them once after an install)")
    tol = TOLERANCE[args.dtype]
    verdict = "OK" if worst <= tol else "FAILED"
    print(f"\n{verdict}: worst error {worst:.2e} vs the float64 reference (tolerance {tol:g}), "
          f"dtype {args.dtype}, backend {backend}")
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
