"""The TF1 API: tf.compat.v1.layers.SeparableConv{1,2}D and separable_conv{1,2}d.

Mirrors TensorFlow's own tf.compat.v1 separable convolution layer tests (shapes, argument
checks, variable scopes and reuse, regularizers, constraints, trainable) and checks that
the TF1 layers compute what the Keras-like layers and the float64 reference compute.
"""
import threading
import warnings

import numpy as np
import pytest

import sepconv_gpu as sg
from _cases import assert_matches
from sepconv_gpu import ops
from sepconv_gpu.compat import v1
from sepconv_gpu.compat.v1 import layers as v1_layers

BACKENDS = [pytest.param("numpy"), pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def fresh_graph():
    v1.reset_default_graph()
    with sg.use_backend("numpy"):
        yield
    v1.reset_default_graph()


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(size=(5, 7, 9, 4)).astype(np.float32)


def functional(*args, **kwargs):
    """Call a functional form, checking it warns like TF's (and only that way)."""
    fn = v1_layers.separable_conv1d if np.ndim(args[0]) == 3 else v1_layers.separable_conv2d
    with pytest.warns(DeprecationWarning, match=r"sepconv_gpu\.SeparableConv[12]D"):
        return fn(*args, **kwargs)


def names(variables):
    return [v.name for v in variables]


# -- arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, word", [
    (dict(data_format="invalid"), "data_format"),
    (dict(strides=(1, 2, 3)), "strides"),
    pytest.param(dict(strides=None), "strides"),
    (dict(kernel_size=(1, 2, 3)), "kernel_size"),
    pytest.param(dict(kernel_size=None), "kernel_size"),
])
def test_invalid_arguments(images, kwargs, word):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=word):
        functional(images, 32, **kwargs)
    with pytest.raises(ValueError, match=word):
        v1_layers.SeparableConv2D(32, **kwargs)
    assert v1.global_variables() == []


# -- shapes ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, x_shape, y_shape, dk_shape, pk_shape", [
    (dict(kernel_size=[3, 3]), (5, 7, 9, 4), (5, 5, 7, 32), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=[3, 3], depth_multiplier=2), (5, 7, 9, 4), (5, 5, 7, 32), (3, 3, 4, 2), (1, 1, 8, 32)),
    (dict(kernel_size=3), (5, 7, 9, 4), (5, 5, 7, 32), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=[3, 3], data_format="channels_first"), (5, 4, 7, 9), (5, 32, 5, 7), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=[3, 3], padding="same"), (5, 7, 9, 4), (5, 7, 9, 32), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=[3, 3], strides=(2, 2), padding="same"), (5, 6, 8, 4), (5, 3, 4, 32), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=[3, 3], strides=2, padding="same"), (5, 6, 8, 4), (5, 3, 4, 32), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=[3, 3], strides=(2, 1), padding="same"), (5, 6, 8, 4), (5, 3, 8, 32), (3, 3, 4, 1), (1, 1, 4, 32)),
    (dict(kernel_size=3), (5, 7, 4), (5, 5, 32), (3, 4, 1), (1, 4, 32)),
    (dict(kernel_size=3, depth_multiplier=2), (5, 7, 4), (5, 5, 32), (3, 4, 2), (1, 8, 32)),
    (dict(kernel_size=3, data_format="channels_first"), (5, 4, 7), (5, 32, 5), (3, 4, 1), (1, 4, 32)),
    (dict(kernel_size=3, padding="same"), (5, 7, 4), (5, 7, 32), (3, 4, 1), (1, 4, 32)),
    (dict(kernel_size=3, padding="causal"), (5, 7, 4), (5, 7, 32), (3, 4, 1), (1, 4, 32)),
    (dict(kernel_size=3, strides=2, padding="same"), (5, 8, 4), (5, 4, 32), (3, 4, 1), (1, 4, 32)),
])
@pytest.mark.parametrize("form", ["layer", "functional"])
def test_shapes(form, kwargs, x_shape, y_shape, dk_shape, pk_shape):
    x = np.ones(x_shape, np.float32)
    if form == "layer":
        cls = v1_layers.SeparableConv1D if len(x_shape) == 3 else v1_layers.SeparableConv2D
        layer = cls(32, activation="relu", **kwargs)
        y = layer.apply(x)
        assert sg.activations.serialize(layer.activation) == "relu"
        assert [w.shape for w in layer.variables] == [dk_shape, pk_shape, (32,)]
    else:
        y = functional(x, 32, activation="relu", **kwargs)
    assert y.shape == y_shape
    assert [v.shape for v in v1.global_variables()] == [dk_shape, pk_shape, (32,)]


