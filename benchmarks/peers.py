"""The implementations timed: ours and its peers, each built for one layer case and mode.

A builder takes a `Case` (one layer's shared inputs) and a mode ("float32" exact, "tf32",
"float16") and returns an `Impl`, or raises `Skip` (or ImportError) when it does not
apply here. Every implementation computes the same function on the same inputs, each
in its natural layout, converted once outside the timed region, and set up as its users
would run it at its best: weights prepared once (ours through a per-case weights cache,
as a layer call), cuDNN autotuning on, torch.compile in two modes. One baseline computes
another function on purpose (`OTHER_FUNCTION`): PyTorch's native symmetric padding.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import timing

# JAX must not grab most of the GPU's memory next to CuPy and PyTorch; TF and Keras quiet.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

MODES = ("float32", "tf32", "float16")


class Skip(Exception):
    """This implementation does not apply to this case (device, dtype, missing option)."""


@dataclass
class Case:
    """One layer's inputs, shared by every implementation: rotating channels_last inputs
    (NumPy or CuPy) and float32 NumPy weights."""

    layer: Any
    batch: int
    gpu: bool
    dtype: str
    xs: list
    weights: tuple

    @functools.cached_property
    def geom(self):
        return self.layer.geometry(self.batch)

    @property
    def out_shape(self):
        return self.geom.output_shape

    def as_2d(self):
        """Kernel, stride and (before, after) padding per axis, with 1D as height 1."""
        g = self.geom
        pads = []
        for n, k, s, d, o, lo in zip(g.in_size, g.kernel, g.strides, g.dilation, g.out_size,
                                     g.pad_before):
            pads.append((lo, max((o - 1) * s + d * (k - 1) + 1 - n, 0) - lo))
        return g.kernel, g.strides, pads

    def weights_2d(self):
        """Depthwise (KH, KW, C) and pointwise (C, F) float32, bias or None."""
        dk, pk, b = self.weights
        (kh, kw), c = self.geom.kernel, self.layer.channels
        return dk.reshape(kh, kw, c), pk.reshape(c, self.layer.filters), b


@dataclass
class Impl:
    call: Callable[[int], Any]         # compute on rotating input i; may return before done
    to_numpy: Callable[[Any], np.ndarray]  # an output in our (channels_last) shape, on the host
    clock: Callable
    note: str = ""
    pads: tuple | None = None          # padding it computes when not the case's (reference)


def host(a):
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def compute_dtype(mode):
    """The array dtype of a mode: TF32 computes on float32 arrays."""
    return "float16" if mode == "float16" else "float32"


# ---------------------------------------------------------------- ours


def kernel_model(case, mode, plan=None):
    """What the CUDA dispatch runs for this case with `plan` (autotuning's choice; None:
    the cost model's own), and what the cost model predicts for it
    (`sepconv_gpu.backends.cuda.cost_model`, H100 constants): {"kernel": "tc" | "simt",
    "launches": kernel names, "predicted_us", "plan", "model_device"}. CuPy-free, so a
    CPU run records it too; only a GPU run has a measured time to compare it with."""
    from sepconv_gpu import activations
    from sepconv_gpu.backends.cuda import autotune, cost_model
    from sepconv_gpu.backends.cuda.launch import input_element_strides, launch_sequence, select_kernel

    geom, x = case.geom, case.xs[0]
    allow_tf32 = mode == "tf32"
    strides = input_element_strides(x.shape, x.strides, x.itemsize, geom)
    if strides is None:
        raise Skip("input strides are not whole elements (the backend copies it first)")
    # fresh CuPy / NumPy buffers are 16-byte aligned
    launches, _ = launch_sequence(
        case.dtype, geom, activations.get(case.layer.activation), strides,
        case.weights[2] is not None, allow_tf32=allow_tf32, x_aligned=True, plan=plan)
    kernel = select_kernel(case.dtype, geom, allow_tf32, strides, True)
    if plan is not None:
        kernel = autotune.describe(plan)["kernel"]
    return {"kernel": kernel, "launches": [launch.name for launch in launches],
            "predicted_us": sum(launch.predicted_us for launch in launches),
            "plan": "cost model's choice" if plan is None else autotune.describe(plan),
            "model_device": cost_model.DEFAULT_DEVICE.name}


def sepconv_gpu(case, mode):
    from sepconv_gpu import ops

    extra, note = {}, ""
    if mode == "tf32":  # against the peers' TF32 we time our TF32 opt-in (the GPU's only)
        extra = {"allow_tf32": True} if case.gpu else {}
        note = "TF32 opt-in" if case.gpu else "the NumPy backend is exact float32"
    xp = __import__("cupy") if case.gpu else np
    dk, pk, b = (None if w is None else xp.asarray(w, dtype=case.dtype) for w in case.weights)
    layer = case.layer
    backend = "cuda" if case.gpu else "numpy"
    # As a layer calls the op: the weights' device forms prepared once per case, not per
    # call (and autotuning times the same calls a layer makes).
    cache = {}

    def call(i):
        return ops.separable_conv(layer.rank, case.xs[i], dk, pk, b, strides=layer.stride,
                                  padding="same", activation=layer.activation, backend=backend,
                                  weights_cache=cache, **extra)

    clock = timing.cupy_clock() if case.gpu else timing.WallClock()
    return Impl(call, host, clock, note)


# ---------------------------------------------------------------- PyTorch


@functools.cache
def _torch_module_class():
    import torch

    class SeparableConv(torch.nn.Module):
        """Depthwise Conv2d(groups=C) + 1x1 Conv2d + activation; Keras' asymmetric `same`
        padding (extra on the bottom/right) by an explicit pad where it is asymmetric."""

        def __init__(self, depthwise, pointwise, pad, activation):
            super().__init__()
            self.depthwise, self.pointwise, self.pad, self.activation = (
                depthwise, pointwise, pad, activation)

        def forward(self, x):
            if self.pad:
                x = torch.nn.functional.pad(x, self.pad)
            return self.activation(self.pointwise(self.depthwise(x)))

    return SeparableConv


def _torch_activation(name):
    import torch.nn.functional as F

    return {None: lambda y: y, "relu6": F.relu6, "swish": F.silu}[name]


def _torch_impl(case, mode, channels_last, compile_mode=None, symmetric_pad=False,
                cudnn=True):
    """PyTorch in 2D (1D as height 1): NCHW or channels_last memory format; through
    torch.compile in `compile_mode` ("default", "max-autotune-no-cudagraphs"); with
    PyTorch's own symmetric padding instead of Keras' (another function: `Impl.pads`
    says which); or with cuDNN off."""
    import torch

    if case.gpu:
        if not torch.cuda.is_available():
            raise Skip("PyTorch has no CUDA device")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.benchmark = True  # cuDNN times its algorithms, as XLA and ours tune
    elif mode != "float32":
        raise Skip(f"{mode} is a GPU mode")
    device = "cuda" if case.gpu else "cpu"
    dtype = getattr(torch, compute_dtype(mode))
    kernel, stride, pads = case.as_2d()
    dk, pk, b = case.weights_2d()
    c, f = pk.shape
    symmetric = all(lo == hi for lo, hi in pads)
    if symmetric_pad:
        if symmetric:
            raise Skip("Keras' padding is symmetric here already")
        pads, symmetric = tuple((hi, hi) for _, hi in pads), True  # padding=k//2: same output size
    depthwise = torch.nn.Conv2d(c, c, kernel, stride, groups=c, bias=False,
                                padding=tuple(lo for lo, _ in pads) if symmetric else 0)
    pointwise = torch.nn.Conv2d(c, f, 1, bias=b is not None)
    with torch.no_grad():
        depthwise.weight.copy_(torch.from_numpy(np.ascontiguousarray(dk.transpose(2, 0, 1)))[:, None])
        pointwise.weight.copy_(torch.from_numpy(np.ascontiguousarray(pk.T))[:, :, None, None])
        if b is not None:
            pointwise.bias.copy_(torch.from_numpy(b))
    pad = () if symmetric else (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
    module = _torch_module_class()(depthwise, pointwise, pad, _torch_activation(case.layer.activation))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(device, dtype, memory_format=memory_format).requires_grad_(False)
    n, (h, w), c = case.batch, case.geom.in_size, case.layer.channels
    # Our NHWC buffers are channels_last tensors already; NCHW needs one copy each.
    xs = [torch.as_tensor(x, device=device).reshape(n, h, w, c).permute(0, 3, 1, 2)
          .contiguous(memory_format=memory_format) for x in case.xs]
    notes = ["TF32 on" if mode == "tf32" else ("TF32 off" if case.gpu else "")]
    if compile_mode:
        torch._dynamo.reset()  # one recompile per layer would soon hit dynamo's cache limit
        module = torch.compile(module, mode=compile_mode, dynamic=False, fullgraph=True)
        notes.append(f"torch.compile {compile_mode}, inference mode")
    if not cudnn:
        notes.append("cuDNN off")
    clock = timing.torch_cuda_clock() if case.gpu else timing.WallClock()

    cudnn_scope = contextlib.nullcontext if cudnn else _cudnn_off

    def call(i):
        with torch.inference_mode(), cudnn_scope():
            return module(xs[i])

    def to_numpy(y):
        return y.permute(0, 2, 3, 1).float().cpu().numpy().reshape(case.out_shape)

    return Impl(call, to_numpy, clock, ", ".join(n for n in notes if n),
                pads if symmetric_pad else None)


@contextlib.contextmanager
def _cudnn_off():
    """cuDNN off for a call, every other cuDNN flag as it is (torch.backends.cudnn.flags
    would reset benchmark and TF32 to its own defaults)."""
    import torch

    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


def torch_eager_nchw(case, mode):
    if not case.gpu:
        raise Skip("GPU peer")
    return _torch_impl(case, mode, channels_last=False)


def torch_eager_nhwc(case, mode):
    if not case.gpu:
        raise Skip("GPU peer")
    return _torch_impl(case, mode, channels_last=True)


def torch_compile(case, mode):
    if not case.gpu:
        raise Skip("GPU peer")
    return _torch_impl(case, mode, channels_last=True, compile_mode="default")


def torch_compile_max(case, mode):
    """max-autotune without CUDA graphs: Inductor may fuse the 1x1, bias and activation
    into one Triton GEMM, which the default mode leaves to cuDNN plus a separate pass."""
    if not case.gpu:
        raise Skip("GPU peer")
    return _torch_impl(case, mode, channels_last=True, compile_mode="max-autotune-no-cudagraphs")


def torch_nhwc_sympad(case, mode):
    """PyTorch's native symmetric `padding=k//2` (1 for 3x3) where Keras' is asymmetric
    (stride 2 on even sizes): no F.pad pass, the same output size, but another function
    (the window one pixel up and left)."""
    if not case.gpu:
        raise Skip("GPU peer")
    return _torch_impl(case, mode, channels_last=True, symmetric_pad=True)


def torch_nhwc_nocudnn(case, mode):
    """The long 1D kernel with cuDNN off (PyTorch #170138: float16 depthwise k=31 slow on
    H100 since 2.8; PyTorch's native kernel may be its best there)."""
    if not case.gpu:
        raise Skip("GPU peer")
    if case.layer.kernel < 31:
        raise Skip("only the k31 layer (PyTorch #170138)")
    return _torch_impl(case, mode, channels_last=True, cudnn=False)


def torch_cpu(case, mode):
    if case.gpu:
        raise Skip("CPU peer")
    return _torch_impl(case, mode, channels_last=False)


# ---------------------------------------------------------------- JAX


def jax_jit(case, mode):
    """lax.conv_general_dilated(feature_group_count=C), a matmul, bias, activation; jit."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    try:
        device = jax.devices("gpu" if case.gpu else "cpu")[0]
    except RuntimeError as why:  # e.g. a CPU-only jaxlib on the GPU machine
        raise Skip(f"JAX has no such device: {why}") from None
    kernel, stride, pads = case.as_2d()
    dk, pk, b = case.weights_2d()
    c = pk.shape[0]
    dtype = compute_dtype(mode)
    # float32 exact means HIGHEST: XLA may otherwise use TF32 for float32 on the GPU.
    precision = lax.Precision.HIGHEST if mode == "float32" else lax.Precision.DEFAULT
    activation = {None: lambda y: y, "relu6": jax.nn.relu6, "swish": jax.nn.silu}[
        case.layer.activation]

    def forward(x, dw, pw, bias):
        y = lax.conv_general_dilated(x, dw, stride, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c, precision=precision)
        y = jnp.matmul(y, pw, precision=precision)
        return activation(y if bias is None else y + bias)

    put = lambda a: None if a is None else jax.device_put(np.asarray(a, dtype), device)
    n, (h, w) = case.batch, case.geom.in_size
    xs = [put(host(x).reshape(n, h, w, c)) for x in case.xs]
    dw, pw, bias = put(dk[:, :, None, :]), put(pk), put(b)
    fn = jax.jit(forward)
    clock = timing.WallClock(sync=lambda y: y is not None and y.block_until_ready())
    to_numpy = lambda y: np.asarray(y, np.float32).reshape(case.out_shape)
    return Impl(lambda i: fn(xs[i], dw, pw, bias), to_numpy, clock, f"precision {precision.name}")


# ---------------------------------------------------------------- Keras / TensorFlow


def keras_tf_cpu(case, mode):
    """The real Keras SeparableConv{1,2}D on the TensorFlow backend, in a tf.function."""
    if case.gpu:
        raise Skip("CPU peer")
    if mode != "float32":
        raise Skip(f"{mode} is a GPU mode")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise Skip(f"Keras runs on {keras.backend.backend()}, not TensorFlow")
    with tf.device("/CPU:0"):
        layer_cls = keras.layers.SeparableConv2D if case.layer.rank == 2 else keras.layers.SeparableConv1D
        layer = layer_cls(case.layer.filters, case.layer.kernel, strides=case.layer.stride,
                          padding="same", activation=case.layer.activation,
                          use_bias=case.layer.use_bias, dtype=case.dtype)
        layer.build(case.xs[0].shape)
        layer.set_weights([w for w in case.weights if w is not None])
        xs = [tf.constant(x) for x in case.xs]
        fn = tf.function(layer.__call__)
    return Impl(lambda i: fn(xs[i]), lambda y: y.numpy(), timing.WallClock(), "tf.function")


PEERS = {
    "gpu": {"torch_eager_nchw": torch_eager_nchw, "torch_eager_nhwc": torch_eager_nhwc,
            "torch_compile": torch_compile, "torch_compile_max": torch_compile_max,
            "jax_jit": jax_jit, "torch_nhwc_sympad": torch_nhwc_sympad,
            "torch_nhwc_nocudnn": torch_nhwc_nocudnn},
    "cpu": {"keras_tf_cpu": keras_tf_cpu, "torch_cpu": torch_cpu},
}
COMPILE_PEERS = ("torch_compile", "torch_compile_max")  # minutes of compiling: opt-in (--compile)
OTHER_FUNCTION = ("torch_nhwc_sympad",)  # beside the others, never the headline's peer
OURS = "sepconv_gpu"
