"""Grouped convolution as a sum of shifted products, for XLA.

XLA's CPU compiler has no fast grouped convolution: it rewrites one into a dense convolution with
a masked C x C kernel, so a depthwise layer costs as much as a dense one (and its weight gradient
the same again). Written as ``sum over taps of (shifted input window) * (that tap's weights)``,
the convolution is slices, products and sums, which XLA fuses into one loop over the output;
autodiff gives the gradients in the same form. The work is what the depthwise layer needs:
taps x inputs-per-group multiply-adds per output value.

Equivalence contract: equals ``lax.conv_general_dilated`` (any ``dimension_numbers``, strides,
padding, ``rhs_dilation``, ``feature_group_count``) in value and gradient, to rounding (the sum
runs in another order). ``lhs_dilation`` (transposed convolutions) is not supported.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax


def shift_add_conv(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
                   padding: str | Sequence[tuple[int, int]], rhs_dilation: Sequence[int] | None,
                   numbers: lax.ConvDimensionNumbers, groups: int) -> jnp.ndarray:
    """The grouped convolution ``lax.conv_general_dilated(lhs, rhs, window_strides, padding,
    None, rhs_dilation, numbers, feature_group_count=groups)`` by shifted products."""
    batch_dim, feature_dim, *spatial_dims = numbers.lhs_spec
    out_dim, in_dim, *window_dims = numbers.rhs_spec
    # channels last: each tap's weights are a vector along the innermost axis
    x = jnp.transpose(lhs, (batch_dim, *spatial_dims, feature_dim))
    kernel = jnp.transpose(rhs, (*window_dims, out_dim, in_dim))  # (*window, O, I/G)
    window = kernel.shape[:-2]
    outputs, in_per_group = kernel.shape[-2:]
    per_group = outputs // groups
    dilation = tuple(rhs_dilation or (1,) * len(window))
    extent = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    pads = lax.padtype_to_pads(x.shape[1:-1], extent, window_strides, padding) \
        if isinstance(padding, str) else [tuple(p) for p in padding]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads],
                                            (0, 0, 0)])
    out_size = [(size - e) // s + 1 for size, e, s in zip(x.shape[1:-1], extent, window_strides)]
    # (..., G, I/G) inputs against (G, O/G, I/G) weights per tap
    kernel = kernel.reshape(*window, groups, per_group, in_per_group)
    total = None
    for tap in itertools.product(*(range(k) for k in window)):
        start = [t * d for t, d in zip(tap, dilation)]
        piece = lax.slice(x, (0, *start, 0),
                          (x.shape[0], *[b + (n - 1) * s + 1 for b, n, s in
                                         zip(start, out_size, window_strides)], x.shape[-1]),
                          (1, *window_strides, 1))
        piece = piece.reshape(*piece.shape[:-1], groups, 1, in_per_group)
        term = jnp.sum(piece * kernel[tap], axis=-1) if in_per_group > 1 \
            else piece[..., 0] * kernel[tap][..., 0]
        total = term if total is None else total + term
    result = total.reshape(*total.shape[:-2], outputs)  # (N, *spatial, O)
    order = [0, *range(1, result.ndim - 1)]
    layout = [None] * result.ndim
    out_batch, out_feature, *out_spatial = numbers.out_spec
    layout[out_batch], layout[out_feature] = order[0], result.ndim - 1
    for axis, source in zip(out_spatial, order[1:]):
        layout[axis] = source
    return jnp.transpose(result, layout)
