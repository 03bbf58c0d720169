"""Compatibility APIs: `compat.v1` is the TensorFlow 1 layer surface (`tf.compat.v1`)."""
from . import v1
