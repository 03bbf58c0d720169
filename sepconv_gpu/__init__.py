"""sepconv_gpu: Keras-compatible depthwise separable convolution, fused on NVIDIA GPUs."""
from . import activations, ops
from .backends import (BackendUnavailableError, NumpyFallbackWarning, cuda_available,
                       get_backend, set_backend, use_backend)

__version__ = "0.1.0"
