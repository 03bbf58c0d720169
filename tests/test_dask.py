"""A built layer over a chunked dask array: pickling, map_layer, plain map_blocks, schedulers."""
import pickle

import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import assert_matches

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


def _layer_and_input(cls=sg.SeparableConv2D, input_shape=(6, 9, 8, 3), **kwargs):
    layer = cls(5, 3, activation="relu", bias_initializer="random_normal", backend="numpy", **kwargs)
    x = np.random.default_rng(0).standard_normal(input_shape).astype("float32")
    layer.build(x.shape)
    return layer, x


def _reference(layer, x):
    return sg.ops.reference_separable_conv(
        layer.rank, x, *layer.get_weights(), layer.strides, layer.padding, layer.data_format,
        layer.dilation_rate, layer.activation)


def _assert_close(y, layer, x):
    assert y.dtype == np.float32
    assert_matches(y, _reference(layer, x))


def test_built_layer_pickles_with_its_weights_and_backend():
    layer, x = _layer_and_input(padding="same")
    y = layer(x)  # after a call too: the snapshot cache is not pickled
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.backend == "numpy" and copy._ops is sg.backends.get_ops("numpy")
    for a, b in zip(layer.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(copy(x), y)
    copy.set_weights([w * 2 for w in copy.get_weights()])  # a copy, not shared with the original
    np.testing.assert_array_equal(layer(x), y)


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_map_layer_under_scheduler(scheduler):
    layer, x = _layer_and_input(padding="same", strides=2)
    y = sg.dask.map_layer(layer, da.from_array(x, chunks=(2, -1, -1, -1)))
    assert y.chunks[0] == (2, 2, 2) and y.shape == tuple(layer.compute_output_shape(x.shape))
    assert y.dtype == np.float32 and isinstance(y._meta, np.ndarray)
    with dask.config.set(scheduler=scheduler, num_workers=2):
        _assert_close(y.compute(), layer, x)


def test_plain_map_blocks_as_documented():
    layer, x = _layer_and_input(cls=sg.SeparableConv1D, input_shape=(5, 3, 17), data_format="channels_first",
                                dilation_rate=2)
    darr = da.from_array(x, chunks=(2, -1, -1))
    y = darr.map_blocks(layer, dtype=layer.compute_dtype,
                        chunks=(darr.chunks[0],) + layer.compute_output_shape(darr.shape)[1:],
                        meta=np.empty((0,) * darr.ndim, dtype=layer.compute_dtype))
    with dask.config.set(scheduler="threads"):
        _assert_close(y.compute(), layer, x)


def test_spatial_chunks_are_merged_before_the_layer():
    layer, x = _layer_and_input(padding="valid")
    y = sg.dask.map_layer(layer, da.from_array(x, chunks=(3, 4, 4, 2)))  # halos would be needed
    assert y.chunks == ((3, 3), (7,), (6,), (5,))
    with dask.config.set(scheduler="threads"):
        _assert_close(y.compute(), layer, x)


def test_map_layer_bad_input():
    layer, x = _layer_and_input()
    darr = da.from_array(x, chunks=2)
    with pytest.raises(ValueError, match=r"`layer` .* not built"):
        sg.dask.map_layer(sg.SeparableConv2D(4, 3, backend="numpy"), darr)
    with pytest.raises(TypeError, match=r"`layer` must be .*received function"):
        sg.dask.map_layer(lambda a: a, darr)
    with pytest.raises(TypeError, match=r"`darr` must be a dask array; received ndarray"):
        sg.dask.map_layer(layer, x)
    with pytest.raises(ValueError, match=r"`darr` must have ndim=4 .*received shape \(6, 9, 8\)"):
        sg.dask.map_layer(layer, darr[..., 0])


def test_called_compat_v1_layer_under_the_processes_scheduler():
    """A called TF1 layer keeps its last inputs by weak reference; pickling it (as dask's
    processes scheduler does) used to fail with "cannot pickle 'weakref.ReferenceType'"."""
    from sepconv_gpu.compat import v1

    v1.reset_default_graph()
    try:
        layer, x = _layer_and_input(cls=v1.layers.SeparableConv2D, padding="same")
        layer(x)
        y = sg.dask.map_layer(layer, da.from_array(x, chunks=(3, -1, -1, -1)))
        with dask.config.set(scheduler="processes", num_workers=2):
            _assert_close(y.compute(), layer, x)
    finally:
        v1.reset_default_graph()


def test_unknown_chunk_sizes_are_refused_saying_what_to_call():
    layer, x = _layer_and_input()
    masked = da.from_array(x, chunks=(2, -1, -1, -1))[da.from_array(np.arange(6) % 3 != 1, chunks=2)]
    with pytest.raises(ValueError, match=r"`darr` has unknown chunk sizes \(shape \(nan, 9, 8, 3\)\)"
                                         r".*`darr.compute_chunk_sizes\(\)` first"):
        sg.dask.map_layer(layer, masked)
    y = sg.dask.map_layer(layer, masked.compute_chunk_sizes()).compute()  # as the message says
    _assert_close(y, layer, x[np.arange(6) % 3 != 1])
