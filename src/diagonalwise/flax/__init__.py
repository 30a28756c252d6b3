"""A Flax NNX convolution computed by the diagonalwise refactorization.

Equivalence contract: ``DiagonalwiseConv(..., feature_group_count=G, algorithm=a)`` (or
``block_size=b``) equals ``nnx.Conv(..., feature_group_count=G)`` with the same parameters (same
names and shapes: ``kernel`` (*window, in_features // G, out_features), ``bias``), in value and
gradient, to rounding.
"""

from __future__ import annotations

import functools

from flax import nnx

from ..blocking import resolve_block_size
from ..jax import grouped_conv_general_dilated


class DiagonalwiseConv(nnx.Conv):
    """``nnx.Conv`` computed by ``algorithm`` (any of :func:`diagonalwise.jax.available_algorithms`,
    e.g. ``"shift_add"`` or ``"block_diagonal:8"``), or with ``block_size`` groups per dense block
    (with neither: the paper's default). ``block_size`` is the block size in use, None when the
    algorithm is not block-diagonal."""

    def __init__(self, in_features: int, out_features: int, kernel_size, *,
                 block_size: int | None = None, algorithm: str | None = None, **kwargs) -> None:
        groups = kwargs.get("feature_group_count", 1)
        if algorithm is None:
            algorithm = f"block_diagonal:{resolve_block_size(block_size, groups, in_features // groups)}"
        elif block_size is not None:
            raise ValueError(f"give algorithm={algorithm!r} or block_size={block_size}, not both")
        self.algorithm = algorithm
        family, _, size = algorithm.partition(":")
        self.block_size = int(size) if family == "block_diagonal" and size.isdigit() else None
        super().__init__(in_features, out_features, kernel_size,
                         conv_general_dilated=functools.partial(grouped_conv_general_dilated,
                                                                algorithm=algorithm),
                         **kwargs)
