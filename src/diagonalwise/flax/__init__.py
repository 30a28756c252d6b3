"""A Flax NNX convolution computed by the diagonalwise refactorization.

Equivalence contract: ``DiagonalwiseConv(..., feature_group_count=G, algorithm=a)`` (or
``block_size=b``) equals ``nnx.Conv(..., feature_group_count=G)`` with the same parameters (same
names and shapes: ``kernel`` (*window, in_features // G, out_features), ``bias``), in value and
gradient, to rounding.
"""

from __future__ import annotations

import functools

from flax import nnx

from ..algorithm_names import parse_algorithm
from ..jax import grouped_conv_general_dilated


class DiagonalwiseConv(nnx.Conv):
    """``nnx.Conv`` computed by ``algorithm`` (any of :func:`diagonalwise.jax.available_algorithms`,
    e.g. ``"shift_add"`` or ``"block_diagonal:8"``), or with ``block_size`` groups per dense block
    (with neither: the paper's default). ``block_size`` is the block size in use, None when the
    algorithm is not block-diagonal."""

    def __init__(self, in_features: int, out_features: int, kernel_size, *,
                 block_size: int | None = None, algorithm: str | None = None, **kwargs) -> None:
        groups = kwargs.get("feature_group_count", 1)
        family, size = parse_algorithm(algorithm, block_size, groups, in_features // groups)
        super().__init__(in_features, out_features, kernel_size, **kwargs)
        self.use_algorithm(algorithm or f"{family}:{size}")

    def use_algorithm(self, algorithm: str) -> None:
        """Compute with ``algorithm`` from now on; the parameters stay as they are."""
        family, size = parse_algorithm(algorithm, None, self.feature_group_count,
                                       self.in_features // self.feature_group_count)
        self.algorithm = algorithm
        self.block_size = size if family == "block_diagonal" else None
        self.conv_general_dilated = functools.partial(grouped_conv_general_dilated,
                                                      algorithm=algorithm)
