"""Darknet's ``.weights`` format: a header (major, minor, revision as int32, then ``seen``, the
number of images trained on, as 64 bits from version 0.2 on and 32 bits before), then for each
convolutional or connected layer in cfg order its float32 arrays:

- convolutional: biases, [scales, rolling mean, rolling variance if batch_normalize], weights
  (filters x channels/groups x size x size);
- connected: biases, weights (outputs x inputs), [scales, rolling mean, rolling variance].

With batch norm the biases are the batch norm's shift. Little-endian, as darknet writes on x86.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import nn

from ..atomic_files import write_bytes_atomic
from ..errors import ModelFileError
from .layers import Connected, Convolutional
from .model import DarknetModel


def _arrays(layer: nn.Module) -> list[torch.Tensor]:
    """The tensors of a layer in the order its weights are stored."""
    if isinstance(layer, Convolutional):
        conv, bn = layer.conv, getattr(layer, "bn", None)
        if bn is None:
            return [conv.bias, conv.weight]
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    if isinstance(layer, Connected):
        if layer.bn is None:
            return [layer.linear.bias, layer.linear.weight]
        bn = layer.bn
        return [bn.bias, layer.linear.weight, bn.weight, bn.running_mean, bn.running_var]
    return []


def _seen_is_64_bit(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def load_weights(model: DarknetModel, path: str | Path) -> None:
    """Fill ``model`` from a darknet weights file; every byte must be used."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    if len(data) < 16:
        raise ModelFileError(path, f"is {len(data)} bytes, too short for a darknet weights header")
    major, minor, revision = struct.unpack_from("<3i", data)
    if major > 1000 or minor > 1000:
        raise ModelFileError(path, f"version {major}.{minor} stores connected weights transposed "
                             "(darknet's oldest format), which is not read here")
    wide = _seen_is_64_bit(major, minor)
    (seen,) = struct.unpack_from("<q" if wide else "<i", data, 12)
    offset = 20 if wide else 16
    if (len(data) - offset) % 4:
        raise ModelFileError(path, "its length after the header is not a whole number of float32")
    values = torch.frombuffer(bytearray(data[offset:]), dtype=torch.float32) \
        if len(data) > offset else torch.empty(0)
    position = 0
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            for tensor in _arrays(layer):
                count = tensor.numel()
                if position + count > values.numel():
                    raise ModelFileError(
                        path, f"ends inside layer {index} ({model.kinds[index]}): {values.numel()} "
                        f"floats after the header, the cfg {model.cfg} needs {_total(model)} "
                        "(a partial file such as darknet53.conv.74 loads into a model built from "
                        "the matching shorter cfg)")
                tensor.copy_(values[position:position + count].view_as(tensor))
                position += count
    if position != values.numel():
        raise ModelFileError(path, f"has {values.numel() - position} floats more than the cfg "
                             f"{model.cfg} uses ({position}); is it the weights of another cfg?")
    model.header = (major, minor, revision, seen)


def _total(model: DarknetModel) -> int:
    return sum(t.numel() for layer in model.layers for t in _arrays(layer))


def save_darknet_weights(model: DarknetModel, path: str | Path) -> None:
    """Write ``model``'s weights as darknet stores them (float32), with the header it was read
    with; a model converted or tuned by diagonalwise writes the same file as before (its layers
    keep their weights). Written atomically: an interrupted save leaves the old file."""
    if not isinstance(model, DarknetModel):
        raise TypeError(f"save_darknet_weights takes a model from load_darknet, not "
                        f"{type(model).__name__}")
    major, minor, revision, seen = model.header
    parts = [struct.pack("<3i", major, minor, revision),
             struct.pack("<q" if _seen_is_64_bit(major, minor) else "<i", seen)]
    for layer in model.layers:
        for tensor in _arrays(layer):
            parts.append(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    write_bytes_atomic(Path(path), b"".join(parts))
