"""Records Keras 3's activations on a fixed grid into activations.npz / activations.json.

Run by hand where Keras 3 and JAX are installed (never by the tests, which only read the
files):  JAX_ENABLE_X64=1 KERAS_BACKEND=jax python tests/data/keras_golden/record_activations.py
"""
import json
import pathlib

import keras
import numpy as np

HERE = pathlib.Path(__file__).parent

# (Keras name, keyword arguments): every activation, defaults and some other parameters.
CASES = [(name, {}) for name in (
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus",
    "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh",
    "tanh_shrink")] + [
    ("threshold", {"threshold": 0.25, "default_value": -1.5}),
    ("leaky_relu", {"negative_slope": 0.1}),
    ("elu", {"alpha": 0.5}),
    ("celu", {"alpha": 2.0}),
    ("gelu", {"approximate": True}),
    ("hard_shrink", {"threshold": 1.2}),
    ("soft_shrink", {"threshold": 0.3}),
    ("squareplus", {"b": 0.7}),
    ("relu", {"negative_slope": 0.1, "max_value": 4.0, "threshold": 0.5}),
    ("relu", {"max_value": 6.0}),
    ("relu", {"threshold": 1.0}),
    ("softmax", {"axis": 0}),
]


def grid():
    """(40, 8): the breakpoints of the piecewise activations, then random values."""
    points = [-6, -3, -2.5, -1.2, -1, -0.5, -0.3, 0, 0.25, 0.3, 0.5, 1, 1.2, 2.5, 3, 6]
    rng = np.random.default_rng(2024)
    rest = rng.normal(0, 2.5, 40 * 8 - len(points))
    return np.concatenate([points, rest]).reshape(40, 8)


def glu_layer_shapes():
    """What Keras's layer reports for glu: compute_output_shape and the called shape."""
    out = []
    for data_format, shape in (("channels_last", (2, 5, 7, 3)), ("channels_first", (2, 3, 5, 8))):
        layer = keras.layers.SeparableConv2D(6, 3, activation="glu", data_format=data_format)
        y = layer(np.zeros(shape, "float32"))
        out.append({"data_format": data_format, "filters": 6, "kernel_size": 3,
                    "input_shape": list(shape),
                    "compute_output_shape": list(layer.compute_output_shape(shape)),
                    "call_shape": list(y.shape)})
    return out


def main():
    arrays, cases = {"x": grid()}, []
    for i, (name, params) in enumerate(CASES):
        cid = f"a{i:03d}"
        fn = getattr(keras.activations, name)
        for dtype in ("float32", "float64"):
            x = arrays["x"].astype(dtype)
            arrays[f"{cid}_{dtype}"] = np.asarray(keras.ops.convert_to_numpy(fn(x, **params)))
        cases.append({"id": cid, "name": name, "params": params})
    meta = {"about": "keras.activations.<name>(x, **params) on x (40, 8) in float32 and "
                     "float64; recorded by record_activations.py",
            "keras": keras.__version__, "backend": keras.backend.backend(),
            "cases": cases, "glu_layer": glu_layer_shapes()}
    np.savez_compressed(HERE / "activations.npz", **arrays)
    (HERE / "activations.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
