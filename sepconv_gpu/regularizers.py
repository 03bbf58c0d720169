"""Weight penalties with Keras semantics: `reg(weights) -> float`.

The penalty is computed in float64 where the weights live (NumPy, CuPy or any CUDA
array), so only a scalar crosses to the host. Dividing an activity penalty by the batch
size is the layer's job.
"""
from __future__ import annotations

from ._serialization import Configurable, Registry, as_array, check_number

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1_l2", "get", "serialize", "deserialize"]


class Regularizer(Configurable):
    """Base class: `__call__(weights)` returns the penalty as a Python float."""

    def __call__(self, x):
        return 0.0


class L1L2(Regularizer):
    """`l1 * sum(|w|) + l2 * sum(w**2)`; a factor of None means 0."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = check_number("l1", l1, minimum=0, default=0.0)
        self.l2 = check_number("l2", l2, minimum=0, default=0.0)

    def __call__(self, x):
        x = as_array(x).astype("float64", copy=False)
        penalty = 0.0
        if self.l1:
            penalty += self.l1 * float(abs(x).sum())
        if self.l2:
            penalty += self.l2 * float((x * x).sum())
        return penalty

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """`l1 * sum(|w|)`."""

    def __init__(self, l1=0.01):
        super().__init__(l1=check_number("l1", l1, minimum=0, default=0.01))

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """`l2 * sum(w**2)`."""

    def __init__(self, l2=0.01):
        super().__init__(l2=check_number("l2", l2, minimum=0, default=0.01))

    def get_config(self):
        return {"l2": self.l2}


def l1_l2(l1=0.01, l2=0.01):
    """The string "l1_l2": both penalties at 0.01 (the `L1L2` class defaults to 0)."""
    return L1L2(l1=l1, l2=l2)


_registry = Registry("regularizer", "keras.regularizers", [L1, L2, L1L2],
                     aliases={"l1_l2": l1_l2})

get = _registry.get
serialize = _registry.serialize
deserialize = _registry.deserialize
