"""The arguments the CUDA backend launches each kernel with match the kernel's parameters.

CuPy passes a NumPy scalar by its exact type and never checks it against the kernel (an
np.int64 where the kernel declares `int` shifts every later parameter), so each
`__global__` signature is parsed from kernels/*.cu and compared, position by position,
with what `launch_sequence` + `launch_arrays` build: arrays where the kernel takes
pointers (with the pointee's dtype), NumPy scalars of exactly the declared type elsewhere.
The second half runs cuda_backend against a fake CuPy: the shared-memory opt-in, the
device limit the planner gets, and how a compiled kernel is loaded.
"""
from __future__ import annotations

import os
import re
import sys
import types

import numpy as np
import pytest

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends import cuda_kernels

try:
    from _cases import random_case  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from ._cases import random_case

SCALAR_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)",
                     re.S)


def kernel_parameters():
    """{kernel name: [(C++ type, is_pointer), ...]} for every __global__ in kernels/*.cu."""
    found = {}
    for filename in ("sepconv_fused.cu", "sepconv_tc.cu"):
        with open(os.path.join(cuda_kernels.kernels_dir(), filename), encoding="utf-8") as fh:
            text = re.sub(r"//[^\n]*", "", fh.read())
        for name, params in _GLOBAL.findall(text):
            parsed = []
            for param in params.split(","):
                declaration = " ".join(param.replace("__restrict__", "").split())
                pointer = "*" in declaration
                ctype = declaration.split("*")[0] if pointer else declaration.rsplit(" ", 1)[0]
                parsed.append((ctype.replace("const ", "").strip(), pointer))
            found[name] = parsed
    return found


def pointee_dtype(ctype, dtype):
    """The NumPy dtype of a kernel pointer parameter's element type, for input `dtype`."""
    t = {"float16": "__half", "float32": "float", "float64": "double"}[dtype]
    resolved = {
        "T": t,
        "typename sepconv::Acc<T>::type": "double" if t == "double" else "float",
        "typename sepconv::Tc<T>::Operand": t,  # half operands for half, float (tf32) for float
    }.get(ctype, ctype)
    return np.dtype({"__half": np.float16, "float": np.float32, "double": np.float64}[resolved])


def _case(shape, kernel, filters, dtype, activation):
    rank = len(shape) - 2
    x, dk, pk, b = random_case(np.random.default_rng(0), rank, shape, kernel, 1, filters, dtype)
    s, p, df, d = geometry.normalize_call_args(rank, 1, "same", "channels_last", 1)
    geom = geometry.make_geometry(rank, x.shape, dk.shape, pk.shape, b.shape, s, p, df, d)
    return x, dk, pk, b, geom, activations.get(activation)


# (shape, kernel, filters, dtype, activation, allow_tf32, kinds that must be launched)
CASES = [
    ((2, 9, 10, 6), 3, 20, "float32", "relu", False, {"fused"}),
    ((2, 9, 10, 6), (2, 4), 20, "float64", "softmax", False, {"fused", "softmax"}),
    ((2, 31, 5), 5, 7, "float16", "log_softmax", False, {"fused", "softmax"}),
    ((2, 19, 21, 64), 3, 72, "float16", "gelu", False, {"tc"}),
    ((2, 19, 21, 64), 3, 72, "float32", "elu", True, {"tc"}),
    ((1, 7, 7, 256), 3, 64, "float16", "relu", False, {"tc", "tc_reduce"}),
    ((1, 7, 7, 256), 3, 64, "float32", "softmax", True, {"tc", "tc_reduce", "softmax"}),
]


@pytest.mark.parametrize("shape,kernel,filters,dtype,activation,allow_tf32,kinds", CASES)
def test_launch_arguments_match_kernel_signatures(shape, kernel, filters, dtype, activation,
                                                  allow_tf32, kinds):
    signatures = kernel_parameters()
    x, dk, pk, b, geom, act = _case(shape, kernel, filters, dtype, activation)
    strides = cuda_kernels.input_element_strides(x.shape, x.strides, x.itemsize, geom)
    launches, _ = cuda_kernels.launch_sequence(dtype, geom, act, strides, True, allow_tf32)
    assert {launch.kind for launch in launches} == kinds
    y, partial = np.empty(geom.output_shape, x.dtype), None
    for launch in launches:  # as cuda_backend._separable_conv does
        weights = (cuda_kernels.prepare_weights(np, launch.weights, dk, pk, b)
                   if launch.weights else None)
        if launch.partial:  # made by a split "tc" launch, read by its "tc_reduce"
            partial = np.empty(launch.partial, np.float32)
        args = cuda_kernels.launch_arrays(launch, x, weights, y, partial) + launch.scalars
        kernel_name = launch.name.split("<")[0]
        params = signatures[kernel_name]
        assert len(args) == len(params), (launch.name, len(args), len(params))
        for i, (arg, (ctype, pointer)) in enumerate(zip(args, params)):
            where = f"{launch.name} parameter {i} ({ctype}{' *' if pointer else ''})"
            if pointer:
                assert isinstance(arg, np.ndarray), where
                if launch.kind == "tc" and i == 5 and not launch.partial:
                    continue  # `partial` without a split: any valid pointer, never read
                assert arg.dtype == pointee_dtype(ctype, dtype), (where, arg.dtype)
            else:
                assert type(arg) is SCALAR_TYPES[ctype], (where, type(arg))


def test_every_kernel_is_parsed():
    names = kernel_parameters()
    assert set(names) == {"sepconv_fused", "sepconv_softmax_lastaxis", "sepconv_tc",
                          "sepconv_tc_reduce"}
    assert all(names.values())
