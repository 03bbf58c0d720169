"""Argument normalization, validation and output geometry: computed once, used by every backend.

Everything about padding and output sizes lives here so that the NumPy and CUDA backends
never re-derive it. A 1D convolution is described as a 2D one with height 1.
"""
from __future__ import annotations

import functools
import numbers
import os
from dataclasses import dataclass

PADDINGS = {1: ("valid", "same", "causal"), 2: ("valid", "same")}
DATA_FORMATS = ("channels_last", "channels_first")
INT32_MAX = 2**31 - 1


def normalize_tuple(value, rank, name, allow_zero=False):
    """An int or a sequence of `rank` ints -> tuple of ints, checked like Keras does."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = (int(value),) * rank
    else:
        try:
            values = tuple(value)
        except TypeError:  # None, a float...: Keras says ValueError here
            raise ValueError(
                f"The `{name}` argument must be a tuple of {rank} integers. Received {name}={value!r}"
            ) from None
        if len(values) != rank:
            raise ValueError(
                f"The `{name}` argument must be a tuple of {rank} integers. Received {name}={values}"
            )
        for v in values:
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise TypeError(
                    f"The `{name}` argument must be a tuple of {rank} integers. "
                    f"Received {name}={values} including element {v!r} of type {type(v).__name__}"
                )
        values = tuple(int(v) for v in values)
    bad = {v for v in values if (v < 0 if allow_zero else v <= 0)}
    if bad:
        req = "`value >= 0`" if allow_zero else "`value > 0`"
        shown = value if isinstance(value, numbers.Integral) else values
        raise ValueError(
            f"The `{name}` argument must be a tuple of {rank} integers. Received {name}={shown}, "
            f"including values {bad} that do not satisfy {req}"
        )
    return values


def normalize_padding(padding, rank):
    if not isinstance(padding, str):
        raise TypeError(f"The `padding` argument must be a string. Received: padding={padding!r}")
    p = padding.lower()
    if p == "causal" and rank != 1:
        raise ValueError(
            "The `padding` argument 'causal' is only supported for 1D convolutions "
            f"(`SeparableConv1D`, `Conv1D`). Received: padding={padding!r} for a {rank}D convolution"
        )
    if p not in PADDINGS[rank]:
        raise ValueError(
            "The `padding` argument must be one of {" + ", ".join(map(repr, PADDINGS[rank]))
            + f"}}. Received: {padding}"
        )
    return p


def normalize_data_format(data_format):
    if data_format is None:
        return "channels_last"
    if not isinstance(data_format, str):
        raise TypeError(f"The `data_format` argument must be a string. Received: data_format={data_format!r}")
    df = data_format.lower()
    if df not in DATA_FORMATS:
        raise ValueError(
            "The `data_format` argument must be one of {'channels_first', 'channels_last'}. "
            f"Received: data_format={df}"
        )
    return df


def normalize_positive_int(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"Invalid value for argument `{name}`. Expected an integer. Received {name}={value!r}.")
    if value <= 0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a strictly positive value. Received {name}={value}."
        )
    return int(value)


def check_strides_dilation(strides, dilation_rate):
    """The tf.keras 2.x rule (the seed documents): strides > 1 excludes dilation > 1."""
    if any(s > 1 for s in strides) and any(d > 1 for d in dilation_rate):
        raise ValueError(
            "`strides > 1` not supported in conjunction with `dilation_rate > 1`. "
            f"Received: strides={strides} and dilation_rate={dilation_rate}"
        )


def normalize_call_args(rank, strides, padding, data_format, dilation_rate):
    """Normalize and cross-check the per-call geometry arguments (kernel size aside)."""
    strides = normalize_tuple(strides, rank, "strides")
    dilation_rate = normalize_tuple(dilation_rate, rank, "dilation_rate")
    padding = normalize_padding(padding, rank)
    data_format = normalize_data_format(data_format)
    check_strides_dilation(strides, dilation_rate)
    return strides, padding, data_format, dilation_rate


def check_receptive_field(kernel, dilation_rate):
    """The span of one output's taps, dilation * (k - 1) + 1, must be an int32 on every
    axis (as every input axis must on the GPU): past that no input can hold it."""
    for axis, (k, d) in enumerate(zip(kernel, dilation_rate)):
        span = d * (k - 1) + 1
        if span > INT32_MAX:
            raise ValueError(
                f"`dilation_rate`={tuple(dilation_rate)} with `kernel_size`={tuple(kernel)} spans {span} "
                f"input positions along spatial axis {axis}; at most {INT32_MAX} (2^31 - 1) are supported.")


@functools.lru_cache(maxsize=None)
def host_memory_bytes():
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_host_memory(nbytes, what):
    """ValueError before allocating `nbytes` of host memory that this machine does not have."""
    limit = host_memory_bytes()
    if limit is not None and nbytes > limit:
        raise ValueError(
            f"{what} needs {nbytes} bytes ({nbytes / 2**30:.3g} GiB) of memory, more than this "
            f"machine has ({limit} bytes).")


def output_length(n, k, stride, dilation, padding):
    """Output length of one spatial axis (may be <= 0 for `valid`; callers check)."""
    span = dilation * (k - 1) + 1
    if padding == "valid":
        return (n - span) // stride + 1
    return -(-n // stride)  # same / causal: ceil(n / s)


def pad_before(n, k, stride, dilation, padding):
    """Zero padding in front of one spatial axis; the rest of the total goes after."""
    span = dilation * (k - 1) + 1
    if padding == "valid":
        return 0
    if padding == "causal":
        return span - 1
    out = output_length(n, k, stride, dilation, padding)
    total = max((out - 1) * stride + span - n, 0)
    return total // 2


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a backend needs, in a rank-free (always 2D) form.

    Spatial tuples are (height, width); a 1D convolution has height 1, kernel height 1.
    """

    rank: int
    channels_first: bool
    batch: int
    channels: int
    depth_multiplier: int
    filters: int
    in_size: tuple
    kernel: tuple
    strides: tuple
    dilation: tuple
    pad_before: tuple
    out_size: tuple
    use_bias: bool

    @property
    def input_shape(self):
        return self._user_shape(self.in_size, self.channels)

    @property
    def output_shape(self):
        return self._user_shape(self.out_size, self.filters)

    @property
    def intermediate_channels(self):
        return self.channels * self.depth_multiplier

    @property
    def output_positions(self):
        return self.batch * self.out_size[0] * self.out_size[1]

    @property
    def flops(self):
        """Multiply-adds counted as 2 FLOPs: depthwise + pointwise per output position."""
        kk = self.kernel[0] * self.kernel[1]
        cm = self.intermediate_channels
        return self.output_positions * (2 * kk * cm + 2 * cm * self.filters)

    def _user_shape(self, spatial, channels):
        spatial = spatial[2 - self.rank:]
        if self.channels_first:
            return (self.batch, channels) + tuple(spatial)
        return (self.batch,) + tuple(spatial) + (channels,)


