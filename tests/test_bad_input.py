"""Bad input gets a clear exception or the right answer; caller arrays are never written."""
import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import assert_matches
from sepconv_gpu import ops


def _layer(**kw):
    kw = {"filters": 4, "kernel_size": 3, "padding": "same", "backend": "numpy", **kw}
    return sg.SeparableConv2D(**kw)


def _x(shape=(2, 6, 7, 3), dtype="float32", seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_wrong_rank():
    with pytest.raises(ValueError, match="expected ndim=4, found ndim=3"):
        _layer()(_x((6, 7, 3)))
    with pytest.raises(ValueError, match="must have rank 3"):
        ops.separable_conv1d(_x((1, 5, 5, 3)), np.ones((3, 3, 1)), np.ones((1, 3, 2)))


def test_channel_mismatch_after_build():
    layer = _layer()
    layer(_x())
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        layer(_x((2, 6, 7, 5)))


def test_weight_shape_mismatch_in_ops():
    x = _x()
    with pytest.raises(ValueError, match="expects 4 input channels"):
        ops.separable_conv2d(x, np.ones((3, 3, 4, 1), "f4"), np.ones((1, 1, 4, 2), "f4"))
    with pytest.raises(ValueError, match="depthwise stage produces 3 \\* 1 = 3"):
        ops.separable_conv2d(x, np.ones((3, 3, 3, 1), "f4"), np.ones((1, 1, 4, 2), "f4"))
    with pytest.raises(ValueError, match="`bias` must have shape \\(2,\\)"):
        ops.separable_conv2d(x, np.ones((3, 3, 3, 1), "f4"), np.ones((1, 1, 3, 2), "f4"), np.ones(3, "f4"))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_empty_batch(data_format):
    layer = _layer(data_format=data_format, strides=2)
    shape = (0, 6, 7, 3) if data_format == "channels_last" else (0, 3, 6, 7)
    y = layer(np.zeros(shape, "float32"))
    assert y.shape == layer.compute_output_shape(shape) and y.dtype == np.float32
    assert y.shape == ((0, 3, 4, 4) if data_format == "channels_last" else (0, 4, 3, 4))


def test_nan_and_inf_propagate_like_numpy():
    x = _x()
    x[0, 2, 3, 1] = np.nan
    x[1, 0, 0, 0] = np.inf
    layer = _layer()
    y = layer(x)
    ref = ops.reference_separable_conv(2, x, *layer.get_weights(), padding="same")
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    assert np.array_equal(np.isinf(y), np.isinf(ref))
    finite = np.isfinite(ref)
    assert_matches(y[finite], ref[finite])
    assert np.isnan(y[0]).any() and np.isfinite(y[0, 5]).all()  # only the receptive field


def test_non_contiguous_and_negative_strides():
    base = _x((2, 12, 14, 6))
    views = [base[:, ::2, ::-2, ::2], base[::-1, 3:9, 1:8, 1:4], np.asfortranarray(base[:, :6, :7, :3])]
    layer = _layer()
    for v in views:
        assert not v.flags.c_contiguous
        y = layer(v)
        np.testing.assert_allclose(y, layer(np.ascontiguousarray(v)), rtol=0, atol=0)
        ref = ops.reference_separable_conv(2, v, *layer.get_weights(), padding="same")
        assert_matches(y, ref)


def test_read_only_input_is_never_written():
    x = _x()
    x.setflags(write=False)
    before = x.copy()
    for act in ("relu", "softmax", None):
        _layer(activation=act)(x)
    assert np.array_equal(x, before)
    # ops on a writable input: still untouched
    w = x.copy()
    ops.separable_conv2d(w, np.ones((3, 3, 3, 1), "f4"), np.ones((1, 1, 3, 2), "f4"), activation="relu")
    assert np.array_equal(w, before)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "object", "complex64"])
def test_non_float_dtypes_refused(dtype):
    x = np.zeros((1, 5, 5, 3), dtype=dtype)
    with pytest.raises(TypeError, match="floating-point"):
        _layer()(x)
    with pytest.raises(TypeError, match="`x` must be a floating-point array"):
        ops.separable_conv2d(x, np.ones((3, 3, 3, 1), "f4"), np.ones((1, 1, 3, 2), "f4"))
    with pytest.raises(TypeError, match="`depthwise_kernel` must be a floating-point array"):
        ops.separable_conv2d(np.zeros((1, 5, 5, 3), "f4"), np.ones((3, 3, 3, 1), dtype=dtype),
                             np.ones((1, 1, 3, 2), "f4"))


