"""Darknet model files in PyTorch: ``load_darknet`` builds an ``nn.Module`` from a ``.cfg`` (and
fills it from a ``.weights`` file), which trains like any PyTorch model, with ``diagonalwise.tune``
or ``convert`` on its depthwise and grouped layers; ``save_darknet_weights`` writes a file that
darknet and OpenCV's DNN module load.

Contract: in evaluation mode the model computes what darknet (AlexeyAB's fork) computes for the
supported sections, to float32 rounding; write then read gives back every tensor bit for bit.
Anything in a cfg that would be computed differently is refused with its file, line and key.
"""

from __future__ import annotations

from pathlib import Path

from .model import DarknetModel, build_darknet
from .weights import load_weights, save_darknet_weights

__all__ = ["DarknetModel", "load_darknet", "save_darknet_weights"]


def load_darknet(cfg: str | Path, weights: str | Path | None = None) -> DarknetModel:
    """The network a Darknet ``cfg`` describes, with the weights file's values if one is given
    (else PyTorch's default initialization). It takes float (N, C, H, W) input of the cfg's
    [net] size and returns the last layer's output, or a list of its [yolo] heads' input maps."""
    model = build_darknet(cfg)
    if weights is not None:
        load_weights(model, weights)
    return model
