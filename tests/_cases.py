"""What the backend tests share: random separable-convolution configurations (the
hypothesis strategy `conv_configs`) and inputs, and the one tolerance table for comparing
against the float64 reference."""
import functools
import json
import math
import pathlib
import zlib

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from sepconv_gpu import activations
from sepconv_gpu.backends.cuda import kernel_common, simt, tc

# Activation names whose result has the shape of their input (all but glu, which halves
# the last axis and so needs an even one): what random cases draw from.
SHAPE_PRESERVING_ACTIVATIONS = tuple(
    n for n in activations.NAMES if activations.get(n).output_shape((2, 4)) == (2, 4))

# Largest error allowed against the float64 NumPy reference, relative to
# max(1, max|reference|) (random_case keeps outputs O(1); the scale covers larger ones).
# A wrong tap, channel or bias moves outputs by O(0.1): every value is far below that.
TOLERANCE = {
    # float16 in and out, float32 inside: rounding the output to float16 alone costs half
    # an ulp, 2**-11 = 4.9e-4 relative. 4e-3 is eight of those: room for float32
    # accumulation and for weights rounded to float16 (mixed_float16 computes with them);
    # a tensor core's truncating accumulation adds < (1.5 K + 18) 2**-23 of the pointwise
    # sum's magnitude (tests/test_tensor_core_gpu.py derives it): 2.2e-5 at K = 128.
    "float16": 4e-3,
    # float32: 2**-24 = 6e-8 per rounding; sums of up to ~10^3 products plus a few-ulp
    # library activation (erf, tanh, expm1) stay well below ~300 ulps = 2e-5.
    "float32": 2e-5,
    # float64: the same sums in double err ~1e-13; 1e-10 leaves room for activations that
    # amplify relative error (exponential of outputs up to ~10).
    "float64": 1e-10,
}
# Against recorded Keras outputs (float32, computed by TensorFlow / XLA in their own
# summation order): the bound the recordings were made to meet.
KERAS_TOLERANCE = 1e-4


def assert_matches(y, reference, dtype=None, tolerance=None):
    """`y` equals `reference` within TOLERANCE[dtype] (default: y's dtype) relative to
    max(1, max|reference|); NaN and infinities must sit at the same places."""
    y = np.asarray(y)
    reference = np.asarray(reference, dtype=np.float64)
    assert y.shape == reference.shape, (y.shape, reference.shape)
    if tolerance is None:
        tolerance = TOLERANCE[np.dtype(dtype or y.dtype).name]
    finite = np.isfinite(reference)
    scale = max(1.0, float(np.max(np.abs(reference[finite]), initial=0.0)))
    np.testing.assert_allclose(y.astype(np.float64), reference, rtol=0, atol=tolerance * scale)


