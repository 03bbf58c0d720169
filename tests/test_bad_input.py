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
    from sepconv_gpu.backends import cuda_kernels
    from sepconv_gpu.geometry import make_geometry

    g = make_geometry(2, (64, 1024, 1024, 64), (3, 3, 64, 1), (1, 1, 64, 64), None,
                      (1, 1), "same", "channels_last", (1, 1))
    assert g.output_shape == (64, 1024, 1024, 64)  # "same", stride 1: 2^32 outputs
    strides = (2**26, 1, 2**16, 2**6)  # (n, c, h, w) of a contiguous NHWC input
    launches, _ = cuda_kernels.launch_sequence("float32", g, activations.get("relu"), strides, True)
    assert launches[0].scalars[:4] == strides
    assert all(isinstance(s, np.int64) for s in launches[0].scalars[:4])
    wide = make_geometry(1, (1, 2**31, 1), (3, 1, 1), (1, 1, 1), None,
                         (1,), "same", "channels_last", (1,))
    with pytest.raises(ValueError, match=r"exceed 2\^31 - 1.*input width reach"):
        cuda_kernels.launch_sequence("float32", wide, activations.get(None), (2**31, 1, 0, 1), False)