def test_causal_padding_is_1d_only(images):
    with pytest.raises(ValueError, match="[Cc]ausal"):
        functional(images, 32, 3, padding="causal")


# -- names and reuse ---------------------------------------------------------------------

def test_weight_names_and_unique_scopes(images):
    layer = v1_layers.SeparableConv2D(32, 3)
    assert layer.name == "separable_conv2d"
    with pytest.raises(ValueError, match="has not been used yet"):
        layer.scope_name
    layer.apply(images)
    assert layer.scope_name == "separable_conv2d"
    assert names(layer.variables) == names(layer.weights) == [
        "separable_conv2d/depthwise_kernel:0", "separable_conv2d/pointwise_kernel:0",
        "separable_conv2d/bias:0"]
    assert layer.depthwise_kernel.path == "separable_conv2d/depthwise_kernel"
    functional(images, 32, 3)
    functional(images[..., :1], 8, 3, padding="same")  # a fresh name takes any shape
    functional(images[:, 0], 32, 3)
    named = [v1_layers.SeparableConv2D(32, 3, name="sep") for _ in range(2)]
    for layer in named:
        layer(images)
    assert [layer.name for layer in named] == ["sep", "sep"]  # TF1: the name stays,
    assert [layer.scope_name for layer in named] == ["sep", "sep_1"]  # the scope is unique
    assert sorted({v.path.rsplit("/", 1)[0] for v in v1.global_variables()}) == [
        "sep", "sep_1", "separable_conv1d", "separable_conv2d", "separable_conv2d_1",
        "separable_conv2d_2"]
    assert isinstance(named[0], sg.SeparableConv2D)


def test_no_reuse_gives_distinct_weights(images):
    functional(images, 32, [3, 3])
    assert len(v1.trainable_variables()) == 3
    functional(images, 32, [3, 3])
    assert len(v1.trainable_variables()) == 6
    first, second = v1.global_variables()[:3], v1.global_variables()[3:]
    assert not any(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first[:2], second[:2]))


def test_functional_reuse(images):
    y1 = functional(images, 32, [3, 3], name="sepconv1")
    assert len(v1.trainable_variables()) == 3
    y2 = functional(images, 32, [3, 3], name="sepconv1", reuse=True)
    assert len(v1.trainable_variables()) == 3
    np.testing.assert_array_equal(y1, y2)


def test_reuse_errors(images):
    with pytest.raises(ValueError, match="Variable sepconv1/depthwise_kernel does not exist"):
        functional(images, 32, 3, name="sepconv1", reuse=True)
    assert v1.global_variables() == []
    functional(images, 32, 3, name="sepconv1")
    with pytest.raises(ValueError, match="Variable sepconv1/depthwise_kernel already exists, disallowed"):
        functional(images, 32, 3, name="sepconv1")
    with pytest.raises(ValueError, match="Trying to share variable sepconv1/depthwise_kernel"):
        functional(images, 32, 5, name="sepconv1", reuse=True)
    with pytest.raises(ValueError, match="reuse"):
        functional(images, 32, 3, name="sepconv1", reuse="yes")
    assert len(v1.global_variables()) == 3


def test_auto_reuse_creates_then_shares(images):
    a = v1_layers.SeparableConv2D(32, 3, name="auto", _scope="auto", _reuse=v1.AUTO_REUSE)
    a(images)
    y = functional(images, 32, 3, name="auto", reuse=v1.AUTO_REUSE)
    assert len(v1.global_variables()) == 3
    np.testing.assert_array_equal(y, a(images))


