"""The ground truth every algorithm is held to: PyTorch's own grouped convolution.

``reference_conv(input, weight, bias, stride, padding, dilation, groups)`` is ``F.conv1d``,
``F.conv2d`` or ``F.conv3d``, picked by the weight's number of dimensions. Tests, the benchmark's
correctness gate and the autotuner all compare against this one function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: F.conv1d, F.conv2d, F.conv3d by the number of spatial dimensions.
NATIVE_CONV: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def reference_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.convNd(input, weight, bias, stride, padding, dilation, groups)`` with N = weight.dim() - 2."""
    spatial_dims = weight.dim() - 2
    if spatial_dims not in NATIVE_CONV:
        raise ValueError(
            f"weight must have 3, 4 or 5 dimensions (1D, 2D or 3D convolution), got shape "
            f"{tuple(weight.shape)}"
        )
    return NATIVE_CONV[spatial_dims](input, weight, bias, stride, padding, dilation, groups)
