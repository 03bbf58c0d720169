"""bfloat16 (ml_dtypes.bfloat16 arrays, torch bf16 tensors, Keras's bfloat16 and
mixed_bfloat16 policies) on the NumPy backend, and the CUDA backend's dispatch of it
(against the fake CuPy of benchmarks/fake_cupy.py: no GPU here).

Tolerance against the float64 reference computed from the same bfloat16 values:
BF16_TOLERANCE, relative to max(1, max|reference|) as in _cases. bfloat16 keeps 8
significant bits, so rounding a result to it errs by at most u = 2**-8 (3.9e-3) of its
magnitude, and the NumPy backend rounds once: it computes in float32 (whose error,
_cases.TOLERANCE["float32"] = 2e-5, covers the accumulation and the activation) and
rounds the output. Inputs and weights are already bfloat16, so the reference sees exactly
the values computed with. Any wrong tap, channel or bias moves outputs by O(0.1).
"""
from __future__ import annotations

import functools
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ml_dtypes = pytest.importorskip("ml_dtypes")

import sepconv_gpu as sg  # noqa: E402
from sepconv_gpu import _dtypes, ops  # noqa: E402

from _cases import TOLERANCE, conv_configs, examples, input_shape, random_case  # noqa: E402
from _ci import require  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
BF16_TOLERANCE = 2.0 ** -8 + TOLERANCE["float32"]


def _bf16_case(seed, rank, shape, kernel, multiplier, filters, channels_first=False):
    x, dk, pk, b = random_case(np.random.default_rng(seed), rank, shape, kernel, multiplier,
                               filters, "float32", channels_first=channels_first)
    return tuple(a.astype(BF16) for a in (x, dk, pk, b))


def _assert_close(y, reference):
    scale = max(1.0, float(np.max(np.abs(reference))))
    err = float(np.max(np.abs(y.astype(np.float64) - reference))) / scale
    assert err <= BF16_TOLERANCE, err


@given(c=conv_configs(kernels=st.integers(1, 3), fit_every_padding=True, channels=(1, 9),
                     multiplier=(1, 2), dtypes=("bfloat16",), max_stride=2, dilate=False,
                     paddings=("valid", "same"),
                     activation_choices=lambda _: [None, "relu", "gelu", "softmax", "tanh"]))
@settings(max_examples=examples(20))
def test_bfloat16_numpy_ops_match_the_reference_and_round_the_float32_result(c):
    rank = c["rank"]
    kw = dict(strides=c["strides"], padding=c["padding"], data_format=c["data_format"],
              activation=c["activation"])
    x, dk, pk, b = _bf16_case(c["seed"], rank, input_shape(c), c["kernel"], c["multiplier"],
                              c["filters"], c["data_format"] == "channels_first")
    y = ops.separable_conv(rank, x, dk, pk, b, backend="numpy", **kw)
    assert y.dtype == BF16
    reference = ops.reference_separable_conv(rank, x, dk, pk, b, **kw)
    _assert_close(y, reference)
    # float32 inside, one rounding at the end: the float32 call on the same (exactly
    # representable) values, rounded to bfloat16, is the same array
    y32 = ops.separable_conv(rank, *(a.astype(np.float32) for a in (x, dk, pk, b)),
                             backend="numpy", **kw)
    np.testing.assert_array_equal(y.view(np.uint16), y32.astype(BF16).view(np.uint16))


def test_bfloat16_layer_policies():
    x = _bf16_case(1, 2, (2, 7, 7, 4), 3, 1, 6)[0]
    layer = sg.SeparableConv2D(6, 3, padding="same", activation="relu", dtype="bfloat16",
                               backend="numpy")
    y = layer(x)
    assert (layer.dtype_policy, layer.dtype, layer.compute_dtype) == ("bfloat16",) * 3
    assert y.dtype == BF16 and all(w.dtype == BF16 for w in layer.get_weights())
    _assert_close(y, ops.reference_separable_conv(2, x, *layer.get_weights(), padding="same",
                                                  activation="relu"))
    # mixed_bfloat16 (Keras): float32 variables, inputs cast to bfloat16, bfloat16 out
    mixed = sg.SeparableConv2D(6, 3, dtype={"module": "keras", "class_name": "DTypePolicy",
                                            "config": {"name": "mixed_bfloat16"}},
                               backend="numpy")
    y = mixed(x.astype(np.float32))
    assert (mixed.dtype, mixed.compute_dtype, y.dtype) == ("float32", "bfloat16", BF16)
    assert all(w.dtype == np.float32 for w in mixed.get_weights())
    _assert_close(y, ops.reference_separable_conv(2, x, *mixed.get_weights()))
    again = sg.SeparableConv2D.from_config(mixed.get_config(), backend="numpy")
    assert (again.dtype_policy, again.dtype, again.compute_dtype) == (
        "mixed_bfloat16", "float32", "bfloat16")