def test_scope_reuse(images):
    def block():
        functional(images, 32, [3, 3], name="sepconv1")
        functional(images, 16, [3, 3])  # unnamed: the same unique name each time around
        functional(images, 8, [3, 3])

    with v1.variable_scope("scope"):
        block()
    assert len(v1.trainable_variables()) == 9
    with v1.variable_scope("scope", reuse=True) as scope:
        assert scope.reuse is True
        block()
        with v1.variable_scope("inner", reuse=False):
            assert v1.get_variable_scope().reuse is True  # TF1: reuse cannot be turned off
    assert len(v1.trainable_variables()) == 9
    assert [v.path for v in v1.global_variables()[::3]] == [
        "scope/sepconv1/depthwise_kernel", "scope/separable_conv2d/depthwise_kernel",
        "scope/separable_conv2d_1/depthwise_kernel"]
    with v1.variable_scope(scope):  # a VariableScope is re-entered as is
        assert v1.get_variable_scope().name == "scope"
        functional(images, 32, [3, 3], name="sepconv1")
    with pytest.raises(ValueError, match="already exists"), v1.variable_scope("scope"):
        functional(images, 32, [3, 3], name="sepconv1")
    with pytest.raises(ValueError, match="without a name_or_scope"), v1.variable_scope(None, "d", reuse=True):
        pass


def test_reused_weights_are_shared(images):
    creator = v1_layers.SeparableConv2D(32, 3, name="s", _scope="s", bias_regularizer="l2")
    creator(images)
    reuser = v1_layers.SeparableConv2D(32, 3, name="s", _scope="s", _reuse=True, bias_regularizer="l2")
    reuser(images)
    assert all(a is b for a, b in zip(creator.weights, reuser.weights))
    reuser.set_weights([np.full(w.shape, 0.5, np.float32) for w in reuser.weights])
    np.testing.assert_array_equal(creator(images), reuser(images))
    assert len(creator.losses) == 1 and reuser.losses == []  # TF1 counts a penalty once


def test_scope_initializer(images):
    with v1.variable_scope("scope", initializer="ones"):
        functional(images, 32, [3, 3], name="sepconv1",
                   pointwise_initializer=sg.initializers.Constant(2.0))
    dk, pk, b = v1.global_variables()
    assert [dk.name, pk.name, b.name] == [
        "scope/sepconv1/depthwise_kernel:0", "scope/sepconv1/pointwise_kernel:0", "scope/sepconv1/bias:0"]
    np.testing.assert_array_equal(dk.numpy(), np.ones((3, 3, 4, 1)))
    np.testing.assert_array_equal(pk.numpy(), np.full((1, 1, 4, 32), 2.0))  # given: kept
    np.testing.assert_array_equal(b.numpy(), np.zeros(32))  # bias default: zeros


def test_scopes_are_per_thread(images):
    seen = {}

    def work(name):
        with v1.variable_scope(name):
            seen[name] = [v1.get_variable_scope().name]
            layer = v1_layers.SeparableConv2D(4, 3, backend="numpy")  # a new thread's context
            layer(images)
            seen[name].append(layer.scope_name)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {f"t{i}": [f"t{i}", f"t{i}/separable_conv2d"] for i in range(4)}
    assert v1.get_variable_scope().name == ""
    assert len(v1.global_variables()) == 12


# -- losses, constraints, trainable, updates ---------------------------------------------

@pytest.mark.parametrize("role", ["depthwise", "pointwise", "bias"])
def test_weight_regularizer(images, role):
    reg = lambda w: 0.1 * float(np.sum(w))  # noqa: E731
    layer = v1_layers.SeparableConv2D(32, [3, 3], **{f"{role}_regularizer": reg})
    layer.apply(images)
    weight = getattr(layer, f"{role}_kernel" if role != "bias" else "bias")
    assert layer.losses == layer.get_losses_for(None) == [pytest.approx(reg(weight.numpy()))]
    assert layer.get_losses_for(images) == []


def test_activity_regularizer(images):
    layer = v1_layers.SeparableConv2D(32, [3, 3], activity_regularizer="l2")
    y = layer.apply(images)
    expected = 0.01 * float(np.sum(np.square(y, dtype=np.float64))) / images.shape[0]
    assert layer.get_losses_for(images) == [pytest.approx(expected, rel=1e-5)]
    assert layer.get_losses_for([images]) == layer.losses == layer.get_losses_for(images)
    assert layer.get_losses_for(None) == []
    assert layer.get_losses_for(images.copy()) == []


