"""A depthwise convolution as a sum of shifted products, in ``keras.ops``, so every backend runs it.

For each tap of the window, the strided slice of the padded input that the tap sees is multiplied
by that tap's weights, and the products are summed: the depthwise layer's own multiply-adds, as
slices, products and sums, which each backend differentiates by itself. (On the JAX backend the
layers use :mod:`diagonalwise.jax.shift_add` instead, whose kernel gradient XLA runs faster.)

Equivalence contract: equals ``keras.ops.depthwise_conv`` (the same arguments; "same" padding split
as Keras splits it, the extra row or column after) in value and gradient, to rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from keras import ops


def _padding(size: int, extent: int, stride: int, padding: str) -> tuple[tuple[int, int], int]:
    """((before, after), output size) along one spatial axis."""
    if padding == "valid":
        return (0, 0), (size - extent) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return (total // 2, total - total // 2), out


def shift_add_depthwise_conv(inputs, kernel, strides: Sequence[int], padding: str,
                             data_format: str, dilation_rate: Sequence[int]):
    """``keras.ops.depthwise_conv(inputs, kernel, strides, padding, data_format, dilation_rate)``
    with a (*window, channels, multiplier) kernel, by shifted products."""
    kernel = ops.convert_to_tensor(kernel)
    x = inputs if data_format == "channels_last" else ops.moveaxis(inputs, 1, -1)
    *window, channels, multiplier = kernel.shape
    pads, out_size = zip(*(_padding(size, (k - 1) * d + 1, s, padding) for size, k, s, d in
                           zip(x.shape[1:-1], window, strides, dilation_rate)))
    x = ops.pad(x, [(0, 0), *pads, (0, 0)])
    total = None
    for tap in itertools.product(*(range(k) for k in window)):
        starts = [t * d for t, d in zip(tap, dilation_rate)]
        piece = x[(slice(None), *[slice(b, b + (n - 1) * s + 1, s) for b, n, s in
                                  zip(starts, out_size, strides)], slice(None))]
        weights = kernel[tap]  # (channels, multiplier)
        if multiplier == 1:
            term = piece * weights[:, 0]
        else:  # output channel c * multiplier + m, as Keras orders them
            term = ops.reshape(ops.expand_dims(piece, -1) * weights,
                               (-1, *out_size, channels * multiplier))
        total = term if total is None else total + term
    return total if data_format == "channels_last" else ops.moveaxis(total, -1, 1)