class _KerasLike:
    """What from_keras reads of a Keras layer: its config and weights."""

    def __init__(self, config, weights):
        self.config, self.weights = config, weights

    def get_config(self):
        return self.config

    def get_weights(self):
        return self.weights


@pytest.mark.parametrize("policy,variable_dtype", [("bfloat16", BF16), ("mixed_bfloat16", np.float32)])
def test_bfloat16_from_keras_policies(policy, variable_dtype):
    x, dk, pk, b = _bf16_case(2, 2, (1, 6, 6, 3), 3, 2, 5)
    weights = [a.astype(variable_dtype) for a in (dk, pk, b)]
    config = {"name": "sep", "filters": 5, "kernel_size": (3, 3), "depth_multiplier": 2,
              "padding": "same", "activation": "elu",
              "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": policy},
                        "registered_name": None}}
    layer = sg.SeparableConv2D.from_keras(_KerasLike(config, weights), backend="numpy")
    assert layer.dtype_policy == policy
    assert [w.dtype for w in layer.get_weights()] == [np.dtype(variable_dtype)] * 3
    y = layer(x)
    assert y.dtype == BF16
    _assert_close(y, ops.reference_separable_conv(2, x, dk, pk, b, padding="same",
                                                  activation="elu"))


def test_bfloat16_torch_tensors_on_the_numpy_backend():
    torch = require("torch", "pip install '.[ci]'")
    x, dk, pk, b = _bf16_case(3, 2, (1, 5, 5, 4), 3, 1, 3)
    x_torch = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    weights = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) for a in (dk, pk, b)]
    y = ops.separable_conv2d(x_torch, *weights, backend="numpy")
    assert y.dtype == BF16
    np.testing.assert_array_equal(y.view(np.uint16), ops.separable_conv2d(
        x, dk, pk, b, backend="numpy").view(np.uint16))
    layer = sg.SeparableConv2D(3, 3, dtype="bfloat16", backend="numpy")
    layer.build(x.shape)
    layer.set_weights([dk, pk, b])
    np.testing.assert_array_equal(layer(x_torch).view(np.uint16), layer(x).view(np.uint16))


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import fails
    with pytest.raises(ImportError, match=r"ml_dtypes.*sepconv_gpu\[bf16\]"):
        _dtypes.bfloat16()
    with pytest.raises(ImportError, match="ml_dtypes"):
        sg.SeparableConv2D(4, 3, dtype="mixed_bfloat16", backend="numpy")
    sg.SeparableConv2D(4, 3, dtype="float16", backend="numpy")  # other dtypes never need it


