"""A Flax NNX convolution computed by the diagonalwise refactorization.

Equivalence contract: ``DiagonalwiseConv(..., feature_group_count=G, block_size=b)`` equals
``nnx.Conv(..., feature_group_count=G)`` with the same parameters (same names and shapes: ``kernel``
(*window, in_features // G, out_features), ``bias``), in value and gradient, to rounding.
"""

from __future__ import annotations

import functools

from flax import nnx

from ..blocking import resolve_block_size
from ..jax import grouped_conv_general_dilated


class DiagonalwiseConv(nnx.Conv):
    """``nnx.Conv`` plus ``block_size`` (groups per dense block; None: the paper's default)."""

    def __init__(self, in_features: int, out_features: int, kernel_size, *,
                 block_size: int | None = None, **kwargs) -> None:
        groups = kwargs.get("feature_group_count", 1)
        self.block_size = resolve_block_size(block_size, groups, in_features // groups)
        super().__init__(in_features, out_features, kernel_size,
                         conv_general_dilated=functools.partial(grouped_conv_general_dilated,
                                                                block_size=self.block_size),
                         **kwargs)
