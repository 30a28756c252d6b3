"""Caffe's ``.caffemodel``: a binary ``NetParameter`` whose layers carry their learned blobs,
matched to the prototxt's layers by name (as Caffe's ``CopyTrainedLayersFrom`` does):

- Convolution: weight (num_output, channels/group, kh, kw), bias if bias_term;
- BatchNorm: mean and variance, each times a third blob's scale factor (Caffe's running sums);
- Scale: scale (unless it comes from a second bottom), bias if bias_term;
- InnerProduct: weight (num_output, inputs), or (inputs, num_output) with transpose; bias.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..atomic_files import write_bytes_atomic
from ..errors import ModelFileError
from .layers import CaffeBatchNorm, CaffeInnerProduct, CaffeScale
from .model import CaffeModel
from .schema import message_class


def _learned(module: nn.Module) -> list[torch.Tensor]:
    """The tensors a layer's blobs hold, in blob order (a batch norm's scale factor aside)."""
    if isinstance(module, nn.Conv2d):
        return [t for t in (module.weight, module.bias) if t is not None]
    if isinstance(module, CaffeBatchNorm):
        return [module.running_mean, module.running_var]
    if isinstance(module, CaffeScale):
        return [t for t in (module.weight, module.bias) if t is not None]
    if isinstance(module, CaffeInnerProduct):
        return [t for t in (module.weight, module.bias) if t is not None]
    return []


def _file_shape(module: nn.Module, index: int, tensor: torch.Tensor) -> tuple[int, ...]:
    if isinstance(module, CaffeInnerProduct) and module.transpose and index == 0:
        return tuple(reversed(tensor.shape))
    return tuple(tensor.shape)


def _blob_values(blob, where: str, path) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    values = blob.data if len(blob.data) else blob.double_data
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else None
    if shape is None and any((blob.num, blob.channels, blob.height, blob.width)):
        shape = None  # the legacy 4-D shape pads with ones; only the count is checked
    tensor = torch.tensor(values, dtype=torch.float32 if len(blob.data) else torch.float64)
    if shape is not None and tensor.numel() != _count(shape):
        raise ModelFileError(path, f"{where}: shape {shape} but {tensor.numel()} values")
    return tensor, shape


def _count(shape) -> int:
    total = 1
    for extent in shape:
        total *= extent
    return total


def load_caffemodel(model: CaffeModel, path: str | Path) -> None:
    """Fill ``model`` from a caffemodel: every layer with learned values must be there, with
    blobs of the prototxt's shapes."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    net = message_class("NetParameter")()
    try:
        net.ParseFromString(data)
    except Exception as failure:  # protobuf's DecodeError: no stable public class across versions
        raise ModelFileError(path, f"is not a binary Caffe NetParameter ({failure})") from None
    if not net.layer:
        raise ModelFileError(path, "has no layers (not a .caffemodel, or Caffe's old V1 format: "
                             "upgrade it with Caffe's upgrade_net_proto_binary)")
    stored = {layer.name: layer.blobs for layer in net.layer if layer.blobs}
    with torch.no_grad():
        for name, module in zip(model.names, model.layers):
            learned = _learned(module)
            if not learned:
                continue
            if name not in stored:
                raise ModelFileError(path, f"has no blobs for layer '{name}' of {model.prototxt}; "
                                     "is it the weights of another network?", key=name)
            blobs = stored[name]
            expected = len(learned) + isinstance(module, CaffeBatchNorm)
            if len(blobs) != expected:
                raise ModelFileError(path, f"layer '{name}' has {len(blobs)} blobs, the prototxt "
                                     f"needs {expected}", key=name)
            values = [_blob_values(blob, f"layer '{name}' blob {i}", path)
                      for i, blob in enumerate(blobs)]
            for index, (tensor, (value, shape)) in enumerate(zip(learned, values)):
                wanted = _file_shape(module, index, tensor)
                if value.numel() != tensor.numel() or (shape is not None and shape != wanted):
                    raise ModelFileError(path, f"layer '{name}' blob {index} is "
                                         f"{shape or value.numel()}, the prototxt needs {wanted}",
                                         key=name)
                value = value.reshape(wanted)
                if wanted != tuple(tensor.shape):
                    value = value.t()
                tensor.copy_(value)
            if isinstance(module, CaffeBatchNorm):
                factor = values[2][0].to(torch.float32).reshape(-1)[0]
                scale = torch.zeros(()) if factor == 0 else 1 / factor
                module.running_mean.mul_(scale)
                module.running_var.mul_(scale)


def save_caffemodel(model: CaffeModel, path: str | Path) -> None:
    """Write the prototxt's network with ``model``'s learned values as a caffemodel (float32
    blobs with their shapes; a batch norm's scale factor 1). A model converted or tuned by
    diagonalwise writes the same file (its convolutions keep their weights). Atomic."""
    if not isinstance(model, CaffeModel):
        raise TypeError(f"save_caffemodel takes a model from load_caffe, not {type(model).__name__}")
    net = message_class("NetParameter").FromString(model.definition)
    modules = dict(zip(model.names, model.layers))
    for layer in net.layer:
        module = modules.get(layer.name)
        learned = _learned(module) if module is not None else []
        if not learned:
            continue
        del layer.blobs[:]
        for index, tensor in enumerate(learned):
            value = tensor.detach().to("cpu", torch.float32)
            if _file_shape(module, index, tensor) != tuple(tensor.shape):
                value = value.t()
            blob = layer.blobs.add()
            blob.shape.dim.extend(value.shape)
            blob.data.extend(value.contiguous().reshape(-1).tolist())
        if isinstance(module, CaffeBatchNorm):
            factor = layer.blobs.add()
            factor.shape.dim.append(1)
            factor.data.append(1.0)
    write_bytes_atomic(Path(path), net.SerializeToString())