@pytest.mark.parametrize("in_catalogue", [False, True])
def test_bfloat16_cuda_dispatch_follows_the_kernel_catalogue(monkeypatch, in_catalogue):
    """The CUDA backend launches bfloat16 only where the kernel catalogue has bfloat16
    kernels; otherwise it refuses, before allocating or launching, saying so."""
    from benchmarks import fake_cupy

    from sepconv_gpu.backends.cuda import kernel_common, simt

    backend, cupy = fake_cupy.load_backend()
    catalogue = {k: v for k, v in kernel_common.DTYPES.items() if k != "bfloat16"}
    if in_catalogue:
        catalogue["bfloat16"] = kernel_common.DTYPES.get("bfloat16", ("__nv_bfloat16", 2, 4))
        monkeypatch.setitem(simt.SPECIALIZED_EXTENTS, "bfloat16",
                            simt.SPECIALIZED_EXTENTS.get("bfloat16", ()))
    monkeypatch.setattr(kernel_common, "DTYPES", catalogue)
    backend._call_plan.cache_clear()
    x, dk, pk, b = _bf16_case(4, 2, (1, 6, 6, 4), 3, 1, 8)
    call = lambda: ops.separable_conv2d(cupy.asarray(x), dk, pk, b, padding="same",
                                        activation="relu", backend=backend.CupyOps())
    if not in_catalogue:
        with pytest.raises(TypeError, match=r"unsupported dtype bfloat16; expected one of "
                                            r"\('float32', 'float16', 'float64'\)"):
            call()
        assert not [c for c in cupy.calls if c[0] in ("launch", "compile")]
        return
    y = call()
    assert y.dtype == BF16 and y.shape == (1, 6, 6, 8)
    launches = [c for c in cupy.calls if c[0] == "launch"]
    assert len(launches) == 1 and catalogue["bfloat16"][0] in launches[0][1]
    assert launches[0][4][0] is not None and launches[0][4][0].dtype == BF16  # x as given


def test_bfloat16_tensor_a_cupy_cannot_import_is_refused_clearly():
    """A CuPy without bfloat16 (before 14, or without ml_dtypes) fails to import a torch
    bf16 CUDA tensor through DLPack: the backend says what is missing."""
    from benchmarks import fake_cupy

    backend, _ = fake_cupy.load_backend()

    class Bf16CudaTensor:
        dtype = "torch.bfloat16"

        def __dlpack__(self, stream=None):
            raise NotImplementedError("CuPy does not support bfloat16 yet")

        def __dlpack_device__(self):
            return (2, 0)

    with pytest.raises(TypeError, match=r"cannot import bfloat16.*CuPy >= 14 with ml_dtypes"):
        backend.CupyOps().take(Bf16CudaTensor())


@pytest.mark.parametrize("channels, family", [(16, "sepconv_tc"), (5, "sepconv_simt")])
def test_bfloat16_emulated_kernels_through_the_backend_launch_path(emulator, channels, family):
    """bfloat16 arrays through the CUDA backend's launch sequence (kernel choice, weight
    preparation, launches) on the host emulator: 16 channels take the tensor-core kernel
    (mma.m16n8k16.bf16), 5 the SIMT one (fp32 math). Bound, as in
    tests/test_tensor_core_kernel.py with u = 2**-8: 2u(A + |y|), A the reference of the
    absolute values (the tensor-core kernel rounds the depthwise result to bfloat16 once
    before the products, every kernel rounds the output once; fp32 sums are far below)."""
    import _cuda_host_emulator as emu

    from sepconv_gpu import activations, geometry
    from sepconv_gpu.backends.cpu.numpy_backend import reference_separable_conv

    x, dk, pk, b = _bf16_case(7, 2, (2, 9, 11, channels), 3, 1, 24)
    strides, padding, data_format, dilation = geometry.normalize_call_args(
        2, 1, "same", "channels_last", 1)
    geom = geometry.make_geometry(2, x.shape, dk.shape, pk.shape, b.shape, strides, padding,
                                  data_format, dilation)
    relu = activations.get("relu")
    y, launches = emu.separable_conv(emulator, x, dk, pk, b, geom, relu)
    assert [launch.name.split("<")[0] for launch in launches] == [family]
    assert y.dtype == BF16
    f64 = [a.astype(np.float64) for a in (x, dk, pk, b)]
    reference = reference_separable_conv(*f64, geom, relu)
    bound = reference_separable_conv(*(np.abs(a) for a in f64), geom, activations.get(None))
    error = np.abs(y.astype(np.float64) - reference)
    assert (error <= 2 * 2.0 ** -8 * (bound + np.abs(reference)) + 1e-6).all(), error.max()


