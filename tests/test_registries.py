"""What constraints and regularizers share (their `_serialization.Registry` and argument
checks), one parametrized test each for both kinds: unknown identifiers, identifiers
passed through, serialization round trips, bad arguments. Each kind's own names,
defaults and values are in tests/test_constraints.py and tests/test_regularizers.py."""
import json

import pytest

from sepconv_gpu import constraints as C
from sepconv_gpu import regularizers as R

MODULES = {"constraint": C, "regularizer": R}


def _id(value):
    return value if isinstance(value, str) else type(value).__name__


@pytest.mark.parametrize("kind, identifier", [
    ("constraint", "max"), ("constraint", "maxnorm"),
    ("constraint", {"class_name": "Clip", "config": {}}),
    ("regularizer", "l3"), ("regularizer", "L1_L2"),
    ("regularizer", {"class_name": "L3", "config": {}}),
])
def test_unknown_identifier(kind, identifier):
    with pytest.raises(ValueError) as err:
        MODULES[kind].get(identifier)
    assert str(err.value) == f"Could not interpret {kind} identifier: {identifier}"


@pytest.mark.parametrize("kind, instance, cls", [
    ("constraint", C.MaxNorm(3), C.NonNeg),
    ("regularizer", R.L2(0.1), R.L1),
], ids=_id)
def test_instances_classes_and_functions_pass_through(kind, instance, cls):
    module = MODULES[kind]
    assert module.get(None) is None
    assert module.get(instance) is instance
    assert type(module.get(cls)) is cls  # a class: an instance with its defaults

    def custom(w):
        return w
    assert module.get(custom) is custom
    assert module.serialize(custom) == {"module": __name__, "class_name": "function",
                                        "config": "custom", "registered_name": "custom"}


@pytest.mark.parametrize("kind, obj", [
    ("constraint", C.MaxNorm(1.25, [0, 1])), ("constraint", C.MinMaxNorm(0.1, 0.9, 0.5, 2)),
    ("constraint", C.NonNeg()), ("constraint", C.UnitNorm(axis=[0, 1, 2])),
    ("regularizer", R.L1(0.25)), ("regularizer", R.L2(0.125)), ("regularizer", R.L1L2(0.5, 0.0625)),
], ids=_id)
def test_round_trip(kind, obj):
    module = MODULES[kind]
    config = module.serialize(obj)
    assert config == {"module": f"keras.{kind}s", "class_name": type(obj).__name__,
                      "config": obj.get_config(), "registered_name": None}
    assert module.deserialize(json.loads(json.dumps(config))) == obj
    # the tf.keras 2.x form builds the same object
    assert module.get({"class_name": config["class_name"], "config": config["config"]}) == obj
    assert type(obj).from_config(obj.get_config()) == obj


@pytest.mark.parametrize("make, text", [
    (lambda: C.MaxNorm(-1), "max_value=-1"),
    (lambda: C.MaxNorm("2"), "max_value='2'"),
    (lambda: C.MinMaxNorm(min_value=2.0, max_value=1.0), "max_value=1.0"),
    (lambda: C.MinMaxNorm(min_value=-0.5), "min_value=-0.5"),
    (lambda: C.MinMaxNorm(rate=None), "rate=None"),
    (lambda: C.UnitNorm(axis=1.5), "axis=1.5"),
    (lambda: C.MaxNorm(axis="0"), "axis='0'"),
    (lambda: R.L1(-0.1), "l1=-0.1"),
    (lambda: R.L2("big"), "l2='big'"),
    (lambda: R.L1L2(l1=float("inf")), "l1=inf"),
    (lambda: R.L1L2(l2=float("nan")), "l2=nan"),
    (lambda: R.L2(True), "l2=True"),
])
def test_bad_arguments(make, text):
    with pytest.raises(ValueError, match=text):
        make()
