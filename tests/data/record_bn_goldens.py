"""Record SeparableConv -> BatchNormalization -> ReLU blocks from real Keras (run by hand).

Not run in CI and not imported by the tests: it needs Keras and TensorFlow, which the
project does not depend on. The tests read what it writes (tests/test_fold.py):

    python3 -m pip install keras tensorflow-cpu tf_keras
    python3 tests/data/record_bn_goldens.py          # rewrites tests/data/bn_goldens/

Each case builds the block in Keras 3 (and tf_keras where installed), gives every weight a
nontrivial value with set_weights (random bias, gamma, beta, moving mean and variance, so a
fold that drops or misplaces any of them shows), and saves into bn_goldens/<id>.npz:
x; the separable layer's weights (depthwise_kernel, pointwise_kernel, bias?);
bn_0..bn_k, the BatchNormalization's get_weights() in Keras's own order; y_bn, the output
of BatchNormalization(training=False); y, after ReLU. manifest.json has each layer's
get_config(), the BN variable names in get_weights() order, and the versions used.
Keras 3 channels_first cases use 'valid' padding: Keras 3.15 on the CPU mis-pads strided
'same' channels_first convolutions (see tests/data/keras_golden/manifest.json).
"""
import json
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

OUT = pathlib.Path(__file__).parent / "bn_goldens"

# id, oracle, rank, input shape, separable-conv kwargs, BatchNormalization kwargs
CASES = [
    ("k3_nhwc_xception", "keras", 2, (2, 9, 9, 5),
     dict(filters=8, kernel_size=3, padding="same", use_bias=False), dict()),
    ("k3_nhwc_bias_stride2_nocenter", "keras", 2, (2, 10, 9, 4),
     dict(filters=6, kernel_size=3, strides=2, padding="same"), dict(axis=3, center=False, epsilon=1e-5)),
    ("k3_nhwc_dilated_plain", "keras", 2, (1, 11, 11, 3),
     dict(filters=4, kernel_size=3, dilation_rate=2, depth_multiplier=2), dict(center=False, scale=False)),
    ("k3_nchw_noscale", "keras", 2, (2, 4, 8, 7),
     dict(filters=6, kernel_size=3, depth_multiplier=2, data_format="channels_first"),
     dict(axis=1, scale=False, epsilon=0.01)),
    ("k3_nchw_negative_axis", "keras", 2, (1, 3, 7, 7),
     dict(filters=5, kernel_size=(3, 2), data_format="channels_first", use_bias=False), dict(axis=-3)),
    ("k3_1d_ncw", "keras", 1, (2, 4, 12),
     dict(filters=6, kernel_size=5, padding="valid", data_format="channels_first"), dict(axis=1)),
    ("tfk_nhwc_xception", "tf_keras", 2, (2, 9, 9, 5),
     dict(filters=8, kernel_size=3, padding="same", use_bias=False), dict()),
    ("tfk_nhwc_bias_nocenter", "tf_keras", 2, (2, 8, 8, 4),
     dict(filters=6, kernel_size=3, strides=2, padding="same"), dict(center=False, epsilon=1e-5)),
    ("tfk_nchw_noscale", "tf_keras", 2, (2, 4, 8, 7),
     dict(filters=6, kernel_size=3, data_format="channels_first"), dict(axis=1, scale=False)),
]


def _frameworks():
    import keras

    found = {"keras": keras}
    try:
        import tf_keras

        found["tf_keras"] = tf_keras
    except ImportError:
        print("tf_keras is not installed: its cases are skipped")
    return found


def _jsonable(config):
    return json.loads(json.dumps(config, default=lambda v: list(v) if hasattr(v, "__iter__") else str(v)))


def record_case(frameworks, case_id, oracle, rank, input_shape, conv_kwargs, bn_kwargs, rng):
    k = frameworks[oracle]
    conv = getattr(k.layers, f"SeparableConv{rank}D")(**conv_kwargs, name=f"{case_id}_sepconv")
    bn = k.layers.BatchNormalization(**bn_kwargs, name=f"{case_id}_bn")
    relu = k.layers.ReLU()
    x = rng.standard_normal(input_shape).astype("float32")
    z = conv(x)  # builds
    conv.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5 for w in conv.get_weights()])
    z = np.asarray(conv(x))
    channel_axis = 1 if conv_kwargs.get("data_format") == "channels_first" else -1
    z_scale = float(np.std(z))
    bn(z, training=False)  # builds
    names = [w.name.split("/")[-1].split(":")[0] for w in bn.weights]
    values = {  # moving stats near z's own, so ReLU cuts some outputs and keeps others
        "gamma": rng.uniform(0.5, 1.5, z.shape[channel_axis]),
        "beta": rng.normal(0, 0.5, z.shape[channel_axis]),
        "moving_mean": rng.normal(0, 0.5 * z_scale, z.shape[channel_axis]),
        "moving_variance": rng.uniform(0.2, 2.0, z.shape[channel_axis]) * z_scale ** 2,
    }
    bn_weights = [values[n].astype("float32") for n in names]
    bn.set_weights(bn_weights)
    y_bn = np.asarray(bn(z, training=False))
    y = np.asarray(relu(y_bn))
    conv_weights = dict(zip(("depthwise_kernel", "pointwise_kernel", "bias"), conv.get_weights()))
    np.savez_compressed(OUT / f"{case_id}.npz", x=x, y_bn=y_bn, y=y, **conv_weights,
                        **{f"bn_{i}": w for i, w in enumerate(bn_weights)})
    return {
        "id": case_id, "file": f"{case_id}.npz", "oracle": f"{oracle}-{k.__version__}",
        "layer": f"SeparableConv{rank}D", "input_shape": list(input_shape),
        "sepconv_config": _jsonable(conv.get_config()), "bn_config": _jsonable(bn.get_config()),
        "bn_weight_names": names,
    }


def main():
    import tensorflow as tf

    frameworks = _frameworks()
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(12)
    cases = [record_case(frameworks, *case, rng) for case in CASES if case[1] in frameworks]
    manifest = {
        "about": "SeparableConv -> BatchNormalization(training=False) -> ReLU blocks recorded from real "
                 "Keras by tests/data/record_bn_goldens.py (float32, CPU). y_bn is BN's output, y after ReLU.",
        "oracles": {name: k.__version__ for name, k in frameworks.items()} | {"tensorflow": tf.__version__},
        "cases": cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
