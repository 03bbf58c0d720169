"""sepconv_gpu: Keras-compatible depthwise separable convolution, fused on NVIDIA GPUs.

    import sepconv_gpu as sg
    layer = sg.SeparableConv2D(64, 3, padding="same", activation="relu")
    y = layer(x)            # NumPy in -> NumPy out; CuPy / torch CUDA in -> same kind out
"""
from . import activations, backends, constraints, initializers, ops, regularizers
from .backends import (BackendUnavailableError, NumpyFallbackWarning, cuda_available,
                       get_backend, set_backend, use_backend)
from .backends.cuda.autotune import get_autotune, set_autotune
from .layers import (BaseSeparableConv, SeparableConv1D, SeparableConv2D,
                     SeparableConvolution1D, SeparableConvolution2D)
from . import compat  # noqa: E402  (needs the layers above)
from . import dask  # sg.dask.map_layer; imports dask only when called (not in __all__: it would shadow dask)
from .fold import fold_batch_norm

__version__ = "0.1.0"

__all__ = [
    "activations", "backends", "compat", "constraints", "initializers", "ops", "regularizers",
    "BackendUnavailableError", "NumpyFallbackWarning", "cuda_available", "get_backend",
    "set_backend", "use_backend", "get_autotune", "set_autotune", "BaseSeparableConv", "SeparableConv1D", "SeparableConv2D",
    "SeparableConvolution1D", "SeparableConvolution2D", "fold_batch_norm",
]
