"""Our kernels are written once, in 3D: this runs a 1D, 2D or 3D depthwise call, batched or not,
through such a kernel, with leading spatial sizes of 1, and follows autocast."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..shapes import conv_output_size, leading_padding

#: ``kernel(x5, weight5, bias, stride, leading_padding, dilation, output_size) -> y5``
Kernel3d = Callable[..., torch.Tensor]


def autocast_operands(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """The operands in autocast's dtype where autocast is on for their device (as native's
    convolutions take them), else as they are."""
    if not torch.is_autocast_enabled(input.device.type):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(input.device.type)
    return input.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None


def depthwise_via_3d(kernel: Kernel3d, input: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None, stride: tuple[int, ...],
                     padding: tuple[int, ...] | str, dilation: tuple[int, ...]) -> torch.Tensor:
    """``F.convNd(input, weight, bias, stride, padding, dilation, groups=channels)`` computed by
    ``kernel`` on 5-D views (no copy). Under autocast the operands are cast to its dtype first."""
    spatial_dims = weight.dim() - 2
    batched = input.dim() == spatial_dims + 2
    if (min(stride) <= 0 or min(dilation) <= 0
            or (not isinstance(padding, str) and min(padding) < 0)):
        raise RuntimeError("strides and dilations must be positive and padding not negative, got "
                           f"stride {list(stride)}, padding {list(padding)}, dilation "
                           f"{list(dilation)}")
    input, weight, bias = autocast_operands(input, weight, bias)
    if not batched:
        input = input.unsqueeze(0)
    missing = 3 - spatial_dims
    for _ in range(missing):
        input, weight = input.unsqueeze(2), weight.unsqueeze(2)
    stride, dilation = (1,) * missing + tuple(stride), (1,) * missing + tuple(dilation)
    if not isinstance(padding, str):
        padding = (0,) * missing + tuple(padding)
    kernel_size = weight.shape[2:]
    size = conv_output_size(input.shape[2:], kernel_size, stride, padding, dilation)
    if any(s <= 0 for s in size):
        raise RuntimeError(f"the output size {size[missing:]} is not positive: the dilated kernel "
                           f"{list(kernel_size[missing:])} is larger than the padded input "
                           f"{list(input.shape[2 + missing:])}")
    output = kernel(input, weight, bias, list(stride),
                    leading_padding(padding, kernel_size, dilation), list(dilation), size)
    for _ in range(missing):
        output = output.squeeze(2)
    return output if batched else output.squeeze(0)