# Activations a backend does not apply row by row (or, on CUDA, has no kernel variant
# for), on float16 and bfloat16: computed in float32 and rounded once, so each output is
# within u = 2**-11 (float16) or 2**-8 (bfloat16) of its magnitude of the float64
# reference, plus float32's error relative to the outputs' scale. Rounding before the
# activation (and computing it in the narrow dtype) misses that by up to 10x.
_WHOLE_OUTPUT_ACTIVATIONS = {
    "glu": "glu",
    "softmax(axis=1)": functools.partial(sg.activations.softmax, axis=1),
    "log_softmax(axis=1)": functools.partial(sg.activations.log_softmax, axis=1),
    "centred": lambda y: y - y.mean(),
}
_ROUNDING = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def _narrow_case(dtype, seed=5, shape=(2, 9, 9, 6), filters=8):
    x, dk, pk, b = random_case(np.random.default_rng(seed), 2, shape, 3, 1, filters, "float32")
    narrow = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    return tuple(a.astype(narrow) for a in (x, dk, pk, b))


def _assert_rounded_once(y, reference, dtype):
    scale = max(1.0, float(np.max(np.abs(reference))))
    error = np.abs(y.astype(np.float64) - reference)
    bound = _ROUNDING[dtype] * np.abs(reference) + TOLERANCE["float32"] * scale
    assert (error <= bound).all(), f"{int((error > bound).sum())} of {error.size} beyond"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(_WHOLE_OUTPUT_ACTIVATIONS))
def test_narrow_dtypes_apply_whole_output_activations_before_the_one_rounding(dtype, name):
    activation = _WHOLE_OUTPUT_ACTIVATIONS[name]
    x, dk, pk, b = _narrow_case(dtype)
    y = ops.separable_conv2d(x, dk, pk, b, padding="same", activation=activation, backend="numpy")
    assert y.dtype == x.dtype
    _assert_rounded_once(y, ops.reference_separable_conv(2, x, dk, pk, b, padding="same",
                                                         activation=activation), dtype)


@pytest.mark.parametrize("dtype, channels", [("float16", 16), ("bfloat16", 16), ("bfloat16", 5)])
@pytest.mark.parametrize("name", ["glu", "softmax(axis=1)", "sparsemax"])
def test_narrow_dtypes_on_the_cuda_path_round_after_the_activation(monkeypatch, dtype, channels,
                                                                   name):
    """The CUDA host path against the fake CuPy, whose kernels here write the float64
    reference of the linear convolution, rounded to the dtype of the output they are given
    (what a kernel's epilogue does): this checks the backend's routing and rounding, the
    real kernels on that route run under the emulator in
    test_tensor_core_kernel.py::test_tensor_core_every_activation (float16 glu and sparsemax
    through the TF32 kernel, against a rounding model of it). glu and softmax(axis=1) are applied by ops to the whole output,
    sparsemax (no kernel variant) by the backend after its kernels: both must see the
    kernels' float32 output, which is rounded once, after them."""
    from benchmarks import fake_cupy

    activation = _WHOLE_OUTPUT_ACTIVATIONS.get(name, name)
    backend, cupy = fake_cupy.load_backend()
    monkeypatch.setattr(sg.activations, "array_module", lambda a: np)  # the fake's arrays are NumPy's
    x, dk, pk, b = _narrow_case(dtype, shape=(2, 9, 9, channels))
    linear = ops.reference_separable_conv(2, x, dk, pk, b, padding="same")

    class Kernel(cupy.cuda.function.Function):
        def __call__(self, grid, block, args, shared_mem=0, stream=None):
            super().__call__(grid, block, args, shared_mem, stream)
            y = args[4] if self.name.startswith(("sepconv_simt", "sepconv_tc<")) else args[-1]
            y[...] = linear.astype(y.dtype)

    backend._load_kernel = lambda name, device: Kernel(name)
    y = ops.separable_conv2d(cupy.asarray(x), dk, pk, b, padding="same", activation=activation,
                             backend=backend.CupyOps())
    assert y.dtype == x.dtype
    launches = [c for c in cupy.calls if c[0] == "launch"]
    assert launches and all(c[4][4].dtype == np.float32 for c in launches)  # float32 written
    assert all(c[1].startswith(("sepconv_simt<float,", "sepconv_tc<float,", "sepconv_softmax"))
               for c in cupy.calls if c[0] == "compile"), cupy.calls  # no half kernel loaded
    _assert_rounded_once(np.asarray(y), ops.reference_separable_conv(
        2, x, dk, pk, b, padding="same", activation=activation), dtype)
