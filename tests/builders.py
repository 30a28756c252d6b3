"""Small models the tests build in several rooms (and in spawned DDP workers, which cannot take
fixtures)."""

from __future__ import annotations

from torch import nn


def tiny_mobilenet(num_classes: int = 10, batch_norm: bool = True) -> nn.Sequential:
    """A MobileNet-like net: stem, depthwise-separable blocks (one with multiplier 2), head."""
    norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), norm(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), norm(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), norm(16), nn.ReLU(),
        nn.Conv2d(16, 32, 5, stride=2, padding=2, groups=16), norm(32), nn.ReLU(),
        nn.Conv2d(32, 24, 1), norm(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes),
    )