def test_non_array_input_refused():
    with pytest.raises(TypeError, match="`x` must be an array"):
        ops.separable_conv2d("not an array", np.ones((3, 3, 3, 1)), np.ones((1, 1, 3, 2)))
    with pytest.raises(TypeError, match="floating-point input"):
        _layer()({"not": "an array"})  # a mapping is not mistaken for a device array


def test_set_weights_checks_count_and_shapes_without_partial_writes():
    layer = _layer()
    layer.build((None, 6, 7, 3))
    before = layer.get_weights()
    with pytest.raises(ValueError, match="expects 3 weights .* received 2"):
        layer.set_weights(before[:2])
    bad = [before[0], np.zeros((1, 1, 3, 5)), before[2]]
    with pytest.raises(ValueError, match="weight 'pointwise_kernel' has shape \\(1, 1, 3, 4\\)"):
        layer.set_weights([np.zeros_like(before[0])] + bad[1:])
    for old, now in zip(before, layer.get_weights()):  # nothing was assigned
        assert np.array_equal(old, now)
    with pytest.raises(TypeError, match="must be numeric"):
        layer.set_weights([before[0].astype(object), before[1], before[2]])


def test_set_weights_copies_the_callers_arrays():
    layer = _layer()
    layer.build((None, 6, 7, 3))
    ws = [np.ones(w.shape, "float32") for w in layer.get_weights()]
    layer.set_weights(ws)
    ws[0][...] = 5
    assert np.all(layer.get_weights()[0] == 1)
    got = layer.get_weights()
    got[1][...] = 7
    assert np.all(layer.get_weights()[1] == 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"filters": 2.5}, "filters"),
    ({"kernel_size": (3, "a")}, "kernel_size"),
    ({"strides": (1, 2, 3)}, "strides"),
    ({"padding": 3}, "padding"),
    ({"data_format": "NCHW"}, "data_format"),
    ({"dilation_rate": -1}, "dilation_rate"),
    ({"use_bias": "yes"}, "use_bias"),
    ({"dtype": "int32"}, "dtype"),
    ({"backend": "tpu"}, "backend"),
    ({"bogus_argument": 1}, "bogus_argument"),
    ({"allow_tf32": "yes"}, "allow_tf32"),
])
def test_constructor_arguments_named_in_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _layer(**kwargs)


@pytest.mark.parametrize("kwargs", [{"name": 123}, {"name": "a/b"}, {"trainable": "no"},
                                    {"trainable": 1}, {"trainable": None}])
def test_name_and_trainable_refused_as_keras_3_does(kwargs):
    """Keras 3 raises ValueError naming the argument (Operation / Layer constructors)."""
    (argument, value), = kwargs.items()
    with pytest.raises(ValueError, match=f"`{argument}`.*Received: {argument}={value!r}"):
        _layer(**kwargs)


def test_compat_v1_names_may_be_scope_paths_but_must_be_strings():
    from sepconv_gpu.compat.v1 import layers as v1_layers

    assert v1_layers.SeparableConv2D(2, 3, name="block1/conv", backend="numpy").name == "block1/conv"
    with pytest.raises(ValueError, match="`name` must be a string"):
        v1_layers.SeparableConv2D(2, 3, name=7, backend="numpy")


@pytest.mark.parametrize("missing", ["depthwise_kernel", "pointwise_kernel"])
def test_missing_kernel_in_ops(missing):
    args = {"depthwise_kernel": np.ones((3, 3, 3, 1), "f4"), "pointwise_kernel": np.ones((1, 1, 3, 2), "f4"),
            missing: None}
    with pytest.raises(TypeError, match=f"`{missing}` must be an array; received None"):
        ops.separable_conv2d(_x(), **args)


