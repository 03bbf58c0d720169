"""The TF1 API (`tf.compat.v1`): `layers.SeparableConv{1,2}D`, `layers.separable_conv{1,2}d`,
and the variable scopes those layers name and share their weights by.

    from sepconv_gpu.compat import v1
    with v1.variable_scope("block1"):
        y = v1.layers.separable_conv2d(x, 64, 3, padding="same", name="sep")
    [w.name for w in v1.global_variables()]  # ['block1/sep/depthwise_kernel:0', ...]
"""
from . import layers
from ._scope import (AUTO_REUSE, V1Variable, VariableScope, get_variable_scope,
                     global_variables, reset_default_graph, trainable_variables, variable_scope)

__all__ = ["layers", "AUTO_REUSE", "V1Variable", "VariableScope", "get_variable_scope",
           "global_variables", "reset_default_graph", "trainable_variables", "variable_scope"]
