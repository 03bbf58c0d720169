"""Run a built separable layer over a chunked dask array, one call per batch chunk.

    import dask.array as da
    y = sg.dask.map_layer(layer, da.from_array(x, chunks=(64, -1, -1, -1)))
    y.compute()                      # any scheduler: threads, processes, distributed

`map_layer` is `darr.map_blocks(layer, ...)` with the chunks, dtype and meta filled in.
Chunks split the batch axis only: a convolution's output near a spatial chunk edge needs
input from the neighbouring chunk (a halo of (kernel_size - 1) * dilation_rate), and
strides would also have to line up with chunk edges, so every non-batch axis is made one
chunk (a rechunk if it was not). dask is optional (the `dask` extra); this module imports
it only when called.
"""
from __future__ import annotations

import math

from .layers import BaseSeparableConv


def map_layer(layer, darr):
    """`layer` applied to every batch chunk of the dask array `darr`, lazily.

    The layer must be built: an unbuilt layer would build separately in every worker, each
    with its own random weights. It travels to process and distributed workers by pickle
    (weights by value, the backend by name). The result's chunks hold the same kind of
    array as `darr`'s (NumPy; CuPy on the GPU), in the layer's compute dtype.
    """
    import dask.array as da
    from dask.array.utils import meta_from_array

    if not isinstance(layer, BaseSeparableConv):
        raise TypeError(f"`layer` must be a sepconv_gpu separable layer; received {type(layer).__name__}.")
    if not layer.built:
        raise ValueError(f"`layer` '{layer.name}' is not built: build it first with `layer.build(input_shape)`, "
                         "or every worker would build its own random weights.")
    if not isinstance(darr, da.Array):
        raise TypeError(f"`darr` must be a dask array; received {type(darr).__name__}.")
    if darr.ndim != layer.rank + 2:
        raise ValueError(f"`darr` must have ndim={layer.rank + 2} for layer '{layer.name}'; "
                         f"received shape {darr.shape}.")
    if any(math.isnan(size) for size in darr.shape):  # e.g. after darr[mask]
        raise ValueError(f"`darr` has unknown chunk sizes (shape {darr.shape}): the output's "
                         "chunks need them; call `darr.compute_chunk_sizes()` first.")
    darr = darr.rechunk({axis: -1 for axis in range(1, darr.ndim)})  # batch chunks only (see above)
    out_shape = tuple(layer.compute_output_shape(darr.shape))
    return darr.map_blocks(
        layer, dtype=layer.compute_dtype, chunks=(darr.chunks[0],) + out_shape[1:],
        meta=meta_from_array(darr, ndim=darr.ndim, dtype=layer.compute_dtype), token=layer.name)
