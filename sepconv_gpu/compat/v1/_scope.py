"""TF1 variable scopes and the default graph's variable registry.

TF1 names a variable after the variable scope it is created in
(`block1/separable_conv2d/depthwise_kernel:0`) and shares variables by that name: in a
scope with `reuse=True` the existing variable is returned, with `AUTO_REUSE` it is created
when missing, and without reuse an existing name is refused. Here the "graph" is only that
registry plus the counts that make default scope names unique; `reset_default_graph()`
starts a new one. The current scope is a context variable, so each thread and async task
nests its own scopes while all of them share the graph (guarded by a lock).
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import enum
import threading
from dataclasses import dataclass

from ...base_layer import Variable


class _ReuseMode(enum.Enum):
    AUTO_REUSE = 1


# TF's `tf.compat.v1.AUTO_REUSE`: get a variable when it exists, else create it.
AUTO_REUSE = _ReuseMode.AUTO_REUSE


@dataclass(frozen=True)
class VariableScope:
    """A scope as `variable_scope(...)` yields it; pass it back to re-enter that very scope."""

    name: str
    reuse: object = False  # False, True or AUTO_REUSE
    initializer: object = None  # for variables whose layer gives no initializer


class V1Variable(Variable):
    """A layer weight under its TF1 name, one object per name, shared by every layer reusing it.

    `name` is TF's `<scope>/<weight>:0`; `path` drops the `:0`. As in TF1, the regularizer,
    constraint and trainability are those of the layer that created the variable.
    """

    def __init__(self, variable, path):
        super().__init__(variable._layer, f"{path}:0", variable._value,
                         constraint=variable.constraint, regularizer=variable.regularizer)
        self._path = path
        self._trainable = variable.trainable

    path = property(lambda self: self._path)
    trainable = property(lambda self: self._trainable)

    @property
    def creator(self):
        return self._layer


def _join(scope_name, name):
    return f"{scope_name}/{name}" if scope_name else name


class Graph:
    """The variables created so far, by name, and how often each scope name was opened."""

    def __init__(self):
        self._lock = threading.Lock()
        self._variables = {}  # path -> V1Variable, in creation order
        self._scope_counts = collections.Counter()

    def open_scope(self, name, unique):
        """Count `name` as opened; with `unique`, first take name, name_1, ... (the first unopened)."""
        with self._lock:
            if unique:
                base, i = name, 0
                while self._scope_counts[name]:
                    i += 1
                    name = f"{base}_{i}"
            self._scope_counts[name] += 1
        return name

    def close_subscopes(self, name):
        """Leaving a scope forgets its sub-scope names (TF1), so re-entering it with
        `reuse=True` gives unnamed layers the same names, hence the same variables."""
        prefix = name + "/"
        with self._lock:
            for key in [k for k in self._scope_counts if k.startswith(prefix)]:
                del self._scope_counts[key]

    def get_variables(self, scope, candidates):
        """TF1 `get_variable` for a layer's freshly built weights, all or none.

        Each candidate (a Variable named e.g. "depthwise_kernel", holding its initial value)
        is replaced by the registered variable of the same name in `scope` when the scope
        reuses, or registered itself when it may create; any refusal raises ValueError
        before anything is registered.
        """
        with self._lock:
            chosen = []
            for candidate in candidates:
                path = _join(scope.name, candidate.name)
                existing = self._variables.get(path)
                if existing is None:
                    if scope.reuse is True:
                        raise ValueError(
                            f"Variable {path} does not exist, or was not created with get_variable(). "
                            "Did you mean to set reuse=AUTO_REUSE in VarScope?")
                    chosen.append(V1Variable(candidate, path))
                elif not scope.reuse:
                    raise ValueError(
                        f"Variable {path} already exists, disallowed. "
                        "Did you mean to set reuse=True or reuse=AUTO_REUSE in VarScope?")
                elif (existing.shape, existing.dtype) != (candidate.shape, candidate.dtype):
                    raise ValueError(
                        f"Trying to share variable {path}, but specified shape {candidate.shape} and "
                        f"dtype {candidate.dtype} and found shape {existing.shape} and dtype {existing.dtype}.")
                else:
                    chosen.append(existing)
            for variable in chosen:
                self._variables.setdefault(variable.path, variable)
        return chosen

    def variables(self):
        with self._lock:
            return list(self._variables.values())


_graph = Graph()
_current_scope = contextvars.ContextVar("sepconv_gpu_v1_variable_scope", default=VariableScope(""))


def get_default_graph():
    return _graph


def reset_default_graph():
    """Forget every variable and scope name (TF's `tf.compat.v1.reset_default_graph`).

    Layers built before keep their weights; they are just no longer shared by name.
    """
    global _graph
    _graph = Graph()


def get_variable_scope():
    """The innermost open VariableScope (the root scope, named "", outside any)."""
    return _current_scope.get()


def global_variables():
    """Every variable created in the default graph, in creation order."""
    return _graph.variables()


def trainable_variables():
    """The variables created by trainable layers."""
    return [v for v in _graph.variables() if v.trainable]


@contextlib.contextmanager
def variable_scope(name_or_scope=None, default_name=None, reuse=None, initializer=None):
    """Open a variable scope: TF1's `tf.compat.v1.variable_scope`, the parts layers use.

    name_or_scope: a name, nested under the current scope; or a VariableScope, re-entered as is.
    default_name: with no name_or_scope, this name made unique: name, name_1, name_2, ...
    reuse: True (variables must exist) or AUTO_REUSE (get or create) for this scope and all
        inside it; None (or False: as in TF1, reuse cannot be turned off) inherits it.
    initializer: the default for variables made inside whose layer gives none.
    """
    if not any(reuse is mode for mode in (None, False, True, AUTO_REUSE)):
        raise ValueError(f"`reuse` must be None, False, True or AUTO_REUSE; received {reuse!r}.")
    graph, outer = _graph, get_variable_scope()
    if isinstance(name_or_scope, VariableScope):
        outer = name_or_scope
        name = graph.open_scope(name_or_scope.name, unique=False)
    elif name_or_scope is not None:
        if not isinstance(name_or_scope, str) or not name_or_scope:
            raise ValueError(f"A variable scope name must be a non-empty string; received {name_or_scope!r}.")
        name = graph.open_scope(_join(outer.name, name_or_scope), unique=False)
    elif default_name is not None:
        if reuse:
            raise ValueError("reuse=True cannot be used without a name_or_scope")
        name = graph.open_scope(_join(outer.name, default_name), unique=True)
    else:
        raise TypeError("If default_name is None then name_or_scope is required")
    scope = VariableScope(name, reuse or outer.reuse,
                          outer.initializer if initializer is None else initializer)
    token = _current_scope.set(scope)
    try:
        yield scope
    finally:
        _current_scope.reset(token)
        graph.close_subscopes(name)