def examples(n):
    """A property's example count: `n` under the "ci" hypothesis profile (tests/conftest.py),
    proportionally more under "fuzz"."""
    return max(1, n * settings.default.max_examples // settings.get_profile("ci").max_examples)


def stable_seed(*parts):
    """A random seed made from `parts` (by their repr), the same in every process, where
    hash() of a string is not (it is salted per process: PYTHONHASHSEED)."""
    return zlib.crc32(repr(parts).encode())


def random_case(rng, rank, x_shape, kernel, multiplier, filters, dtype="float32", bias=True,
                channels_first=False):
    """x in [-1, 1) and weights scaled so outputs stay O(1), whatever the sizes."""
    channels = x_shape[1] if channels_first else x_shape[-1]
    kernel = (kernel,) * rank if isinstance(kernel, int) else tuple(kernel)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    dk = (rng.uniform(-1, 1, kernel + (channels, multiplier)) / math.sqrt(math.prod(kernel))).astype(dtype)
    pk = (rng.uniform(-1, 1, (1,) * rank + (channels * multiplier, filters))
          / math.sqrt(channels * multiplier)).astype(dtype)
    b = rng.uniform(-1, 1, filters).astype(dtype) if bias else None
    return x, dk, pk, b


@st.composite
def conv_configs(draw, *, kernels=st.integers(1, 5), slack=(9, 9), fit_every_padding=False,
                 channels=(1, 6), multiplier=(1, 3), filters=(1, 7), batch=(1, 3),
                 dtypes=("float32", "float16", "float64"), activation_choices=None,
                 max_stride=3, dilate=True, paddings=("valid", "same", "causal")):
    """A random separable-convolution configuration, a dict: rank (1 or 2), dtype,
    data_format, kernel, strides, dilation (tuples; strides or dilation above 1, not
    both), padding ("causal" in 1D only), spatial (the input's sizes), batch, channels,
    multiplier, filters, activation, use_bias, seed (for the inputs' rng).

    What each test restricts: `kernels`, a strategy of one kernel extent; `slack`, how far
    (rank 1, rank 2) each spatial size may exceed the smallest one, which is the dilated
    kernel's extent under "valid" padding (every padding with `fit_every_padding`), else
    1; the (low, high) ranges of channels, multiplier, filters and batch; `dtypes`;
    `activation_choices`, a function dtype -> the activations to draw from (default:
    those whose output has their input's shape); `max_stride`; `dilate` (False: strides
    only); `paddings`.
    """
    rank = draw(st.sampled_from([1, 2]))
    dtype = draw(st.sampled_from(dtypes))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    kernel = tuple(draw(kernels) for _ in range(rank))
    ones = (1,) * rank
    if not dilate or draw(st.booleans()):
        strides, dilation = tuple(draw(st.integers(1, max_stride)) for _ in range(rank)), ones
    else:
        strides, dilation = ones, tuple(draw(st.integers(1, 3)) for _ in range(rank))
    padding = draw(st.sampled_from([p for p in paddings if p != "causal" or rank == 1]))
    # only non-empty outputs: "valid" needs the dilated kernel to fit
    fit = padding == "valid" or fit_every_padding
    extent = [1 + (k - 1) * d if fit else 1 for k, d in zip(kernel, dilation)]
    spatial = tuple(draw(st.integers(e, e + slack[rank - 1])) for e in extent)
    choices = (SHAPE_PRESERVING_ACTIVATIONS if activation_choices is None
               else activation_choices(dtype))
    return dict(rank=rank, dtype=dtype, data_format=data_format, kernel=kernel,
                strides=strides, dilation=dilation, padding=padding, spatial=spatial,
                batch=draw(st.integers(*batch)), channels=draw(st.integers(*channels)),
                multiplier=draw(st.integers(*multiplier)), filters=draw(st.integers(*filters)),
                activation=draw(st.sampled_from(choices)), use_bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)))


def input_shape(c, data_format=None):
    """The input's shape for configuration `c` (of `conv_configs`) in `data_format`
    (default: c's)."""
    if (data_format or c["data_format"]) == "channels_first":
        return (c["batch"], c["channels"]) + c["spatial"]
    return (c["batch"],) + c["spatial"] + (c["channels"],)


def recorded_kernel_parameters():
    """{label: Activation} of the activations with parameters recorded from Keras
    (data/keras_golden/activations.json) that the CUDA kernels fuse with their parameter:
    the cases a kernel ignoring its parameter, or running its default, gets wrong."""
    path = pathlib.Path(__file__).parent / "data" / "keras_golden" / "activations.json"
    found = {}
    for case in json.loads(path.read_text())["cases"]:
        if not case["params"]:
            continue
        act = activations.get(functools.partial(getattr(activations, case["name"]), **case["params"]))
        if act.kernel_id in kernel_common.FUSED_ACTIVATIONS:
            default = activations.get(case["name"])
            assert (act.kernel_id, act.kernel_param) != (default.kernel_id, default.kernel_param)
            found[f"{case['name']}{case['params']}"] = act
    return found


def tensor_core_emulator_names():
    """The instantiations of the tensor-core emulator tests: every `sepconv_tc` and
    `sepconv_tc_reduce`, and the softmax kernels of their dtypes. Modules that build their
    emulator from exactly this list share one host build (the build cache is keyed by it)."""
    return tc.tc_name_expressions() + [
        simt.softmax_name(dtype, log) for dtype in tc.TC_DTYPES
        if dtype in kernel_common.DTYPES
        for log in (False, True)]