@pytest.mark.parametrize("activation, returned", [
    (lambda t: t.mean(axis=0), "shape \\(4, 5, 4\\)"),  # both used to broadcast silently
    (lambda t: t[:, :1], "shape \\(2, 1, 5, 4\\)"),
    (lambda t: float(t.sum()), "float"),
])
def test_activation_must_keep_the_output_shape(activation, returned):
    x = _x()
    with pytest.raises(ValueError, match=f"`activation` '<lambda>' must return an array of shape "
                                         f"\\(2, 4, 5, 4\\).*; it returned {returned}"):
        _layer(padding="valid", activation=activation)(x)
    with pytest.raises(ValueError, match="`activation`"):
        ops.separable_conv2d(x, np.ones((3, 3, 3, 1), "f4"), np.ones((1, 1, 3, 2), "f4"),
                             activation=activation)


def test_count_params_before_build():
    with pytest.raises(ValueError, match="isn't built"):
        _layer().count_params()


def test_past_2_to_31_elements_the_cuda_plan_keeps_64_bit_offsets():
    """A 2^32-element call is planned for the GPU (CuPy-free planner): element strides go
    to the kernel as int64, nothing is refused; a single axis past 2^31 is refused."""
    from sepconv_gpu import activations
    from sepconv_gpu.backends.cuda.launch import launch_sequence
    from sepconv_gpu.geometry import make_geometry

    g = make_geometry(2, (64, 1024, 1024, 64), (3, 3, 64, 1), (1, 1, 64, 64), None,
                      (1, 1), "same", "channels_last", (1, 1))
    assert g.output_shape == (64, 1024, 1024, 64)  # "same", stride 1: 2^32 outputs
    strides = (2**26, 1, 2**16, 2**6)  # (n, c, h, w) of a contiguous NHWC input
    launches, _ = launch_sequence("float32", g, activations.get("relu"), strides, True)
    assert launches[0].scalars[:4] == strides
    assert all(isinstance(s, np.int64) for s in launches[0].scalars[:4])
    wide = make_geometry(1, (1, 2**31, 1), (3, 1, 1), (1, 1, 1), None,
                         (1,), "same", "channels_last", (1,))
    with pytest.raises(ValueError, match=r"exceed 2\^31 - 1.*input width reach"):
        launch_sequence("float32", wide, activations.get(None), (2**31, 1, 0, 1), False)


# -- issue 18: robustness, round 3 ---------------------------------------------------------

def test_big_endian_floats_are_accepted_by_ops_as_by_the_layer():
    x, dk, pk, b = _x(), _x((3, 3, 3, 2), seed=1), _x((1, 1, 6, 4), seed=2), _x((4,), seed=3)
    native = ops.separable_conv2d(x, dk, pk, b, padding="same")
    swapped = ops.separable_conv2d(x.astype(">f4"), dk.astype(">f4"), pk.astype(">f4"), b.astype(">f4"),
                                   padding="same")
    assert swapped.dtype == np.float32 and swapped.dtype.isnative
    np.testing.assert_array_equal(swapped, native)
    assert ops.separable_conv2d(x.astype(">f8"), dk.astype(">f8"), pk, padding="same").dtype == np.float64
    layer = _layer(depth_multiplier=2)
    np.testing.assert_array_equal(layer(x.astype(">f4")), layer(x))


def test_zero_channel_call_builds_nothing():
    layer = _layer()
    with pytest.raises(ValueError, match="channel axis -1 must be a positive size.*\\(2, 6, 7, 0\\)"):
        layer(np.zeros((2, 6, 7, 0), "float32"))
    assert not layer.built and layer.weights == []
    assert layer(_x()).shape == (2, 6, 7, 4)  # the next valid call builds for its 3 channels
    with pytest.raises(ValueError, match="channel axis 1 must be a positive size"):
        _layer(data_format="channels_first").build((None, 0, 5, 5))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_kernel_larger_than_input_is_refused_before_any_weight_exists(padding):
    """kernel_size=100000 on an 8x8 input: `valid` has no output; `same` would need a
    depthwise kernel of 10^10 * 3 values. Neither may reach the initializer (MemoryError
    or "array is too big" before)."""
    layer = _layer(kernel_size=100000, padding=padding)
    match = "Computed output size would be zero" if padding == "valid" else "`kernel_size`=\\(100000, 100000\\).*bytes"
    with pytest.raises(ValueError, match=match):
        layer(_x((1, 8, 8, 3)))
    assert not layer.built


