"""Grouped and depthwise convolutions for JAX, by the algorithm of your choice.

Equivalence contract: ``grouped_conv_general_dilated(lhs, rhs, ..., feature_group_count=G,
algorithm=a)`` equals ``lax.conv_general_dilated(lhs, rhs, ..., feature_group_count=G)`` in value
and in the gradients with respect to ``lhs`` and ``rhs``, under ``jit``, ``grad`` and ``vmap``, up
to floating-point rounding, for every algorithm:

- ``"native"``: ``lax.conv_general_dilated`` itself;
- ``"block_diagonal:<b>"``: the diagonalwise refactorization, ``b`` groups per dense block (the
  kernel keeps the shape ``lax.conv_general_dilated`` takes; the block-diagonal kernel is built from
  it inside the traced function, a product with an identity whose gradient keeps only the
  diagonal, so the kernel gradient is exactly the grouped one);
- ``"shift_add"``: a sum of shifted products (:mod:`diagonalwise.jax.shift_add`), which XLA fuses.

``block_size=b`` is the shorthand for ``"block_diagonal:<b>"``; with neither, the paper's 32
channels per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from ..algorithm_names import ALGORITHMS, parse_algorithm
from ..blocking import check_block_size
from .shift_add import shift_add_conv


def available_algorithms() -> list[str]:
    """The families ``algorithm=`` takes: ``native``, ``block_diagonal`` (as
    ``block_diagonal:<b>``) and ``shift_add``."""
    return list(ALGORITHMS)


def block_diagonal_kernel(kernel: jnp.ndarray, groups: int, block_size: int) -> jnp.ndarray:
    """(O, I/groups, *k) -> (O, block_size * I/groups, *k), block-diagonal over ``block_size``
    groups: the same map as :func:`diagonalwise.block_diagonal_weight` in PyTorch."""
    check_block_size(block_size, groups)
    out_channels, in_per_group, *window = kernel.shape
    blocks = groups // block_size
    compact = kernel.reshape(blocks, block_size, out_channels // groups, in_per_group, *window)
    eye = jnp.eye(block_size, dtype=kernel.dtype)
    # dense[g, j, p, l, i, ...] = compact[g, j, p, i, ...] * (j == l)
    dense = jnp.einsum("gjpi...,jl->gjpli...", compact, eye)
    return dense.reshape(out_channels, block_size * in_per_group, *window)


def grouped_conv_general_dilated(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    block_size: int | None = None,
    algorithm: str | None = None,
    **lax_kwargs,
) -> jnp.ndarray:
    """``lax.conv_general_dilated`` computed by ``algorithm`` (see the module docstring), or with
    ``block_size`` of its ``feature_group_count`` groups packed into each dense block (1: the
    grouped conv itself; None: the paper's 32 channels per block, rounded down to a divisor). Any
    ``dimension_numbers`` (NCHW/OIHW, NHWC/HWIO, ...); further keywords (``out_sharding``, ...) go
    to ``lax.conv_general_dilated``."""
    if batch_group_count != 1:
        raise ValueError("these algorithms apply to feature groups; batch_group_count must be 1")
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    out_dim, in_dim, *window_dims = numbers.rhs_spec
    groups = feature_group_count
    family, block = parse_algorithm(algorithm, block_size, groups, rhs.shape[in_dim])
    if family == "shift_add":
        if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
            raise ValueError("shift_add does not take lhs_dilation (a transposed convolution); "
                             "use native or block_diagonal")
        result = shift_add_conv(lhs, rhs, window_strides, padding, rhs_dilation, numbers, groups)
        return result if preferred_element_type is None else result.astype(preferred_element_type)
    if block > 1:
        to_oi = (out_dim, in_dim, *window_dims)
        dense = block_diagonal_kernel(jnp.transpose(rhs, to_oi), groups, block)
        rhs = jnp.transpose(dense, [to_oi.index(axis) for axis in range(rhs.ndim)])
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, numbers,
        feature_group_count=groups // block, precision=precision,
        preferred_element_type=preferred_element_type, **lax_kwargs)


def depthwise_conv(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    *,
    block_size: int | None = None,
    algorithm: str | None = None,
) -> jnp.ndarray:
    """Depthwise convolution: ``lax.conv_general_dilated`` with ``feature_group_count`` equal to
    the number of input channels (the kernel has C * multiplier outputs and 1 input per group),
    computed as in :func:`grouped_conv_general_dilated`."""
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    channels = lhs.shape[numbers.lhs_spec[1]]
    return grouped_conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, numbers,
        feature_group_count=channels, block_size=block_size, algorithm=algorithm)
