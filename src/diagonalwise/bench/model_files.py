"""A user's own Darknet or Caffe network in ``bench`` and ``train``: the model names
``darknet:FILE.cfg`` and ``caffe:FILE.prototxt`` load it (random weights for benchmarks; a weights
file to start training from), and training writes its weights back in the file's own format."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

DARKNET, CAFFE = "darknet:", "caffe:"


def is_model_file(name: str) -> bool:
    return name.startswith((DARKNET, CAFFE))


def load_model_file(name: str, weights: str | Path | None = None) -> nn.Module:
    """The network of a ``darknet:`` or ``caffe:`` model name, with ``weights`` if given."""
    path = name.split(":", 1)[1]
    if name.startswith(DARKNET):
        from ..darknet import load_darknet

        return load_darknet(path, weights)
    from ..caffe import load_caffe

    return load_caffe(path, weights)


def save_model_file(model: nn.Module, name: str, directory: Path) -> Path:
    """Write ``model``'s weights as ``trained.weights`` or ``trained.caffemodel``."""
    if name.startswith(DARKNET):
        from ..darknet import save_darknet_weights

        path = directory / "trained.weights"
        save_darknet_weights(model, path)
    else:
        from ..caffe import save_caffemodel

        path = directory / "trained.caffemodel"
        save_caffemodel(model, path)
    return path


def ends_in_softmax(model: nn.Module) -> bool:
    """Whether the network's last computing layer is a softmax (darknet's [cost] computes
    nothing in the forward pass)."""
    layers = [layer for layer in model.layers if not isinstance(layer, nn.Identity)]
    return type(layers[-1]).__name__ == "Softmax"


def model_file_loss(model: nn.Module):
    """The training loss for a loaded network: cross-entropy on its flattened output (on the
    log of it where the network ends in a softmax); for a detector, whose heads need a loss of
    their own, the mean square of every head's map, which costs a training step the same."""
    probabilities = ends_in_softmax(model)

    def loss(output, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, Sequence):
            return sum(head.float().square().mean() for head in output)
        scores = output.flatten(1)
        if probabilities:
            return nn.functional.nll_loss(scores.float().clamp_min(1e-12).log(), target)
        return nn.functional.cross_entropy(scores, target)

    return loss


def output_classes(model: nn.Module) -> int:
    """How many values the network gives per input (1 for a detector's list of heads)."""
    with torch.device("meta"):
        output = copy.deepcopy(model).eval().to("meta")(torch.empty(1, *model.input_shape))
    if isinstance(output, Sequence):
        return 1
    return output[0].numel()


def check_size(name: str, model: nn.Module, size: int | None) -> None:
    if size is not None and size != model.input_shape[-1]:
        raise UsageError(f"{name} takes {model.input_shape[-2]}x{model.input_shape[-1]} input, "
                         f"fixed by the file; leave out --size {size}")