def _shape_str(shape):
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def make_geometry(rank, x_shape, depthwise_shape, pointwise_shape, bias_shape,
                  strides, padding, data_format, dilation_rate):
    """Validate shapes of an (already normalized) call and compute its output geometry.

    `strides`, `dilation_rate` are normalized tuples, `padding`/`data_format` normalized
    strings (see `normalize_call_args`). `bias_shape` is None when there is no bias.
    """
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) != rank + 2:
        raise ValueError(
            f"Input of a {rank}D separable convolution must have rank {rank + 2} "
            f"(batch, {'spatial, ' * rank}channels); received an input of shape {_shape_str(x_shape)}."
        )
    dk = tuple(int(s) for s in depthwise_shape)
    pk = tuple(int(s) for s in pointwise_shape)
    if len(dk) != rank + 2:
        raise ValueError(
            f"`depthwise_kernel` must have rank {rank + 2}: kernel_size + (in_channels, depth_multiplier); "
            f"received shape {_shape_str(dk)}."
        )
    if len(pk) != rank + 2 or any(s != 1 for s in pk[:rank]):
        raise ValueError(
            f"`pointwise_kernel` must have shape {(1,) * rank} + (in_channels * depth_multiplier, filters); "
            f"received shape {_shape_str(pk)}."
        )
    channels_first = data_format == "channels_first"
    channels = x_shape[1] if channels_first else x_shape[-1]
    spatial = x_shape[2:] if channels_first else x_shape[1:-1]
    kernel = dk[:rank]
    if dk[rank] != channels:
        raise ValueError(
            f"`depthwise_kernel` of shape {_shape_str(dk)} expects {dk[rank]} input channels, but the input "
            f"of shape {_shape_str(x_shape)} ({data_format}) has {channels}."
        )
    multiplier = dk[rank + 1]
    if min(kernel + (multiplier,)) <= 0 or channels <= 0:
        raise ValueError(f"`depthwise_kernel` shape {_shape_str(dk)} and input channels must be positive.")
    if pk[rank] != channels * multiplier:
        raise ValueError(
            f"`pointwise_kernel` of shape {_shape_str(pk)} expects {pk[rank]} input channels, but the "
            f"depthwise stage produces {channels} * {multiplier} = {channels * multiplier}."
        )
    check_receptive_field(kernel, dilation_rate)
    filters = pk[rank + 1]
    if filters <= 0:
        raise ValueError(f"`pointwise_kernel` of shape {_shape_str(pk)} has no filters.")
    if bias_shape is not None and tuple(int(s) for s in bias_shape) != (filters,):
        raise ValueError(f"`bias` must have shape ({filters},); received shape {_shape_str(bias_shape)}.")
    out = tuple(output_length(n, k, s, d, padding)
                for n, k, s, d in zip(spatial, kernel, strides, dilation_rate))
    if min(out) <= 0:
        raise ValueError(
            "Computed output size would be zero or negative. Received "
            f"`inputs shape={_shape_str(x_shape)}`, `depthwise kernel shape={_shape_str(dk)}`, "
            f"`dilation_rate={tuple(dilation_rate)}`, `strides={tuple(strides)}`, `padding={padding}`."
        )
    before = tuple(pad_before(n, k, s, d, padding)
                   for n, k, s, d in zip(spatial, kernel, strides, dilation_rate))
    # An axis with one output never steps, so neither it nor its padding depends on the
    # stride: the backends get 1 there (strides=10**30 would overflow their strided views
    # and the kernels' int32 arguments). An axis with more outputs has a stride below its
    # input's length.
    strides = tuple(s if o > 1 else 1 for s, o in zip(strides, out))
    lift = (lambda t, fill: (fill,) * (2 - rank) + tuple(t))
    return ConvGeometry(
        rank=rank, channels_first=channels_first, batch=x_shape[0], channels=channels,
        depth_multiplier=multiplier, filters=filters,
        in_size=lift(spatial, 1), kernel=lift(kernel, 1), strides=lift(strides, 1),
        dilation=lift(dilation_rate, 1), pad_before=lift(before, 0), out_size=lift(out, 1),
        use_bias=bias_shape is not None,
    )


def compute_output_shape(rank, input_shape, filters, kernel_size, strides, padding,
                         data_format, dilation_rate):
    """Layer-level output shape; unknown (None) dimensions stay None."""
    input_shape = tuple(input_shape)
    if len(input_shape) != rank + 2:
        raise ValueError(
            f"Input of a {rank}D separable convolution must have rank {rank + 2}; received shape {input_shape}."
        )
    check_receptive_field(kernel_size, dilation_rate)
    channels_first = data_format == "channels_first"
    spatial = input_shape[2:] if channels_first else input_shape[1:-1]
    out = []
    for n, k, s, d in zip(spatial, kernel_size, strides, dilation_rate):
        if n is None:
            out.append(None)
            continue
        length = output_length(int(n), k, s, d, padding)
        if length <= 0:
            raise ValueError(
                "Computed output size would be zero or negative. Received "
                f"`inputs shape={input_shape}`, `kernel_size={kernel_size}`, "
                f"`dilation_rate={dilation_rate}`, `strides={strides}`, `padding={padding}`."
            )
        out.append(length)
    if channels_first:
        return (input_shape[0], filters) + tuple(out)
    return (input_shape[0],) + tuple(out) + (filters,)