@pytest.mark.parametrize("kwargs, named", [
    ({"depth_multiplier": 2**40},
     "weight 'depthwise_kernel' of shape \\(3, 3, 3, 1099511627776\\).*`depth_multiplier`=1099511627776"),
    ({"filters": 2**62}, "weight 'pointwise_kernel' .*`filters`=4611686018427387904"),
    ({"filters": 2**62, "use_bias": False}, "`filters`=4611686018427387904"),
])
def test_impossible_weight_sizes_are_refused_naming_the_argument(kwargs, named):
    layer = _layer(**kwargs)
    with pytest.raises(ValueError, match=f"{named}.* needs \\d+ bytes"):
        layer(_x())
    assert not layer.built
    with pytest.raises(ValueError, match=named):
        layer.build((None, 6, 7, 3))


@pytest.mark.parametrize("rank", [1, 2])
def test_huge_dilation_names_the_argument(rank):
    """dilation_rate=2**62 with `same` padding used to fail inside the backend with NumPy's
    "Maximum allowed dimension exceeded"."""
    x = _x((1, 9, 3) if rank == 1 else (1, 9, 9, 3))
    cls = sg.SeparableConv1D if rank == 1 else sg.SeparableConv2D
    layer = cls(4, 3, padding="same", dilation_rate=2**62, backend="numpy")
    with pytest.raises(ValueError, match="`dilation_rate`=.*4611686018427387904.*`kernel_size`=.*2147483647"):
        layer(x)
    assert not layer.built
    with pytest.raises(ValueError, match="`dilation_rate`"):
        ops.separable_conv(rank, x, np.ones((3,) * rank + (3, 1), "f4"), np.ones((1,) * rank + (3, 2), "f4"),
                           padding="same", dilation_rate=2**62)
    with pytest.raises(ValueError, match="`dilation_rate`"):
        layer.compute_output_shape(x.shape)


def test_set_weights_and_build_name_what_they_received():
    layer = _layer()
    with pytest.raises(TypeError, match="`build` expects `input_shape`.*received 5"):
        layer.build(5)
    layer.build((None, 6, 7, 3))
    with pytest.raises(TypeError, match="`set_weights` expects a list of 3 arrays; received None"):
        layer.set_weights(None)


def test_float128_input_is_refused_by_the_layer_as_by_ops():
    """Keras refuses float128 inputs (issue 18 records it); the layer used to cast them to
    float32 silently while the ops refused them."""
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 on this platform")
    x = _x().astype(np.longdouble)
    with pytest.raises(TypeError,
                       match="floating-point input \\(float16, float32, float64, bfloat16\\); received dtype float128"):
        _layer()(x)
    with pytest.raises(TypeError, match="`x` must be a floating-point array"):
        ops.separable_conv2d(x, np.ones((3, 3, 3, 1), "f4"), np.ones((1, 1, 3, 2), "f4"))


def _inf_weight_case(data_format="channels_last", rank=2):
    """Positive inputs, positive weights, one +inf depthwise weight at the first tap of
    channel 0: inside the image that tap gives +inf, at the top/left border it meets the
    zero padding."""
    rng = np.random.default_rng(4)
    shape = (1, 5, 6, 3) if rank == 2 else (1, 7, 3)
    x = rng.uniform(1, 2, shape).astype("float32")
    dk = rng.uniform(0.5, 1, (3,) * rank + (3, 1)).astype("float32")
    dk[(0,) * rank + (0, 0)] = np.inf
    pk = rng.uniform(0.5, 1, (1,) * rank + (3, 2)).astype("float32")
    if data_format == "channels_first":
        x = np.moveaxis(x, -1, 1).copy()
    return x, dk, pk


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [1, 2])
def test_inf_depthwise_weight_meets_zero_padding_as_ieee_says(rank, data_format):
    """The chosen semantics (README, Semantics): `same` padding is zeros that the taps
    multiply, so 0 * inf = NaN where the inf tap falls in the padding. Keras (TF's CPU
    kernel) skips padded taps and keeps those border outputs finite; we do not match that
    (the CUDA kernels stage zero padding in shared memory the same way)."""
    x, dk, pk = _inf_weight_case(data_format, rank)
    with np.errstate(invalid="ignore"):
        y = ops.separable_conv(rank, x, dk, pk, None, padding="same", data_format=data_format)
        ref = ops.reference_separable_conv(rank, x, dk, pk, None, padding="same", data_format=data_format)
    y = np.moveaxis(y, 1, -1) if data_format == "channels_first" else y
    border = np.zeros(y.shape[1:-1], bool)
    border[0] = True  # tap (0, 0) reads the padding for the first row (and, in 2D, column)
    if rank == 2:
        border[:, 0] = True
    assert np.isnan(y[0][border]).all()
    assert np.isposinf(y[0][~border]).all()
    ref = np.moveaxis(ref, 1, -1) if data_format == "channels_first" else ref
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    valid = ops.separable_conv(rank, x, dk, pk, None, padding="valid", data_format=data_format)
    assert np.isposinf(valid).all()  # no padding, no NaN


