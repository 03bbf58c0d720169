"""What both CUDA kernel families share, mirrored from kernels/sepconv_common.cuh: the
dtype catalogue, the activations fused into their epilogues (enum SepconvActivation,
ACT_SLOTS) and the generic kernel extent.

Plain Python, free of CuPy: `simt.py` and `tc.py` (one per kernel family) and `launch.py`
(which picks and launches them) all read it.
"""
from __future__ import annotations

# dtype name -> (C++ type, input itemsize, accumulator itemsize)
DTYPES = {
    "float32": ("float", 4, 4),
    "float16": ("__half", 2, 4),
    "float64": ("double", 8, 8),
    "bfloat16": ("__nv_bfloat16", 2, 4),   # NumPy needs ml_dtypes for it
}

# Activation.kernel_id values fused into the epilogue (enum SepconvActivation, same order),
# passed to the kernels as the runtime argument `act` (the index in this tuple).
ACT_SLOTS = 32           # ACT_SLOTS (sepconv_common.cuh): enum values the runtime switch covers
FUSED_ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "gelu_tanh",
    "sigmoid", "hard_sigmoid", "hard_silu", "silu", "mish", "softplus", "softsign", "tanh",
    "exponential", "hard_tanh", "hard_shrink", "soft_shrink", "log_sigmoid", "sparse_plus",
    "sparse_sigmoid", "squareplus", "tanh_shrink",
)
# Normalizing activations with a kernel: a linear convolution, then sepconv_softmax_lastaxis.
# Every other kernel_id (glu, sparsemax, ...) is applied to the output afterwards.
LAST_AXIS_ACTIVATIONS = ("softmax", "log_softmax")

GENERIC_EXTENT = (0, 0)   # (KH, KW) template arguments of the runtime-extent path


def check_dtype(dtype):
    """TypeError unless the catalogue has kernels for `dtype` (a NumPy dtype name)."""
    if dtype not in DTYPES:
        raise TypeError(f"sepconv_gpu CUDA backend: unsupported dtype {dtype}; expected one of {tuple(DTYPES)}.")


def kernels_apply(kernel_id):
    """Whether the kernels apply this activation (fused, or the softmax kernel after a
    linear convolution); any other is applied to their output afterwards."""
    return kernel_id in FUSED_ACTIVATIONS or kernel_id in LAST_AXIS_ACTIVATIONS


def activation_enum(kernel_id):
    return "ACT_" + kernel_id.upper()


def activation_index(kernel_id):
    """The kernels' runtime `act` argument: the enum SepconvActivation value."""
    return FUSED_ACTIVATIONS.index(kernel_id)
