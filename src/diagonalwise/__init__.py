"""diagonalwise: fast training of depthwise and grouped convolutions by the diagonalwise
refactorization (Qin et al., 2018), with the same numbers as PyTorch's own convolution."""

from .algorithms import (
    Algorithm,
    BlockDiagonal,
    Native,
    NativeChannelsLast,
    available_algorithms,
    block_diagonal_weight,
    get_algorithm,
    register_algorithm,
)
from .blocking import default_block_size, valid_block_sizes
from .convert import ConversionReport, convert, revert
from .functional import conv1d, conv2d, conv3d
from .modules import DiagonalwiseConv1d, DiagonalwiseConv2d, DiagonalwiseConv3d
from .reference import reference_conv
from .tuning import Plan, TuningCache, tune

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "BlockDiagonal",
    "ConversionReport",
    "DiagonalwiseConv1d",
    "DiagonalwiseConv2d",
    "DiagonalwiseConv3d",
    "Native",
    "NativeChannelsLast",
    "Plan",
    "TuningCache",
    "available_algorithms",
    "block_diagonal_weight",
    "conv1d",
    "conv2d",
    "conv3d",
    "convert",
    "default_block_size",
    "get_algorithm",
    "register_algorithm",
    "reference_conv",
    "revert",
    "tune",
    "valid_block_sizes",
]
