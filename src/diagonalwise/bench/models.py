"""Small model definitions the benchmarks need and torchvision does not have.

- :class:`MobileNetV1` (Howard et al., 2017), the network of the paper's experiment.
- :class:`X3DStyleNet`, 3D inverted-bottleneck blocks with 3x3x3 depthwise convolutions
  (in the manner of X3D, Feichtenhofer 2020).
- :class:`CausalConvMixer`, Mamba-style blocks around a causal depthwise ``nn.Conv1d``.
- :class:`LargeKernelNet`, RepLKNet-style 13x13 and 31x31 depthwise layers.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(conv: nn.Module, channels: int, dims: int = 2) -> nn.Sequential:
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    return nn.Sequential(conv, norm(channels), nn.ReLU(inplace=True))


class MobileNetV1(nn.Sequential):
    """MobileNet V1: a 3x3 stem, 13 depthwise-separable blocks, average pool, classifier.

    ``width`` scales every channel count (1.0 is the paper's network, 4.2M parameters).
    Input (N, 3, H, W), 224x224 in the paper.
    """

    #: (output channels, stride) of the 13 depthwise-separable blocks.
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3) -> None:
        def scaled(channels: int) -> int:
            return max(8, int(channels * width))

        layers: list[nn.Module] = [
            _conv_bn_relu(nn.Conv2d(in_channels, scaled(32), 3, 2, 1, bias=False), scaled(32))
        ]
        channels = scaled(32)
        for out, stride in self.BLOCKS:
            out = scaled(out)
            layers += [
                _conv_bn_relu(nn.Conv2d(channels, channels, 3, stride, 1, groups=channels,
                                        bias=False), channels),
                _conv_bn_relu(nn.Conv2d(channels, out, 1, bias=False), out),
            ]
            channels = out
        super().__init__(
            nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(channels, num_classes),
        )


class _X3DBlock(nn.Module):
    def __init__(self, channels: int, expanded: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(nn.Conv3d(channels, expanded, 1, bias=False), expanded, 3),
            _conv_bn_relu(nn.Conv3d(expanded, expanded, 3, (1, stride, stride), 1,
                                    groups=expanded, bias=False), expanded, 3),
            nn.Conv3d(expanded, channels, 1, bias=False), nn.BatchNorm3d(channels),
        )
        # ceil_mode: an odd side pools to the strided conv's size (7x7 -> 4x4, not 3x3)
        self.pool = (nn.AvgPool3d((1, stride, stride), ceil_mode=True) if stride > 1
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pool(x) + self.body(x))


class X3DStyleNet(nn.Sequential):
    """3D network of X3D-style inverted bottlenecks (1x1x1 expand, 3x3x3 depthwise, 1x1x1 project).

    Input (N, 3, T, H, W), e.g. 8 frames of 112x112.
    """

    def __init__(self, num_classes: int = 400, widths: tuple[int, ...] = (24, 48, 96, 192),
                 expansion: float = 2.25) -> None:
        layers: list[nn.Module] = [
            _conv_bn_relu(nn.Conv3d(3, widths[0], (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
                          widths[0], 3)
        ]
        for index, width in enumerate(widths):
            if index:
                layers.append(_conv_bn_relu(nn.Conv3d(widths[index - 1], width, 1, bias=False),
                                            width, 3))
            expanded = int(width * expansion)
            layers += [_X3DBlock(width, expanded, 2), _X3DBlock(width, expanded, 1)]
        super().__init__(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(widths[-1], num_classes))


class CausalConvBlock(nn.Module):
    """Mamba-style mixer: in-projection, causal depthwise conv1d, SiLU gate, out-projection.

    Input and output (N, L, D). The conv pads ``kernel_size - 1`` on both sides and keeps the first
    L outputs, so position t sees t - kernel_size + 1 .. t only.
    """

    def __init__(self, dim: int, expansion: int = 2, kernel_size: int = 4) -> None:
        super().__init__()
        inner = dim * expansion
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.conv = nn.Conv1d(inner, inner, kernel_size, padding=kernel_size - 1, groups=inner)
        self.out_proj = nn.Linear(inner, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        length = x.shape[1]
        hidden = self.conv(hidden.transpose(1, 2))[..., :length].transpose(1, 2)
        return x + self.out_proj(nn.functional.silu(hidden) * nn.functional.silu(gate))


class CausalConvMixer(nn.Sequential):
    """A stack of :class:`CausalConvBlock` with a mean-pooled classifier head. Input (N, L, D)."""

    def __init__(self, dim: int = 256, depth: int = 4, num_classes: int = 10,
                 kernel_size: int = 4) -> None:
        super().__init__(*[CausalConvBlock(dim, kernel_size=kernel_size) for _ in range(depth)],
                         _MeanOverLength(), nn.Linear(dim, num_classes))


class _MeanOverLength(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class LargeKernelNet(nn.Sequential):
    """RepLKNet-style stages of large depthwise kernels (13x13, then 31x31), each between 1x1
    convolutions, for the large-kernel benchmarks. Input (N, 3, H, W)."""

    def __init__(self, num_classes: int = 1000, widths: tuple[int, ...] = (64, 128),
                 kernels: tuple[int, ...] = (13, 31)) -> None:
        layers: list[nn.Module] = [
            _conv_bn_relu(nn.Conv2d(3, widths[0], 3, 4, 1, bias=False), widths[0])]
        channels = widths[0]
        for width, kernel in zip(widths, kernels):
            layers += [
                _conv_bn_relu(nn.Conv2d(channels, width, 1, bias=False), width),
                _conv_bn_relu(nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=width,
                                        bias=False), width),
            ]
            channels = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, num_classes))
