"""PyTorch modules that compute what Darknet's layers compute (AlexeyAB/darknet, the maintained
fork, where it and the original disagree). Layers with weights are plain ``nn.Conv2d``,
``nn.BatchNorm2d`` and ``nn.Linear`` inside, so ``diagonalwise.convert`` and ``tune`` find them.
Layers that read earlier outputs (route, shortcut, scale_channels) keep those indices in
``sources`` and take the tensors as arguments."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

#: darknet's batch-norm epsilon (AlexeyAB: sqrt(variance + .00001)) and its rolling-average rate
#: (rolling = .99 * rolling + .01 * batch)
BATCH_NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.01


class HardMish(nn.Module):
    """Darknet's ``hard_mish``: x for x > 0, x^2/2 + x on (-2, 0], 0 below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x + 2).clamp(0, 2) / 2


ACTIVATIONS = {
    "linear": nn.Identity,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "logistic": nn.Sigmoid,
    "swish": nn.SiLU,
    "mish": nn.Mish,  # darknet's softplus threshold (20) is torch's
    "hard_mish": HardMish,
    "tanh": nn.Tanh,
}


class Convolutional(nn.Sequential):
    """``[convolutional]``: ``conv`` (bias only without batch norm), ``bn``, ``activation``."""

    def __init__(self, conv: nn.Conv2d, batch_normalize: bool, activation: nn.Module):
        layers = {"conv": conv}
        if batch_normalize:
            layers["bn"] = nn.BatchNorm2d(conv.out_channels, eps=BATCH_NORM_EPS,
                                          momentum=BATCH_NORM_MOMENTUM)
        layers["activation"] = activation
        super().__init__(OrderedDict(layers))


class Route(nn.Module):
    """``[route]``: the channel-wise concatenation of earlier outputs; with ``groups``, the
    ``group_id``-th of ``groups`` equal channel slices of each."""

    def __init__(self, sources: list[int], groups: int = 1, group_id: int = 0):
        super().__init__()
        self.sources, self.groups, self.group_id = sources, groups, group_id

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.groups > 1:
            inputs = tuple(x.chunk(self.groups, dim=1)[self.group_id] for x in inputs)
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class Shortcut(nn.Module):
    """``[shortcut]``: the previous output plus the ``from`` outputs, then the activation."""

    def __init__(self, sources: list[int], activation: nn.Module):
        super().__init__()
        self.sources = sources
        self.activation = activation

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return self.activation(total)


class ScaleChannels(nn.Module):
    """``[scale_channels]``: the ``from`` output times the previous output (one value per channel,
    as a squeeze-excitation gate computes), then the activation."""

    def __init__(self, sources: list[int], activation: nn.Module):
        super().__init__()
        self.sources = sources
        self.activation = activation

    def forward(self, scales: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.activation(features * scales)


class MaxPool(nn.Module):
    """``[maxpool]``: darknet pads ``padding // 2`` before and the rest after, and positions
    outside the input never win (they read as -FLT_MAX)."""

    def __init__(self, size: int, stride: tuple[int, int], padding: int,
                 output_size: tuple[int, int], input_size: tuple[int, int]):
        super().__init__()
        self.size, self.stride = size, stride
        before = padding // 2
        after = [max(0, (out - 1) * step - before + size - extent)
                 for out, step, extent in zip(output_size, stride, input_size)]
        self.pad = (before, after[1], before, after[0])  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, value=-torch.inf)
        return F.max_pool2d(x, self.size, self.stride)


class GlobalAvgPool(nn.Module):
    """``[avgpool]``: the mean of each channel, as a 1x1 map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class Upsample(nn.Module):
    """``[upsample]``: nearest-neighbour by ``stride``, times ``scale``."""

    def __init__(self, stride: int, scale: float = 1.0):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat_interleave(self.stride, dim=2).repeat_interleave(self.stride, dim=3)
        return x * self.scale if self.scale != 1 else x


class Softmax(nn.Module):
    """``[softmax]``: over all of a sample's values (in ``groups`` equal parts), at a
    temperature."""

    def __init__(self, groups: int = 1, temperature: float = 1.0):
        super().__init__()
        self.groups, self.temperature = groups, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.groups, -1) / self.temperature
        return grouped.softmax(dim=-1).reshape(x.shape)


class Connected(nn.Module):
    """``[connected]``: a fully connected layer over the flattened (C, H, W) input, optionally
    batch-normalized, as a (N, outputs, 1, 1) map."""

    def __init__(self, inputs: int, outputs: int, batch_normalize: bool, activation: nn.Module):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs, bias=not batch_normalize)
        self.bn = nn.BatchNorm1d(outputs, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM) \
            if batch_normalize else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))
        if self.bn is not None:
            y = self.bn(y)
        return self.activation(y)[:, :, None, None]


class Yolo(nn.Module):
    """``[yolo]``: a detection head; the model returns its input (the raw map), since decoding
    boxes is the application's business."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