def test_no_updates(images):
    layer = v1_layers.SeparableConv2D(32, 3)
    layer.apply(images)
    assert layer.updates == layer.get_updates_for(images) == layer.get_updates_for(None) == []


def test_no_bias(images):
    layer = v1_layers.SeparableConv2D(32, [3, 3], use_bias=False)
    y = layer.apply(images)
    assert names(layer.variables) == ["separable_conv2d/depthwise_kernel:0", "separable_conv2d/pointwise_kernel:0"]
    assert layer.bias is None and y.shape == (5, 5, 7, 32)


def test_constraints(images):
    dk_c, pk_c, b_c = (lambda w: np.zeros_like(w)), (lambda w: np.ones_like(w)), (lambda w: w + 2)
    layer = v1_layers.SeparableConv2D(32, 3, depthwise_constraint=dk_c, pointwise_constraint=pk_c,
                                      bias_constraint=b_c)
    y = layer.apply(images)
    assert (layer.depthwise_constraint, layer.pointwise_constraint, layer.bias_constraint) == (dk_c, pk_c, b_c)
    assert [v.constraint for v in layer.variables] == [dk_c, pk_c, b_c]
    np.testing.assert_array_equal(layer.apply(images), y)  # never applied in the forward pass
    layer.apply_constraints()
    dk, pk, b = layer.get_weights()
    assert not dk.any() and (pk == 1).all() and (b == 2).all()
    np.testing.assert_array_equal(v1.global_variables()[1].numpy(), pk)


@pytest.mark.parametrize("form", ["layer", "functional"])
def test_not_trainable(images, form):
    if form == "layer":
        layer = v1_layers.SeparableConv2D(32, 3, trainable=False)
        layer.apply(images)
        assert layer.trainable_variables == layer.trainable_weights == []
        assert layer.non_trainable_variables == layer.variables and len(layer.variables) == 3
    else:
        functional(images, 32, 3, trainable=False)
    assert v1.trainable_variables() == [] and len(v1.global_variables()) == 3
    assert not any(v.trainable for v in v1.global_variables())


def test_deprecation_warning_only_on_functional_forms(images):
    with pytest.warns(DeprecationWarning, match=r"Please use `sepconv_gpu\.SeparableConv2D`"):
        v1_layers.separable_conv2d(images, 4, 3)
    with pytest.warns(DeprecationWarning, match=r"Please use `sepconv_gpu\.SeparableConv1D`"):
        v1_layers.separable_conv1d(images[:, 0], 4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        v1_layers.SeparableConv2D(4, 3).apply(images)


def test_package_attribute_path():
    assert sg.compat.v1.layers.SeparableConv2D is v1_layers.SeparableConv2D
    assert sg.compat.v1.AUTO_REUSE is v1.AUTO_REUSE


# -- numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank, kwargs", [
    (2, dict(kernel_size=3, padding="same", strides=2, depth_multiplier=2, activation="relu")),
    (2, dict(kernel_size=(3, 2), data_format="channels_first", dilation_rate=2)),
    (1, dict(kernel_size=5, padding="causal", dilation_rate=2, activation="tanh")),
    (1, dict(kernel_size=3, padding="same", strides=2, use_bias=False)),
])
def test_matches_keras_layer_and_reference(backend, rank, kwargs):
    rng = np.random.default_rng(rank)
    shape = (2, 9, 11, 3)[:rank + 1] + (3,)
    if kwargs.get("data_format") == "channels_first":
        shape = (shape[0], shape[-1]) + shape[1:-1]
    x = rng.standard_normal(shape).astype(np.float32)
    v1_cls, keras_cls = {1: (v1_layers.SeparableConv1D, sg.SeparableConv1D),
                         2: (v1_layers.SeparableConv2D, sg.SeparableConv2D)}[rank]
    bias_init = sg.initializers.RandomNormal(seed=3)
    layer = v1_cls(6, **kwargs, bias_initializer=bias_init, backend=backend)
    y = layer.apply(x)
    keras = keras_cls(6, **kwargs, backend=backend)
    keras.build(x.shape)
    keras.set_weights(layer.get_weights())
    np.testing.assert_array_equal(y, keras(x))
    weights = layer.get_weights()
    expected = ops.reference_separable_conv(
        rank, x, weights[0], weights[1], weights[2] if len(weights) == 3 else None,
        layer.strides, layer.padding, layer.data_format, layer.dilation_rate, layer.activation)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_matches(y, expected)
    # convolution_op: the same convolution with a given kernel pair, no bias or activation
    conv = layer.convolution_op(x, (layer.depthwise_kernel, layer.pointwise_kernel))
    expected_conv = ops.reference_separable_conv(
        rank, x, weights[0], weights[1], None, layer.strides, layer.padding, layer.data_format,
        layer.dilation_rate)
    assert_matches(conv, expected_conv)
    with pytest.raises(ValueError, match="pair"):
        layer.convolution_op(x, weights[0])


