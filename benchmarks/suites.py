"""The benchmark layer suites (docs/design.md, Performance method), as data: every layer
knows its shapes, FLOPs and bytes.

All layers are `same`-padded with a stride on the depthwise stage, channels_last, depth
multiplier 1. `repeat` is how often the layer occurs in its network: it is timed once and
weighted by `repeat` in network totals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sepconv_gpu import geometry


@dataclass(frozen=True)
class Layer:
    suite: str
    size: int                 # spatial extent: height = width for 2D, steps for 1D
    channels: int
    filters: int
    stride: int = 1
    kernel: int = 3
    rank: int = 2
    activation: str | None = None
    use_bias: bool = True
    repeat: int = 1

    @property
    def name(self):
        spatial = "x".join([str(self.size)] * self.rank)
        tags = [f"s{self.stride}"] * (self.stride > 1) + [f"k{self.kernel}"] * (self.kernel != 3)
        return " ".join([f"{spatial}x{self.channels}->{self.filters}"] + tags)

    @property
    def key(self):
        return f"{self.suite}/{self.name}"

    def input_shape(self, batch):
        return (batch,) + (self.size,) * self.rank + (self.channels,)

    @property
    def depthwise_shape(self):
        return (self.kernel,) * self.rank + (self.channels, 1)

    @property
    def pointwise_shape(self):
        return (1,) * self.rank + (self.channels, self.filters)

    def geometry(self, batch):
        return geometry.make_geometry(
            self.rank, self.input_shape(batch), self.depthwise_shape, self.pointwise_shape,
            (self.filters,) if self.use_bias else None, (self.stride,) * self.rank, "same",
            "channels_last", (1,) * self.rank)

    def output_shape(self, batch):
        return self.geometry(batch).output_shape

    def flops(self, batch):
        return self.geometry(batch).flops

    def bytes(self, batch, itemsize):
        """The least traffic: read the input once, write the output once, read the weights."""
        weights = math.prod(self.depthwise_shape) + math.prod(self.pointwise_shape)
        weights += self.filters if self.use_bias else 0
        elements = math.prod(self.input_shape(batch)) + math.prod(self.output_shape(batch))
        return itemsize * (elements + weights)

    def weights(self, seed=0):
        """float32 depthwise, pointwise, bias (or None) scaled so outputs stay O(1)."""
        rng = np.random.default_rng(seed)
        fan_dw, fan_pw = self.kernel ** self.rank, self.channels
        dk = rng.standard_normal(self.depthwise_shape, np.float32) / np.float32(math.sqrt(fan_dw))
        pk = rng.standard_normal(self.pointwise_shape, np.float32) / np.float32(math.sqrt(fan_pw))
        b = rng.standard_normal(self.filters, np.float32) * np.float32(0.1) if self.use_bias else None
        return dk, pk, b


def _suite(name, specs, **common):
    return [Layer(name, *spec[:3], **{**common, **(spec[3] if len(spec) > 3 else {})})
            for spec in specs]


S2 = {"stride": 2}

SUITES = {
    # Xception's entry/middle/exit flows: SeparableConv2D(use_bias=False), BN and ReLU apart.
    "xception": _suite("xception", [
        (147, 64, 128), (147, 128, 128), (74, 128, 256), (74, 256, 256), (37, 256, 728),
        (37, 728, 728), (19, 728, 728, {"repeat": 24}), (19, 728, 1024), (10, 1024, 1536),
        (10, 1536, 2048),
    ], use_bias=False),
    # MobileNetV1 blocks with BN folded into a bias, ReLU6 fused after the pointwise.
    "mobilenet_v1": _suite("mobilenet_v1", [
        (112, 32, 64), (112, 64, 128, S2), (56, 128, 128), (56, 128, 256, S2), (28, 256, 256),
        (28, 256, 512, S2), (14, 512, 512, {"repeat": 5}), (14, 512, 1024, S2), (7, 1024, 1024),
    ], activation="relu6"),
    # MobileNetV2: depthwise on the expanded tensor, then the linear projection.
    "mobilenet_v2": _suite("mobilenet_v2", [
        (112, 32, 16), (112, 96, 24, S2), (56, 144, 24), (28, 192, 32), (14, 384, 64),
        (14, 576, 96), (7, 960, 160), (7, 960, 320),
    ]),
    # Conformer convolution module: a long 1D depthwise kernel, swish.
    "conformer1d": _suite("conformer1d", [(1024, 256, 256)], rank=1, kernel=31,
                          activation="swish"),
    # Seconds-long smoke test of the whole runner (tests, --quick checks); not in "all".
    "tiny": _suite("tiny", [(16, 8, 16, S2), (32, 8, 8, {"rank": 1, "kernel": 5,
                                                        "activation": "swish"})]),
}

DEFAULT_SUITES = ("xception", "mobilenet_v1", "mobilenet_v2", "conformer1d")


def select(names):
    """Layers of the comma-separated suite names ('all' = every suite but 'tiny')."""
    chosen = DEFAULT_SUITES if names in (None, "all") else [n.strip() for n in names.split(",")]
    unknown = [n for n in chosen if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)} or 'all'")
    return [layer for name in chosen for layer in SUITES[name]]
