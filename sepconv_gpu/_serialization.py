"""What initializers, regularizers and constraints share: Keras-style config objects, a
name registry with `get` / `serialize` / `deserialize`, argument checks, and finding the
array module (NumPy or CuPy) of a weight.

Identifiers follow Keras 3 (`keras.<kind>s.get`): None, a name (class name, snake_case
name or alias, case-sensitive as in Keras), a Keras 3 dict (`module`, `class_name`,
`config`, `registered_name`) or a tf.keras 2.x dict (`class_name`, `config`), an instance,
a class (instantiated with its defaults) or any other callable (a custom function).
"""
from __future__ import annotations

import inspect
import math
import numbers
import re

import numpy as np


class Configurable:
    """Base of every built-in object: Keras's `get_config` / `from_config` pair."""

    # keys older Keras versions wrote into configs that carry no meaning here
    _ignored_config_keys = frozenset()

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k not in cls._ignored_config_keys})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(type(self))


def snake_case(name):
    """Keras's `to_snake_case`: "GlorotUniform" -> "glorot_uniform", "L1L2" -> "l1l2"."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class Registry:
    """Names of one kind of object ("initializer", ...) and the Keras functions over them."""

    def __init__(self, kind, module, classes, aliases=None):
        self.kind, self.module = kind, module
        self.names = {}
        for cls in classes:
            self.names[cls.__name__] = self.names[snake_case(cls.__name__)] = cls
        self.names.update(aliases or {})

    def _unknown(self, identifier):
        return ValueError(f"Could not interpret {self.kind} identifier: {identifier}")

    def get(self, identifier):
        if identifier is None:
            return None
        if isinstance(identifier, (str, dict)):
            return self.deserialize(identifier)
        if inspect.isclass(identifier):
            return identifier()
        if callable(identifier):
            return identifier
        raise self._unknown(identifier)

    def deserialize(self, config):
        """A name or a Keras 3 / tf.keras 2.x dict -> a new instance."""
        if isinstance(config, str):
            name, kwargs = config, {}
        elif isinstance(config, dict) and isinstance(config.get("class_name"), str):
            name, kwargs = config["class_name"], config.get("config") or {}
        else:
            raise self._unknown(config)
        factory = self.names.get(name)
        if factory is None:
            raise self._unknown(config)
        return factory.from_config(kwargs) if hasattr(factory, "from_config") else factory(**kwargs)

    def serialize(self, obj):
        """Keras 3's `serialize_keras_object` form: what `keras.<kind>s.deserialize` reads."""
        if obj is None:
            return None
        if self.names.get(type(obj).__name__) is type(obj):
            return {"module": self.module, "class_name": type(obj).__name__,
                    "config": obj.get_config(), "registered_name": None}
        if inspect.isfunction(obj):  # a custom function: Keras names it, it cannot rebuild it
            return {"module": obj.__module__, "class_name": "function",
                    "config": obj.__name__, "registered_name": obj.__name__}
        if hasattr(obj, "get_config"):  # a custom object
            return {"module": type(obj).__module__, "class_name": type(obj).__name__,
                    "config": obj.get_config(), "registered_name": type(obj).__name__}
        raise ValueError(f"Cannot serialize {self.kind} {obj!r}: it has no `get_config()`.")


def check_number(name, value, minimum=None, strict=False, default=None):
    """`value` as a float: a finite real number, above `minimum` if given.

    ValueError for every failure, as Keras raises for its own argument checks.
    """
    if value is None and default is not None:
        value = default
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number{bound}. "
            f"Received: {name}={value!r}")
    return float(value)


def array_module(x):
    """`numpy` or `cupy`, whichever `x` lives in; CuPy is imported only for device arrays."""
    if hasattr(x, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


def as_array(x):
    """`x` as an array of its own module: a CuPy array for any CUDA array (e.g. torch)."""
    return array_module(x).asarray(x)
