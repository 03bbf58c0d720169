"""Random separable-convolution inputs shared by the backend tests."""
import math


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
