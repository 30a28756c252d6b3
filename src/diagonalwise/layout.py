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


def suggests_channels_last(tensor: torch.Tensor) -> bool:
    """Whether PyTorch's ``suggest_memory_format`` would call ``tensor`` channels_last: its
    strides, read in channels-last order, never decrease (ATen's ``is_channels_last_strides``).
    A depthwise weight ``(C, 1, k, k)`` is contiguous in both formats; its strides decide."""
    if tensor.dim() not in CHANNELS_LAST_FORMAT or tensor.layout != torch.strided:
        return False
    sizes, strides = tensor.shape, tensor.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, *range(tensor.dim() - 1, 1, -1), 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:  # ambiguous (N111): PyTorch falls back to NCHW
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def like_weight(dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``dense`` in channels_last if ``weight``'s strides suggest it: a weight built from another
    keeps the memory format PyTorch's convolutions read off the original."""
    if suggests_channels_last(weight):
        return dense.contiguous(memory_format=CHANNELS_LAST_FORMAT[dense.dim()])
    return dense


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
