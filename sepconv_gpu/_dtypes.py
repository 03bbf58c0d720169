"""bfloat16 as a NumPy dtype: `ml_dtypes.bfloat16`, imported only where bfloat16 is used.

NumPy has no bfloat16 of its own; ml_dtypes (the package JAX, Keras 3 and CuPy use)
registers one, named "bfloat16", whose arrays have dtype kind "V". Install it with
`pip install 'sepconv_gpu[bf16]'`.
"""
from __future__ import annotations

import numpy as np

BFLOAT16 = "bfloat16"


def bfloat16():
    """NumPy's dtype for ml_dtypes.bfloat16; ImportError saying what to install."""
    try:
        import ml_dtypes
    except ImportError as exc:
        raise ImportError(
            "sepconv_gpu: bfloat16 needs the ml_dtypes package (NumPy has no bfloat16): "
            "pip install 'sepconv_gpu[bf16]' (or ml_dtypes>=0.4).") from exc
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(name):
    """np.dtype for a float dtype name, bfloat16 included."""
    return bfloat16() if name == BFLOAT16 else np.dtype(name)


def is_bfloat16(dtype):
    """True for bfloat16 dtypes of any library (NumPy/CuPy via ml_dtypes, torch)."""
    return str(dtype).rsplit(".", 1)[-1] == BFLOAT16


