"""PyTorch modules that compute what Caffe's layers compute, where no torch module does it as
is. Convolutions are plain ``nn.Conv2d`` (``diagonalwise.convert`` and ``tune`` find them); the
rest keep Caffe's blobs as their parameters and buffers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CaffeBatchNorm(nn.BatchNorm2d):
    """Caffe's ``BatchNorm``: (x - mean) / sqrt(var + eps) over axis 1 of a tensor of any rank,
    without a scale or shift (a ``Scale`` layer follows). ``use_global_stats=True`` normalizes
    with the stored statistics in training too, as Caffe does; unset, training uses the batch's.
    Caffe's running averages (``moving_average_fraction``) map to ``momentum = 1 - fraction``."""

    def __init__(self, channels: int, eps: float, moving_average_fraction: float,
                 use_global_stats: bool | None):
        super().__init__(channels, eps=eps, momentum=1 - moving_average_fraction, affine=False)
        self.use_global_stats = use_global_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_statistics = self.training and not self.use_global_stats
        if batch_statistics:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, None, None,
                            batch_statistics, self.momentum, self.eps)


def _broadcast(values: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """``values`` laid along dimensions ``axis..`` of a tensor of ``rank`` dimensions."""
    return values.reshape(values.shape + (1,) * (rank - axis - values.dim()))


class CaffeScale(nn.Module):
    """Caffe's ``Scale``: x times a learned ``weight`` (plus a learned ``bias``) spanning
    dimensions ``axis`` to ``axis + weight.dim()`` of x; with two bottoms the second one is the
    scale and only the bias is learned."""

    def __init__(self, axis: int, weight_shape: tuple[int, ...] | None,
                 bias_shape: tuple[int, ...] | None):
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.ones(weight_shape)) if weight_shape is not None else None
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = x * _broadcast(self.weight if scale is None else scale, self.axis, x.dim())
        return y if self.bias is None else y + _broadcast(self.bias, self.axis, x.dim())


class CaffeInnerProduct(nn.Linear):
    """Caffe's ``InnerProduct``: x flattened from ``axis`` on, times the weight (which the file
    stores inputs-major when ``transpose`` is set)."""

    def __init__(self, inputs: int, outputs: int, bias: bool, axis: int, transpose: bool):
        super().__init__(inputs, outputs, bias=bias)
        self.axis, self.transpose = axis, transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(self.axis))


class CaffePooling(nn.Module):
    """Caffe's ``Pooling`` (MAX, AVE; global or windowed). Caffe rounds the output size up by
    default and averages over the window clipped to the padded input, as ``ceil_mode=True`` and
    ``count_include_pad=True`` do in torch."""

    def __init__(self, method: str, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], ceil_mode: bool, global_pooling: bool):
        super().__init__()
        self.method, self.kernel, self.stride, self.padding = method, kernel, stride, padding
        self.ceil_mode, self.global_pooling = ceil_mode, global_pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pooling:
            return x.amax(dim=(2, 3), keepdim=True) if self.method == "MAX" \
                else x.mean(dim=(2, 3), keepdim=True)
        if self.method == "MAX":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode,
                            count_include_pad=True)


def caffe_pooled_size(extent: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Caffe's pooling output size (pooling_layer.cpp): the last window must start inside the
    image or its leading padding, which Caffe checks only when there is padding."""
    rounding = math.ceil if ceil_mode else math.floor
    pooled = int(rounding((extent + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= extent + pad:
        pooled -= 1
    return pooled


class CaffeEltwise(nn.Module):
    """Caffe's ``Eltwise``: SUM (with per-input coefficients), PROD or MAX of equal shapes."""

    def __init__(self, operation: str, coefficients: list[float]):
        super().__init__()
        self.operation, self.coefficients = operation, coefficients

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.operation == "SUM":
            weights = self.coefficients or [1.0] * len(inputs)
            total = inputs[0] * weights[0] if weights[0] != 1 else inputs[0]
            for weight, x in zip(weights[1:], inputs[1:]):
                total = total + (x * weight if weight != 1 else x)
            return total
        result = inputs[0]
        for x in inputs[1:]:
            result = result * x if self.operation == "PROD" else torch.maximum(result, x)
        return result


class CaffeConcat(nn.Module):
    """Caffe's ``Concat`` along ``axis``."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=self.axis)


class CaffeSwish(nn.Module):
    """Caffe's ``Swish``: x * sigmoid(beta * x)."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)