def test_hard_sigmoid_by_name_is_tf_keras_s_in_tf1_layers():
    """TF1 layers resolve names through tf.keras 2.x: clip(0.2·x + 0.5, 0, 1), not Keras 3's
    relu6(x + 3) / 6 (up to 0.08 apart); the Keras 3 layer keeps Keras 3's."""
    x = np.linspace(-4, 4, 2 * 5 * 5 * 2).reshape(2, 5, 5, 2).astype("float64")
    v1 = v1_layers.SeparableConv2D(3, 3, activation="hard_sigmoid", dtype="float64", backend="numpy")
    y = v1.apply(x)
    keras3 = sg.SeparableConv2D(3, 3, activation="hard_sigmoid", dtype="float64", backend="numpy")
    keras3.build(x.shape)
    keras3.set_weights(v1.get_weights())
    linear = sg.ops.separable_conv2d(x, *v1.get_weights())
    np.testing.assert_allclose(y, np.clip(0.2 * linear + 0.5, 0, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(keras3(x), np.clip(linear + 3, 0, 6) / 6, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(y - keras3(x))) > 1e-3


# -- issue 18 --------------------------------------------------------------------------------

def test_empty_name_is_no_name_as_in_tf(images):
    """TF 2.21 accepts `separable_conv2d(x, 8, 3, name="")`: the scope is the default
    `separable_conv2d` (made unique), as for no name (issue 18 records it)."""
    functional(images, 8, 3, name="")
    functional(images, 8, 3, name="")
    layer = v1_layers.SeparableConv2D(8, 3, name="")
    layer(images)
    assert layer.name == layer.scope_name == "separable_conv2d_2"
    assert sorted({v.path.rsplit("/", 1)[0] for v in v1.global_variables()}) == [
        "separable_conv2d", "separable_conv2d_1", "separable_conv2d_2"]


def test_called_layer_pickles_and_keeps_its_weights(images):
    """The last call's inputs are kept by weak reference, which cannot be pickled: a called
    TF1 layer could not be pickled (nor sent to dask's processes scheduler)."""
    import pickle

    layer = v1_layers.SeparableConv2D(8, 3, padding="same")
    y = layer(images)
    copy = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(copy(images), y)
    assert names(copy.variables) == names(layer.variables) and copy.scope_name == layer.scope_name
    assert copy.get_losses_for(images) == []  # the copy was never called on these inputs


def test_convolution_op_wants_the_pair_not_one_array(images):
    layer = v1_layers.SeparableConv2D(8, 3)
    layer(images)
    for kernel, shown in ((layer.depthwise_kernel.numpy(), "an array of shape \\(3, 3, 4, 1\\)"),
                          (np.ones((2, 3, 4, 1), "f4"), "an array of shape \\(2, 3, 4, 1\\)"),  # unpacks into 2
                          ((layer.depthwise_kernel,) * 3, "a tuple of 3 items")):
        with pytest.raises(ValueError, match=f"`kernel` must be the pair \\(depthwise_kernel, "
                                             f"pointwise_kernel\\); received {shown}"):
            layer.convolution_op(images, kernel)
    y = layer.convolution_op(images, [layer.depthwise_kernel, layer.pointwise_kernel])
    assert y.shape == (5, 5, 7, 8)
