"""One layer shared by threads: it is built once and every call sees one whole set of weights."""
import concurrent.futures
import sys
import threading
import time

import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import assert_matches
from sepconv_gpu import ops

THREADS = 8


@pytest.fixture
def busy_switching():
    """Switch threads as often as the interpreter can, so interleavings actually happen."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _run_together(fn, n=THREADS):
    """fn(i) in n threads released at the same moment; their results in order."""
    start = threading.Barrier(n)

    def task(i):
        start.wait()
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(task, range(n)))


def _slow_glorot(shape, dtype=None):
    time.sleep(0.002)  # widens the window in which a second build could start
    return sg.initializers.GlorotUniform()(shape, dtype=dtype)


def _x(seed=0, shape=(2, 7, 6, 3)):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_concurrent_first_calls_build_once(busy_switching):
    for trial in range(5):
        built = []

        def counting_init(shape, dtype=None):
            built.append(shape)
            return _slow_glorot(shape, dtype)

        layer = sg.SeparableConv2D(4, 3, padding="same", backend="numpy",
                                   depthwise_initializer=counting_init)
        x = _x(trial)
        outputs = _run_together(lambda i: layer(x))
        assert len(built) == 1, f"trial {trial}: built {len(built)} times"
        ref = ops.reference_separable_conv(2, x, *layer.get_weights(), padding="same")
        for y in outputs:  # every output used the weights the layer holds now
            assert_matches(y, ref)


def _mixed_outputs_while_swapping(caller, writer, x, calls=60, threads=4):
    """Outputs of `caller` (4 threads) equal to neither weight set while `writer` swaps
    its weights between two sets; a mixture of the sets gives an output equal to neither."""
    first = writer.get_weights()
    second = [w * s for w, s in zip(first, (2.0, 3.0, 5.0))]
    refs = [ops.reference_separable_conv(2, x, *ws, padding="same") for ws in (first, second)]
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            for ws in (second, first):
                writer.set_weights(ws)

    def count_mixed(_):
        outputs = (caller(x) for _ in range(calls))
        return sum(not any(np.allclose(y, r, rtol=0, atol=1e-4) for r in refs) for y in outputs)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        return sum(_run_together(count_mixed, threads))
    finally:
        stop.set()
        swapper.join()


def test_set_weights_while_calling_never_mixes_old_and_new(busy_switching):
    layer = sg.SeparableConv2D(4, 3, padding="same", backend="numpy")
    x = _x(1, (1, 5, 5, 3))
    layer.build(x.shape)
    assert _mixed_outputs_while_swapping(layer, layer, x) == 0


def test_compat_v1_layers_sharing_weights_see_writes_whole(busy_switching):
    """A write through the layer that reuses the weights reaches their creator whole."""
    from sepconv_gpu.compat import v1
    from sepconv_gpu.compat.v1 import layers as v1_layers

    v1.reset_default_graph()
    try:
        x = _x(6, (1, 5, 5, 3))
        creator = v1_layers.SeparableConv2D(4, 3, padding="same", name="s", _scope="s", backend="numpy")
        creator(x)
        reuser = v1_layers.SeparableConv2D(4, 3, padding="same", name="s", _scope="s", _reuse=True,
                                           backend="numpy")
        reuser(x)
        assert _mixed_outputs_while_swapping(creator, reuser, x) == 0
    finally:
        v1.reset_default_graph()


def test_variable_assign_and_constraints_reach_the_next_call():
    layer = sg.SeparableConv2D(2, 3, backend="numpy", depthwise_constraint="non_neg")
    x = _x(2)
    layer(x)
    dk, pk, b = layer.get_weights()
    layer.pointwise_kernel.assign(2 * pk)
    assert_matches(layer(x), ops.reference_separable_conv(2, x, dk, 2 * pk, b))
    layer.apply_constraints()
    assert_matches(layer(x), ops.reference_separable_conv(2, x, np.maximum(dk, 0), 2 * pk, b))


def test_use_backend_does_not_reach_pool_threads():
    """use_backend is a context variable: threads of a pool start without it (documented)."""
    outside = sg.backends.requested_backend()
    with sg.use_backend("numpy"):
        assert sg.backends.requested_backend() == "numpy"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_worker = pool.submit(sg.backends.requested_backend).result()
    assert in_worker == outside


def test_calls_share_one_snapshot_until_a_weight_is_replaced(monkeypatch):
    """The backend's weights_cache is the snapshot's: kept across calls, new after any write."""
    from sepconv_gpu.backends.cpu.numpy_backend import NumpyOps

    caches = []
    real = NumpyOps.separable_conv

    def spy(self, *args, weights_cache=None, **kwargs):
        caches.append(weights_cache)
        return real(self, *args, weights_cache=weights_cache, **kwargs)

    monkeypatch.setattr(NumpyOps, "separable_conv", spy)
    layer = sg.SeparableConv2D(3, 3, backend="numpy", depthwise_constraint="non_neg")
    x = _x(3)
    layer(x)
    layer(x)
    assert isinstance(caches[0], dict) and caches[1] is caches[0]
    for write in (lambda: layer.set_weights(layer.get_weights()),
                  lambda: layer.bias.assign(np.ones(3)),
                  layer.apply_constraints):
        write()
        layer(x)
        assert caches[-1] is not caches[-2]
    ops.separable_conv2d(x, *layer.get_weights())  # user arrays: nothing to cache them with
    assert caches[-1] is None


@pytest.mark.parametrize("copy_layer", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_capture_one_whole_weight_set(copy_layer, busy_switching):
    """While another thread swaps the weights, a pickled or deep-copied layer holds one
    set, never depthwise from one and pointwise / bias from the other (it used to, 1-8
    times in 1000 with a 1e-5 s switch interval; here 1e-6 s)."""
    import copy
    import pickle

    take = {"pickle": lambda layer: pickle.loads(pickle.dumps(layer)), "deepcopy": copy.deepcopy}[copy_layer]
    layer = sg.SeparableConv2D(4, 3, padding="same", backend="numpy")
    layer.build((None, 5, 5, 3))
    first = layer.get_weights()
    second = [w * s for w, s in zip(first, (2.0, 3.0, 5.0))]
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            for ws in (second, first):
                layer.set_weights(ws)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        copies = [take(layer).get_weights() for _ in range(3000)]
    finally:
        stop.set()
        swapper.join()
    mixed = sum(not any(all(np.array_equal(a, b) for a, b in zip(got, ws)) for ws in (first, second))
                for got in copies)
    assert mixed == 0