def _peak_bytes(fn):
    """Peak of NumPy's (and Python's) allocations while fn runs (NumPy reports its data
    buffers to tracemalloc): no need to allocate gigabytes to see that none are."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


BIG = 2**31 + 8  # elements: an 8 GiB float32 (16 GiB float64) array were it materialised


def test_huge_stride_over_a_broadcast_input_computes_only_its_outputs():
    """(1, 2^31 + 8, 1) broadcast, strides 2^30: 3 outputs, which read 9 input values; the
    tile used to span the whole padded row (8 GiB)."""
    x = np.broadcast_to(np.float32(1.5), (1, BIG, 1))
    dk, pk = np.full((3, 1, 1), 2, "f4"), np.full((1, 1, 2), 3, "f4")
    y, peak = _peak_bytes(lambda: ops.separable_conv1d(x, dk, pk, strides=2**30, padding="same"))
    assert y.shape == (1, 3, 2) and peak < 2**20
    small = np.full((1, 2 * 2**4 + 8, 1), 1.5, "f4")  # the same geometry scaled down
    np.testing.assert_array_equal(y[0, 1:], ops.separable_conv1d(small, dk, pk, strides=2**4, padding="same")[0, 1:])
    np.testing.assert_array_equal(y, np.full((1, 3, 2), 2 * 1.5 * 3 * 3))  # 3 taps inside the input


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank, kernel, strides, dilation, padding", [
    (2, 1, 2, 1, "same"), (2, 2, (5, 3), 1, "valid"), (2, 3, (9, 1), 1, "same"),
    (2, 3, 1, (7, 2), "same"), (2, 3, 1, (9, 2), "valid"),
    (1, 2, 7, 1, "same"), (1, 3, 1, 11, "causal"), (1, 3, 1, 10, "valid"),
])
def test_strides_and_dilations_far_larger_than_the_kernel_match_the_reference(rank, kernel, strides, dilation,
                                                                               padding, data_format):
    """The tiles that copy only each output's taps (used when that is fewer positions than
    the span the outputs cover) compute what the float64 reference computes."""
    shape = (2, 3, 23) if rank == 1 else (2, 3, 23, 19)
    x = _x(shape if data_format == "channels_first" else (shape[0],) + shape[2:] + (3,), seed=7)
    dk, pk, b = _x((kernel,) * rank + (3, 2), seed=8), _x((1,) * rank + (6, 5), seed=9), _x((5,), seed=10)
    args = (b, strides, padding, data_format, dilation)
    y = ops.separable_conv(rank, x, dk, pk, *args, activation="softmax")
    assert_matches(y, ops.reference_separable_conv(rank, x, dk, pk, *args, activation="softmax"))


def test_huge_strides_over_an_as_strided_view_compute_only_their_outputs():
    """A (1, 65536, 65536, 1) view of 128 Ki floats (x[h, w] = base[h + w]), strides 2^14:
    a 4x4 output, computed as from the same values materialised at a small size."""
    base = np.arange(2 * 65536, dtype="float32") / 65536
    x = np.lib.stride_tricks.as_strided(base, (1, 65536, 65536, 1), (0, 4, 4, 4), writeable=False)
    dk, pk = _x((3, 3, 1, 2), seed=5), _x((1, 1, 2, 3), seed=6)
    layer = _layer(filters=3, strides=2**14, depth_multiplier=2)
    layer.build(x.shape)
    layer.set_weights([dk, pk, np.zeros(3, "f4")])
    y, peak = _peak_bytes(lambda: layer(x))
    assert y.shape == (1, 4, 4, 3) and peak < 2**20
    pad = sg.geometry.pad_before(65536, 3, 2**14, 1, "same")
    rows = np.arange(4)[:, None] * 2**14 + np.arange(3) - pad  # the rows (columns) each output reads
    expected = np.zeros((1, 4, 4, 3))
    for i in range(4):
        for j in range(4):
            r, c = rows[i], rows[j]
            inside = (r[:, None] >= 0) & (r[:, None] < 65536) & (c >= 0) & (c < 65536)
            patch = np.where(inside, base[np.clip(r[:, None] + c, 0, base.size - 1)], 0)
            expected[0, i, j] = ops.reference_separable_conv(2, patch[None, :, :, None], dk, pk)[0, 0, 0]
    assert_matches(y, expected)


def test_float64_broadcast_into_a_float32_layer_is_not_materialised():
    """Keras casts the input to the layer's dtype; the cast of a broadcast is done on its
    compact form (one value here), not on 2^31 + 8 of them (8 GiB)."""
    x = np.broadcast_to(np.float64(0.25), (1, BIG, 1))
    layer = sg.SeparableConv1D(2, 3, strides=2**30, backend="numpy")
    y, peak = _peak_bytes(lambda: layer(x))
    assert y.dtype == np.float32 and y.shape == (1, 3, 2) and peak < 2**20
    dk, pk, b = layer.get_weights()
    np.testing.assert_allclose(y, np.broadcast_to(0.25 * dk.sum(axis=0) @ pk[0] + b, (1, 3, 2)), rtol=1e-6)


def test_what_cannot_fit_is_refused_with_the_bytes_it_needs():
    import re

    from sepconv_gpu import geometry

    memory = geometry.host_memory_bytes()
    if memory is None:
        pytest.skip("this OS does not say how much memory it has")
    n = memory // 8 + 1  # a float32 output of n * 2 values: more than the machine has
    x = np.broadcast_to(np.float32(1), (1, n, 1))
    with pytest.raises(ValueError, match=f"output shape \\(1, {n}, 2\\).* needs \\d+ bytes") as info:
        ops.separable_conv1d(x, np.ones((1, 1, 1), "f4"), np.ones((1, 1, 2), "f4"))
    assert int(re.search(r"needs (\d+) bytes", str(info.value)).group(1)) >= 8 * n


def test_a_cast_that_cannot_fit_is_refused_with_the_bytes_it_needs(monkeypatch):
    """A view that is no broadcast must be materialised to be cast to the layer's dtype:
    refused first when the machine cannot hold it (here a machine of 1 MiB)."""
    from sepconv_gpu import geometry

    monkeypatch.setattr(geometry, "host_memory_bytes", lambda: 2**20)
    x = np.zeros((1, 2**19, 2))[:, :, :1]  # 2^19 float64 values, no zero stride
    layer = sg.SeparableConv1D(2, 3, backend="numpy")
    with pytest.raises(ValueError, match=f"Casting an array of shape \\(1, {2**19}, 1\\) to float32 needs "
                                         f"{2**21} bytes \\(.*GiB\\) of memory, more than this machine has \\(1048576"):
        layer(x)


@pytest.mark.parametrize("rank", [1, 2])
def test_a_stride_beyond_any_input_gives_one_output_per_axis(rank):
    """strides=10**30 with "same" padding: one output per spatial axis, which neither it nor
    its padding depends on, so it equals the call whose stride is the input's length."""
    x = np.random.default_rng(3).standard_normal((2,) + (5,) * rank + (3,)).astype("float32")
    dk = np.random.default_rng(4).standard_normal((3,) * rank + (3, 2)).astype("float32")
    pk = np.random.default_rng(5).standard_normal((1,) * rank + (6, 4)).astype("float32")
    y = ops.separable_conv(rank, x, dk, pk, strides=10**30, padding="same", backend="numpy")
    assert y.shape == (2,) + (1,) * rank + (4,)
    assert_matches(y, ops.reference_separable_conv(rank, x, dk, pk, strides=5, padding="same"))
    layer = (sg.SeparableConv1D if rank == 1 else sg.SeparableConv2D)(
        4, 3, strides=10**30, padding="same", backend="numpy")
    assert layer(x).shape == y.shape == layer.compute_output_shape(x.shape)
