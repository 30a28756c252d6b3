"""Memory layouts of PyTorch tensors and models: channels_last formats, telling a tensor's
layout, and moving tensors or a model's parameters into one."""

from __future__ import annotations

import torch
from torch import nn

#: The channels-last memory format of a batched tensor, by its number of dimensions.
CHANNELS_LAST_FORMAT = {4: torch.channels_last, 5: torch.channels_last_3d}

#: The layouts the benchmarks and the tuner name.
LAYOUTS = ("contiguous", "channels_last")


def memory_layout(tensor: torch.Tensor) -> str:
    """'channels_last' for a batched NHWC/NDHWC tensor (with more than one channel), else
    'contiguous'."""
    fmt = CHANNELS_LAST_FORMAT.get(tensor.dim())
    if fmt is not None and tensor.shape[1] > 1 and tensor.is_contiguous(memory_format=fmt) \
            and not tensor.is_contiguous():
        return "channels_last"
    return "contiguous"


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether channels are the contiguous dimension (a channels_last tensor)."""
    return x.stride(1) == 1 and x.shape[1] > 1


def memory_format_like(x: torch.Tensor) -> torch.memory_format:
    """The format that keeps a 5-D tensor's channels where ``x`` has them."""
    return torch.channels_last_3d if channels_innermost(x) else torch.contiguous_format


def to_layout(tensor_or_model: torch.Tensor | nn.Module, layout: str):
    """A tensor, or a model's 4-D/5-D parameters and buffers (in place), in ``layout``; other
    ranks as they are (a 1D model has no channels_last form)."""
    if layout != "channels_last":
        return tensor_or_model
    if isinstance(tensor_or_model, torch.Tensor):
        fmt = CHANNELS_LAST_FORMAT.get(tensor_or_model.dim())
        return tensor_or_model.contiguous(memory_format=fmt) if fmt else tensor_or_model
    with torch.no_grad():
        for tensor in list(tensor_or_model.parameters()) + list(tensor_or_model.buffers()):
            if tensor.dim() in CHANNELS_LAST_FORMAT:
                tensor.data = tensor.data.contiguous(memory_format=CHANNELS_LAST_FORMAT[tensor.dim()])
    return tensor_or_model
