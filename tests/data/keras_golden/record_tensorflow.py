"""Records, on Keras 3's TensorFlow backend, the layer cases listed in LAYER_CASES (their
manifest.json entries and cases/<id>.npz, rewritten in place) and softmax / log_softmax of
rows holding NaN and infinities (nonfinite_softmax.json).

Run by hand where Keras 3 and TensorFlow are installed (never by the tests, which only
read the files):  python tests/data/keras_golden/record_tensorflow.py

The layer cases here replace five earlier recordings that could not see part of what
they test: log_softmax over an axis of size 1 is 0 whatever the convolution computed, and
softmax over W of a channels_first output cancels the bias (constant along W). Each case
below has at least 2 filters and an output at least 2 wide on the softmax axis, and a
channels_first softmax case has no bias. Weights are random and nonzero (bias included).
As for every channels_first case in the manifest (its "about"), the channels_first output
is Keras's channels_last result transposed, the activation then applied to the
channels_first tensor as Keras does: Keras 3.15 on the CPU mis-pads strided 'same'
channels_first convolutions.
"""
import json
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).parent

# id: (layer class, kwargs, input shape)
LAYER_CASES = {
    "c019": ("SeparableConv2D", dict(filters=2, kernel_size=5, strides=3, padding="same",
                                     data_format="channels_last", dilation_rate=1,
                                     depth_multiplier=2, activation="log_softmax", use_bias=True),
             (2, 13, 15, 8)),
    "c040": ("SeparableConv2D", dict(filters=5, kernel_size=[3, 5], strides=3, padding="same",
                                     data_format="channels_first", dilation_rate=1,
                                     depth_multiplier=2, activation="softmax", use_bias=False),
             (2, 1, 3, 10)),
    "c041": ("SeparableConv2D", dict(filters=8, kernel_size=5, strides=1, padding="same",
                                     data_format="channels_first", dilation_rate=[2, 3],
                                     depth_multiplier=3, activation="log_softmax",
                                     use_bias=False),
             (3, 3, 16, 15)),
    "c063": ("SeparableConv2D", dict(filters=2, kernel_size=[3, 5], strides=2, padding="valid",
                                     data_format="channels_first", dilation_rate=1,
                                     depth_multiplier=1, activation="log_softmax",
                                     use_bias=False),
             (1, 8, 12, 7)),
    "c094": ("SeparableConv1D", dict(filters=4, kernel_size=3, strides=2, padding="same",
                                     data_format="channels_first", dilation_rate=1,
                                     depth_multiplier=2, activation="softmax", use_bias=False),
             (1, 2, 18)),
}

NONFINITE_ROW = [float("nan"), float("inf"), float("-inf"), 0.0, 1e30, -1e30]


def record_layer(case_id, layer_name, kwargs, input_shape, rng):
    cls = getattr(keras.layers, layer_name)
    channels_first = kwargs["data_format"] == "channels_first"
    x = rng.normal(0, 1, input_shape).astype("float32")
    # the channels_last twin computes; the real layer (unbuilt) only gives the config
    twin = cls(**dict(kwargs, data_format="channels_last", activation=None))
    x_last = np.moveaxis(x, 1, -1) if channels_first else x
    twin.build(x_last.shape)
    weights = [rng.normal(0, 0.6, w.shape).astype("float32") for w in twin.get_weights()]
    twin.set_weights(weights)
    y = keras.ops.convert_to_numpy(twin(x_last))
    if channels_first:
        y = np.moveaxis(y, -1, 1)
    y = np.asarray(keras.ops.convert_to_numpy(keras.activations.get(kwargs["activation"])(y)))
    layer = cls(**kwargs)
    layer.build(x.shape)
    layer.set_weights(weights)
    if not channels_first:  # the real layer agrees where Keras pads right
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), y, rtol=1e-5, atol=1e-6)
    names = ("depthwise_kernel", "pointwise_kernel", "bias")
    arrays = dict(x=x, y=y.astype("float32"), **dict(zip(names, weights)))
    np.savez_compressed(HERE / "cases" / f"{case_id}.npz", **arrays)
    return {"id": case_id, "oracle": f"keras-{keras.__version__}", "layer": layer_name,
            "kwargs": kwargs, "input_shape": list(input_shape), "output_shape": list(y.shape),
            "weight_shapes": [list(w.shape) for w in weights], "file": f"cases/{case_id}.npz",
            "config": json.loads(json.dumps(layer.get_config()))}


def record_nonfinite_softmax():
    out = {"about": "keras.activations.<name>(x) for x = [row] in each dtype; recorded by "
                    "record_tensorflow.py", "keras": keras.__version__,
           "backend": keras.backend.backend(), "x": NONFINITE_ROW, "outputs": {}}
    for name in ("softmax", "log_softmax"):
        for dtype in ("float32", "float64"):
            x = np.array([NONFINITE_ROW], dtype=dtype)
            y = keras.ops.convert_to_numpy(getattr(keras.activations, name)(x))
            out["outputs"][f"{name}/{dtype}"] = [float(v) for v in np.asarray(y)[0]]
    # json writes NaN / Infinity literals, which Python's json reads back
    (HERE / "nonfinite_softmax.json").write_text(json.dumps(out, indent=1) + "\n")


def main():
    manifest_path = HERE / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    rng = np.random.default_rng(28)
    for i, case in enumerate(manifest["cases"]):
        if case["id"] in LAYER_CASES:
            manifest["cases"][i] = record_layer(case["id"], *LAYER_CASES[case["id"]], rng)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    record_nonfinite_softmax()


if __name__ == "__main__":
    main()
